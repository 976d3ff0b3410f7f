package healthcheck

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordingRestarter counts restart requests.
type recordingRestarter struct {
	mu    sync.Mutex
	calls []Reason
}

func (r *recordingRestarter) Restart(_ context.Context, _ *Backend, reason Reason, _ time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, reason)
	return nil
}

func (r *recordingRestarter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// An operator's draining or maint backend is out of service whatever the
// evidence, is never restarted, and comes back through unknown on Return.
func TestDrainAndMaint(t *testing.T) {
	for _, op := range []State{Draining, Maint} {
		t.Run(op.String(), func(t *testing.T) {
			p, bs, rec := machine(t, 2, Config{SlowStart: time.Minute})
			rs := &recordingRestarter{}
			p.SetRestartPolicy(RestartPolicy{Restarter: rs, Crashed: true, After: time.Millisecond})
			feed(p, bs[0], Pass)
			feed(p, bs[1], Pass)
			hold := map[State]func(*Backend){Draining: p.Drain, Maint: p.Maint}[op]
			hold(bs[0])
			requireState(t, bs[0], op, Manual)
			assert.Equal(t, 1, p.InService())
			ready := p.Ready()

			for range 5 {
				feed(p, bs[0], Gone, Miss, Timeout, WrongStatus, Pass, Miss, Miss, Miss)
				bs[0].Report(Gone, errTest) // a process exit
				p.restartRound(time.Now().Add(time.Hour))
			}
			requireState(t, bs[0], op, Manual)
			assert.Zero(t, rs.count(), "never restarted")
			assert.False(t, closed(ready))
			p.mu.Lock()
			assert.Equal(t, 4, bs[0].fails, "evidence is still counted")
			p.mu.Unlock()

			hold(bs[0]) // again: nothing
			// the pool is not started: a kick waits in kicked
			bs[1].kicked.Store(false)
			p.Return(bs[1])
			requireState(t, bs[1], Healthy, ReasonNone) // not held: nothing
			assert.False(t, bs[1].kicked.Load(), "no beat either")

			bs[0].kicked.Store(false)
			p.Return(bs[0])
			requireState(t, bs[0], Unknown, ReasonNone)
			assert.True(t, bs[0].kicked.Load(), "a beat at once")
			feed(p, bs[0], Pass)
			requireState(t, bs[0], Healthy, ReasonNone) // one pass, no slow start
			assert.True(t, closed(ready))

			rec.flush()
			var got []State
			for _, tr := range rec.list() {
				if tr.Index == 0 {
					got = append(got, tr.To)
				}
			}
			assert.Equal(t, []State{Healthy, op, Unknown, Healthy}, got)
		})
	}
}

func TestDrainFromAnyStateAndBetweenHolds(t *testing.T) {
	p, bs, _ := machine(t, 5, Config{SlowStart: time.Minute})
	rs := &recordingRestarter{}
	p.SetRestartPolicy(RestartPolicy{Restarter: rs, After: time.Millisecond})
	feed(p, bs[1], Pass)                      // healthy
	feed(p, bs[2], Pass, Gone)                // ejected
	feed(p, bs[3], Miss, Miss)                // ejected(hang) ...
	p.restartRound(time.Now().Add(time.Hour)) // ... restarting
	requireState(t, bs[3], Restarting, Hang)
	feed(p, bs[4], Pass, Gone, Pass) // probation
	requireState(t, bs[4], Probation, ReasonNone)
	for _, b := range bs {
		p.Drain(b)
		requireState(t, b, Draining, Manual)
		p.Maint(b)
		requireState(t, b, Maint, Manual)
		p.Drain(b)
		requireState(t, b, Draining, Manual)
	}
	assert.Zero(t, p.InService())
	assert.Zero(t, bs[4].Share(time.Now())-1, "no probation ramp while held")
	p.restartFailed(bs[3], bs[3].lease, errTest) // the old request fails late
	requireState(t, bs[3], Draining, Manual)
}

func TestActiveAndWaitIdle(t *testing.T) {
	p, bs, _ := machine(t, 1, Config{})
	b := bs[0]
	ctx := context.Background()
	require.NoError(t, p.WaitIdle(ctx, b), "idle at once")

	for range 3 {
		b.Acquire()
	}
	assert.Equal(t, 3, b.Active())
	done := make(chan error, 1)
	go func() { done <- p.WaitIdle(ctx, b) }()
	other := make(chan error, 1)
	go func() { other <- p.WaitIdle(ctx, b) }()
	b.ReleaseActive()
	b.ReleaseActive()
	assert.Equal(t, 1, b.Active(), "a waiter does not show in the count")
	assert.Empty(t, done, "returned with a request in flight")
	b.ReleaseActive()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-timeout():
		t.Fatal("WaitIdle did not return when the last request ended")
	}
	require.NoError(t, <-other)
	assert.Zero(t, b.Active())
	assert.Zero(t, b.active.Load(), "no waiter mark left")
	assert.Equal(t, 0, p.Snapshot()[0].Active)

	b.Acquire()
	assert.Equal(t, 1, p.Snapshot()[0].Active)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, p.WaitIdle(cctx, b), context.Canceled)
	b.ReleaseActive() // wakes no one, leaves no mark
	assert.Zero(t, b.active.Load())
}

// Many requests and waiters at once: every waiter returns, the count ends
// at zero (run with -race).
func TestActiveConcurrent(t *testing.T) {
	p, bs, _ := machine(t, 1, Config{})
	b := bs[0]
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 2000 {
				b.Acquire()
				b.ReleaseActive()
			}
		}()
		go func() {
			defer wg.Done()
			for range 50 {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				assert.NoError(t, p.WaitIdle(ctx, b))
				cancel()
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, b.Active())
}

func BenchmarkAcquireRelease(b *testing.B) {
	be := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			be.Acquire()
			be.ReleaseActive()
		}
	})
}
