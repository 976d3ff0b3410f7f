//go:build unix

package restart

import (
	"errors"
	"syscall"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// gone reports whether process pid has exited: it is not there, or it is a
// zombie nobody has reaped yet (the reaper of orphans may be slow, or none).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	return !procstat.Alive(pid)
}
