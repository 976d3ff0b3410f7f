//go:build unix

package healthcheck

import (
	"context"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// live is a request in flight on a backend, registered as the transport
// registers one: replayable (rescued with ErrRescued) or not (abandoned
// with ErrAbandoned at an ejection for a hang).
type live struct {
	ctx  context.Context
	done chan struct{}
	err  error
	cut  error // End's: why the flight was cut, if it was
}

// send GETs url from b's process, registered on b while it waits.
func send(tb testing.TB, b *Backend, url string, replayable bool) *live {
	tb.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	tb.Cleanup(func() { cancel(nil) })
	l := &live{ctx: ctx, done: make(chan struct{})}
	f := &Flight{Cancel: cancel, Replayable: replayable}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(tb, err)
	b.Begin(f)
	go func() {
		defer close(l.done)
		res, err := http.DefaultTransport.RoundTrip(req)
		l.cut = b.End(f)
		if err == nil {
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			b.Answered()
		}
		l.err = err
	}()
	return l
}

// freeze SIGSTOPs the child and waits until every thread of it is stopped:
// before, one may still answer a request.
func (c *child) freeze(tb testing.TB) {
	tb.Helper()
	c.signal(tb, syscall.SIGSTOP)
	require.True(tb, procstat.WaitAllStopped(c.pid(), wait), "child not stopped within %v", wait)
}

// states returns backend i's states in the order it went through them.
func (r *recorder) states(i int) []State {
	r.flush()
	var out []State
	for _, t := range r.list() {
		if t.Index == i {
			out = append(out, t.To)
		}
	}
	return out
}

// A frozen process is suspected while a request waits on it, long before
// its heartbeats time out (an hour apart here, with a second's timeout):
// the request is rescued at once, and the backend, thawed, answers the
// beat its suspicion asked for (it may take three quarters of the
// timeout: long enough here for any scheduling delay) and is back in
// service, never ejected.
func TestChildFrozenSuspectedThenThawed(t *testing.T) {
	c := startChild(t)
	other := newBackend(t) // the panic guard must not keep the frozen one in
	p, rec := startPool(t, []string{c.addr, other.addr()}, Config{Path: "/health", Interval: time.Hour, Timeout: 10 * time.Second})
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]

	c.freeze(t)
	get := send(t, b, "http://"+c.addr+"/", true)
	post := send(t, b, "http://"+c.addr+"/", false)
	tr := rec.waitFor(0, wait, "backend 0 suspected", to(0, Suspected, ReasonNone))
	t.Logf("suspected: %s", tr.Cause)
	assert.Contains(t, tr.Cause, "urgent heartbeat")
	assert.False(t, b.InService())
	within(t, wait, get.done, "the rescue")
	assert.ErrorIs(t, get.cut, ErrRescued)
	assert.ErrorIs(t, context.Cause(get.ctx), ErrRescued)
	assert.False(t, closed(post.done), "a request that may not be replayed stays")

	c.signal(t, syscall.SIGCONT)
	assert.Equal(t, Suspected, rec.healthy(0).From)
	within(t, wait, post.done, "the answer after the thaw")
	assert.NoError(t, post.err)
	assert.NoError(t, post.cut)
	assert.Equal(t, []State{Healthy, Suspected, Healthy}, rec.states(0))
}

// Frozen for good: the suspicion is confirmed by the next beat's miss,
// and the backend ejected for a hang, from suspected; the request it holds,
// which may not be replayed, is abandoned then, not left to wait for the
// restart.
func TestChildFrozenSuspectedThenEjected(t *testing.T) {
	c := startChild(t)
	other := newBackend(t)
	p, rec := startPool(t, []string{c.addr, other.addr()}, Config{Path: "/health", Interval: time.Hour, Timeout: 100 * time.Millisecond})
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]

	c.freeze(t)
	t.Cleanup(func() { _ = syscall.Kill(c.pid(), syscall.SIGCONT) })
	post := send(t, b, "http://"+c.addr+"/", false) // not replayable: it counts as waiting all the same
	assert.Equal(t, Suspected, rec.ejected(0, Hang).From)
	assert.Equal(t, []State{Healthy, Suspected, Ejected}, rec.states(0))
	within(t, wait, post.done, "the abandon")
	assert.ErrorIs(t, post.cut, ErrAbandoned)
	assert.ErrorIs(t, context.Cause(post.ctx), ErrAbandoned)
}

// A slow process that still answers its heartbeats is never suspected,
// however long its requests take and however silent it is meanwhile: the
// watchdog asks it (its beats are an hour apart, so every beat after the
// first is the watchdog's), it answers, and it is left alone.
func TestChildSlowButAliveNeverSuspected(t *testing.T) {
	c := startChild(t)
	other := newBackend(t)
	p, rec := startPool(t, []string{c.addr, other.addr()}, Config{Path: "/health", Interval: time.Hour, Timeout: time.Second})
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]
	beats := b.beats.Load()

	var ls []*live
	for range 3 {
		ls = append(ls, send(t, b, "http://"+c.addr+"/slow?ms=700", true), send(t, b, "http://"+c.addr+"/slow?ms=700", false))
	}
	for _, l := range ls {
		within(t, wait, l.done, "a slow answer")
		assert.NoError(t, l.err)
		assert.NoError(t, l.cut)
	}
	assert.Greater(t, b.beats.Load(), beats, "the watchdog asked the silent backend")
	assert.Equal(t, []State{Healthy}, rec.states(0), "never suspected")
}
