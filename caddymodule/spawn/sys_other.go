//go:build !unix

package spawn

import "syscall"

// Without process groups and signals, a backend is stopped by killing its
// process only (os.Process knows when it was reaped, so this never hits a
// reused pid).

func sysProcAttr() *syscall.SysProcAttr { return nil }

func termGroup(r *running) { killGroup(r) }

func killGroup(r *running) { _ = r.cmd.Process.Kill() }

func groupAlive(*running) bool { return false }
