//go:build !unix

package restart

import (
	"errors"
	"os/exec"
	"syscall"
)

// ownProcessGroup is a no-op where there are no process groups: only the
// command itself is killed on timeout.
func ownProcessGroup(*exec.Cmd) {}

var signals = map[string]syscall.Signal{}

const signalsSupported = false

func kill(int, syscall.Signal) error {
	return errors.New("signals are not supported on this platform")
}

var (
	errNoProcess  = errors.New("no such process")
	errPermission = errors.New("operation not permitted")
)
