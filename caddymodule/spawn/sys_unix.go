//go:build unix

package spawn

import (
	"errors"
	"syscall"
)

// sysProcAttr puts each backend in a process group of its own (pgid = its
// pid), so that one signal reaches it and every child it started that stayed
// in the group.
func sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	setPdeathsig(a)
	return a
}

// termGroup asks the whole group to stop: SIGTERM, then SIGCONT so that a
// stopped (SIGSTOP) process gets to act on it, as systemd does.
func termGroup(r *running) {
	_ = syscall.Kill(-r.pid, syscall.SIGTERM)
	_ = syscall.Kill(-r.pid, syscall.SIGCONT)
}

// killGroup SIGKILLs the whole group; it works on stopped processes too.
func killGroup(r *running) { _ = syscall.Kill(-r.pid, syscall.SIGKILL) }

// groupExists reports whether any process of the group is left, zombies
// included.
func groupExists(r *running) bool {
	return !errors.Is(syscall.Kill(-r.pid, 0), syscall.ESRCH)
}
