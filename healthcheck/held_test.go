//go:build linux && (amd64 || arm64)

package healthcheck

import (
	"syscall"
	"testing"
	"time"

	"github.com/crashonly/caddy-failover/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireHeld ends the test unless b's heartbeat connection is held on the
// pool's ring (io_uring), not read by its prober through Go's netpoller.
func requireHeld(t *testing.T, p *Pool, b *Backend) {
	t.Helper()
	if err := heldRingSupport(); err != nil {
		testenv.Missing(t, "io_uring (Linux 6.1 or later, not disabled by sysctl or seccomp): %v", err)
	}
	require.NotNil(t, p.sched.held, "the pool holds its connections on a ring")
	pr := b.prober.Load()
	require.NotNil(t, pr)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	require.NotNil(t, pr.hc, "the heartbeat connection is held on the ring")
	require.True(t, pr.hc.fixed, "its socket is a file registered with the ring")
	require.Nil(t, pr.conn)
}

// The crash watch on the ring: SIGKILL closes the held connection, the
// ring's receive completes with its end, and the ejection (crash) follows
// at once, not at the next beat, an interval (10s) away.
func TestHeldKilledEjectedAsCrash(t *testing.T) {
	c := startChild(t)
	p, rec := startPool(t, []string{c.addr}, Config{Path: "/health", Interval: 10 * time.Second, Timeout: time.Second})
	rec.healthy(0)
	b := p.Backends()[0]
	requireHeld(t, p, b)
	beats := b.beats.Load()

	killed := time.Now()
	c.signal(t, syscall.SIGKILL)
	tr := rec.ejected(0, Crash)
	t.Logf("SIGKILL to ejected(crash): %v (%s)", tr.At.Sub(killed), tr.Cause)
	assert.Equal(t, Healthy, tr.From)
	// the end of the held connection seen idle, then the beat it asked for
	// refused; or, if a beat went out on it meanwhile, that beat reset
	assert.Regexp(t, "connection refused|connection reset", tr.Cause)
	assert.Equal(t, beats+1, b.beats.Load(), "one beat, asked for by the watch: none was due")
	assert.Zero(t, p.InService())
}

// SIGSTOP: the kernel keeps the connection open but nothing answers: the
// beats sent on the ring are missed, Fails of them eject the backend for a
// hang, and after SIGCONT it comes back.
func TestHeldStoppedMissesBeats(t *testing.T) {
	c := startChild(t)
	other := newBackend(t) // the panic guard must not keep the stopped one in
	cfg := fast()
	cfg.Path, cfg.Fails, cfg.Passes = "/health", 3, 2
	p, rec := startPool(t, []string{c.addr, other.addr()}, cfg)
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]
	requireHeld(t, p, b)

	stopped := time.Now()
	c.signal(t, syscall.SIGSTOP)
	tr := rec.ejected(0, Hang)
	took := tr.At.Sub(stopped)
	t.Logf("SIGSTOP to ejected(hang): %v (%s)", took, tr.Cause)
	assert.Equal(t, Healthy, tr.From)
	assert.Contains(t, tr.Cause, "timed out")
	assert.GreaterOrEqual(t, took, time.Duration(cfg.Fails-1)*cfg.Timeout, "Fails beats missed, each waited out")
	assert.Equal(t, 1, p.InService())

	c.signal(t, syscall.SIGCONT)
	assert.Equal(t, Ejected, rec.healthy(0).From)
	requireHeld(t, p, b)
	assert.Zero(t, rec.ejections(1))
}
