package spawn

import (
	"time"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// Crash-loop backoff (healthcheck.CrashLoop). A process that exits is started
// again at once; if it exits again before it has run for stableAfter, the
// next start waits backoffBase, then twice as long each time, up to
// backoffCap. A process that ran for stableAfter or longer starts a new count.
//
// For comparison: systemd waits RestartSec=100ms between starts and gives up
// after StartLimitBurst=5 starts in 10s; Kubernetes' CrashLoopBackOff waits
// 10s doubling to 5 min, reset after 10 min; caddy-supervisor 0s, 1s doubling
// to 5 min, reset after 10 min. A crash-only backend is meant to be restarted
// fast, and a proxy holds requests while none is up, so we start early and
// never give up, but cap at 30s so a broken deploy costs one short start
// every 30s: 0, 100ms, 200ms, 400ms, 800ms, 1.6s, 3.2s, 6.4s, 12.8s, 25.6s,
// 30s, 30s, ... A run of a second is stable: long enough to have started
// and served, so its exit is a crash of a working process (which must come
// back at once), not a loop; a longer period made a backend killed every
// couple of seconds wait ever longer to come back.
const (
	backoffBase = 100 * time.Millisecond
	backoffCap  = 30 * time.Second
	stableAfter = time.Second
)

var crashLoop = healthcheck.CrashLoopPolicy{Burst: 2, Stable: stableAfter, Base: backoffBase, Cap: backoffCap}

// backoff counts one backend's consecutive short-lived runs. It is used by
// that backend's supervising goroutine only; exits and first copy loop's
// count after each exit, for spawn.go's log.
type backoff struct {
	loop  healthcheck.CrashLoop
	exits int       // consecutive exits of processes that ran < stableAfter
	first time.Time // start of the first of them
}

// exit records that a process started at start ended at now (or failed to
// start: start == now), and returns how long to wait before the next start.
func (b *backoff) exit(start, now time.Time) time.Duration {
	b.loop.CrashLoopPolicy = crashLoop
	d := b.loop.Ended(start, now)
	b.exits, b.first = b.loop.Runs()
	return d
}

// backoffDelay is the wait before the start that follows the n-th
// consecutive short-lived exit.
func backoffDelay(n int) time.Duration { return crashLoop.Delay(n) }
