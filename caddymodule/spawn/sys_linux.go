package spawn

import (
	"os"
	"strconv"
	"syscall"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// setPdeathsig has the kernel SIGKILL the backend if Caddy dies without
// stopping it (kill -9, a crash). It covers the backend process only, not
// the children it started; a normal stop kills the whole group.
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

// groupAlive reports whether any live process of the group is left. Zombies
// do not count: children orphaned by the backend are reparented to PID 1,
// which may reap them late or, when Caddy itself is PID 1 (as in its Docker
// image), never.
func groupAlive(r *running) bool {
	if !groupExists(r) {
		return false
	}
	live, ok := liveInGroup(r.pid)
	return live || !ok
}

// liveInGroup scans /proc for a process of group pgid that is not a zombie;
// ok is false when /proc cannot be read.
func liveInGroup(pgid int) (live, ok bool) {
	d, err := os.Open("/proc")
	if err != nil {
		return false, false
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return false, false
	}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue // not a process
		}
		st, err := procstat.Read(pid)
		if err != nil {
			continue // gone meanwhile
		}
		if st.Pgrp == pgid && st.Live() {
			return true, true
		}
	}
	return false, true
}
