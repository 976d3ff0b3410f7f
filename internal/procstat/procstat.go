// Package procstat reads a process's state from Linux's /proc/<pid>/stat:
// the one parser of that file in caddy-failover, used by the built-in
// supervisor, the chaos tools and the tests. Elsewhere than on Linux every
// read fails as if the process were not there.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Stat is what is used of /proc/<pid>/stat.
type Stat struct {
	// State is the state letter: R running, S sleeping, D disk sleep,
	// T stopped, t traced, Z zombie, X dead, I idle...
	State byte
	Ppid  int // parent's pid
	Pgrp  int // process group
	// Start is when the process started, in clock ticks since boot: with
	// the pid, it names one process for good (pids are reused).
	Start uint64
}

// Live reports whether the process has not exited: it is not a zombie
// waiting for its reaper, nor dead.
func (s Stat) Live() bool { return s.State != 'Z' && s.State != 'X' }

// Stopped reports whether the process (or thread) is stopped by a signal
// or a tracer.
func (s Stat) Stopped() bool { return s.State == 'T' || s.State == 't' }

// Parse parses the contents of a stat file: "pid (comm) state ppid pgrp
// ...", where comm may hold anything, spaces and parentheses included, so
// the fields are counted from its last ')'.
func Parse(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("procstat: no ')' after the command name")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("procstat: too few fields after the command name: %q", b[i+1:])
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return Stat{}, fmt.Errorf("procstat: bad ppid or pgrp: %q %q", f[1], f[2])
	}
	st := Stat{State: f[0][0], Ppid: ppid, Pgrp: pgrp}
	if len(f) > 19 { // starttime is field 22, the 20th after the name
		st.Start, _ = strconv.ParseUint(string(f[19]), 10, 64)
	}
	return st, nil
}

// Pids lists the pids in /proc.
func Pids() ([]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Read reads /proc/<pid>/stat. The error wraps fs.ErrNotExist when there is
// no such process.
func Read(pid int) (Stat, error) {
	return readFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
}

func readFile(path string) (Stat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	return Parse(b)
}

// State is the state letter of process pid ("R", "S", "T", "Z"...), or ""
// when there is no such process (or it cannot be read).
func State(pid int) string {
	s, err := Read(pid)
	if err != nil {
		return ""
	}
	return string(s.State)
}

// Alive reports whether pid is a process that has not exited (a zombie has).
func Alive(pid int) bool {
	s, err := Read(pid)
	return err == nil && s.Live()
}

// AllStopped reports whether every thread of process pid is stopped. A
// SIGSTOP is not done when kill(2) returns: the kernel wakes one thread to
// take the signal, and that thread then stops the others, so on a busy
// machine the other threads may run for a while (and answer a request).
// Only when every thread is stopped is the process frozen.
func AllStopped(pid int) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		s, err := readFile(filepath.Join(dir, t.Name(), "stat"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a thread that exited meanwhile
			}
			return false
		}
		if !s.Stopped() {
			return false
		}
	}
	return true
}

// WaitAllStopped waits up to timeout until every thread of process pid is
// stopped (see AllStopped), and reports whether they are. It polls every
// millisecond: nothing but the parent's wait(2) is told when another
// process stops.
func WaitAllStopped(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !AllStopped(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
