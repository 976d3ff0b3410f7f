package spawn

import (
	"bytes"
	"errors"
	"os"
	"strconv"
)

// procStat is what spawn reads of /proc/<pid>/stat.
type procStat struct {
	state byte   // R, S, T, Z, ...
	pgrp  int    // process group
	start uint64 // start time, in clock ticks since boot
}

// readStat parses /proc/<pid>/stat: "pid (comm) state ppid pgrp ...", where
// comm may hold anything, spaces and parentheses included.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	// from field 3 (state) on; starttime is field 22
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, err
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, err
	}
	return procStat{state: f[0][0], pgrp: pgrp, start: start}, nil
}
