//go:build unix && !linux

package spawn

import "syscall"

func setPdeathsig(*syscall.SysProcAttr) {}

// groupAlive reports whether any process of the group is left. Zombies
// count until their reaper reaps them.
func groupAlive(r *running) bool { return groupExists(r) }
