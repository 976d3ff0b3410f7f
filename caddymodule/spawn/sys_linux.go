package spawn

import (
	"syscall"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// setPdeathsig has the kernel SIGKILL the backend if Caddy dies without
// stopping it (kill -9, a crash). It covers the backend process only, not
// the children it started: those are found by their tag (orphans_linux.go).
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

// groupAlive reports whether any live process of the group is left. Zombies
// do not count: children orphaned by the backend are reparented to PID 1,
// which may reap them late or, when Caddy itself is PID 1 (as in its Docker
// image), never.
func groupAlive(r *running) bool {
	if !groupExists(r) {
		return false
	}
	pids, err := procstat.Pids()
	if err != nil {
		return true
	}
	for _, pid := range pids {
		st, err := procstat.Read(pid)
		if err == nil && st.Pgrp == r.pid && st.Live() {
			return true
		}
	}
	return false
}
