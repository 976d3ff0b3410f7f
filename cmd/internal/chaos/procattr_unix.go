//go:build unix && !linux

package chaos

import "syscall"

// procAttr puts a child in its own process group, so a terminal's Ctrl-C
// reaches only the driver, which then cleans up. Outside Linux there is no
// parent-death signal: a driver killed with SIGKILL leaves its children.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
