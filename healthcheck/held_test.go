//go:build linux && (amd64 || arm64)

package healthcheck

import (
	"os"
	"testing"

	"github.com/crashonly/caddy-failover/internal/testenv"
	"github.com/stretchr/testify/require"
)

// requireWatched ends the test unless b's heartbeat connection is held
// where this run holds them: on the pool's ring (io_uring, a registered
// file), as this package's tests ask (TestMain), or, with
// FAILOVER_IO_URING=0, read by its prober through Go's netpoller.
func requireWatched(t *testing.T, p *Pool, b *Backend) {
	t.Helper()
	ring := os.Getenv(heldRingEnv) == "1"
	if err := heldRingSupport(); ring && err != nil {
		testenv.Missing(t, "io_uring (Linux 6.1 or later, not disabled by sysctl or seccomp): %v", err)
	}
	pr := b.prober.Load()
	require.NotNil(t, pr)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if !ring {
		require.NotNil(t, pr.conn, "the heartbeat connection is read through the netpoller")
		require.Nil(t, pr.hc)
		return
	}
	require.NotNil(t, p.sched.held, "the pool holds its connections on a ring")
	require.NotNil(t, pr.hc, "the heartbeat connection is held on the ring")
	require.True(t, pr.hc.fixed, "its socket is a file registered with the ring")
	require.Nil(t, pr.conn)
}
