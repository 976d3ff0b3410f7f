package spawn

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
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
	want := []byte(strconv.Itoa(pgid))
	for _, name := range names {
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid pgrp ...", comm may hold anything
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(stat[i+1:])
		if len(f) < 3 || !bytes.Equal(f[2], want) {
			continue
		}
		if state := string(f[0]); state != "Z" && state != "X" {
			return true, true
		}
	}
	return false, true
}
