//go:build unix && !(linux && (amd64 || arm64))

package healthcheck

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// requireWatched ends the test unless b's heartbeat connection is held, and
// read by its prober through Go's netpoller (no io_uring here).
func requireWatched(t *testing.T, _ *Pool, b *Backend) {
	t.Helper()
	pr := b.prober.Load()
	require.NotNil(t, pr)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	require.NotNil(t, pr.conn, "the heartbeat connection is read through the netpoller")
}
