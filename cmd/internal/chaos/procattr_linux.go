package chaos

import "syscall"

// procAttr puts a child in its own process group, so a terminal's Ctrl-C
// reaches only the driver (which then cleans up), and asks the kernel to
// SIGKILL the child if the driver dies first, so no process outlives a
// crashed or killed test binary. (Pdeathsig fires when the forking OS thread
// exits; the Go runtime keeps its threads unless a goroutine exits while
// locked to one, which this package never does.)
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
