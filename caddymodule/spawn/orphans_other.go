//go:build !linux

package spawn

import (
	"os"
	"strconv"

	"go.uber.org/zap"
)

// Orphans of a SIGKILLed Caddy are found through /proc, on Linux only.

const ownerVar = "CADDY_FAILOVER_OWNER"

func orphanTag() string { return ownerVar + "=" + strconv.Itoa(os.Getpid()) }

func reapOrphansOnce(*zap.Logger) {}

func portHolder(string) (int, bool) { return 0, false }

func processName(int) string { return "" }
