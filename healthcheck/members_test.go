package healthcheck

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A backend added to a running pool is unknown until its first good
// heartbeat, then in service; the backends already there are untouched.
func TestAddEntersAfterAGoodBeat(t *testing.T) {
	first := newBackend(t)
	p, rec := startPool(t, []string{first.addr()}, fast())
	rec.healthy(0)
	_, _, since := p.Backends()[0].State()

	added := newBackend(t)
	added.status.Store(http.StatusServiceUnavailable)
	cfg := p.Config()
	require.Equal(t, 1, cfg.Passes)
	b := p.Add(added.addr())
	assert.Equal(t, 1, b.Index)
	assert.Equal(t, []*Backend{p.Backends()[0], b}, p.Backends())
	added.awaitHits(t, 2) // beaten, and not good: not in service
	assert.False(t, b.InService())
	added.status.Store(http.StatusOK)
	rec.healthy(1)
	assert.True(t, b.InService())
	_, _, after := p.Backends()[0].State()
	assert.Equal(t, since, after, "the backend already there kept its state")
}

// Remove drains a backend, waits for its requests in flight, then stops
// probing it and drops it.
func TestRemoveDrainsThenDrops(t *testing.T) {
	a, c := newBackend(t), newBackend(t)
	p, rec := startPool(t, []string{a.addr(), c.addr()}, fast())
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[1]
	b.Acquire() // a request in flight
	done := make(chan error, 1)
	go func() { done <- p.Remove(context.Background(), b) }()
	rec.waitFor(1, wait, "draining", to(1, Draining, Manual))
	assert.False(t, b.InService())
	select {
	case <-done:
		t.Fatal("removed while a request was in flight")
	default:
	}
	assert.Len(t, p.Backends(), 2, "still a member while its request is in flight")
	b.ReleaseActive()
	within(t, wait, func() <-chan struct{} {
		ch := make(chan struct{})
		go func() { assert.NoError(t, <-done); close(ch) }()
		return ch
	}(), "removed once idle")
	assert.Equal(t, []*Backend{p.Backends()[0]}, p.Backends())
	beats := b.beats.Load()
	for range 3 {
		a.awaitHits(t, a.hits.Load()+1) // three more beats of the one left
	}
	assert.Equal(t, beats, b.beats.Load(), "a removed backend is no longer probed")
}
