//go:build unix

package restart

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// gone reports whether process pid has exited: it is not there, or it is a
// zombie nobody has reaped yet (the reaper of orphans may be slow, or none).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return os.IsNotExist(err)
	}
	// pid (comm) S ...: the state follows the last ')'
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
