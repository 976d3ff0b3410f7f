package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests drive the state machine directly through observe (no probers
// run): observe is synchronous, so every rule can be checked exactly.

var errTest = errors.New("test evidence")

// machine is an unstarted pool of n backends with every transition recorded.
func machine(t *testing.T, n int, cfg Config) (*Pool, []*Backend, *recorder) {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	p := NewPool(addrs, cfg, nil)
	t.Cleanup(p.Close)
	return p, p.Backends(), record(t, p)
}

func feed(p *Pool, b *Backend, es ...Evidence) {
	for _, e := range es {
		p.observe(b, e, errTest)
	}
}

func requireState(t *testing.T, b *Backend, s State, r Reason) {
	t.Helper()
	st, rs, _ := b.State()
	require.Equal(t, s.String(), st.String(), "state of %s", b.Addr)
	require.Equal(t, r.String(), rs.String(), "reason of %s", b.Addr)
	require.Equal(t, s.InService(), b.InService(), "InService of %s", b.Addr)
}

func TestStateFromUnknown(t *testing.T) {
	cases := []struct {
		name     string
		cfg      Config
		evidence []Evidence
		state    State
		reason   Reason
	}{
		{"first good beat admits", Config{}, []Evidence{Pass}, Healthy, ReasonNone},
		{"first good beat admits even with passes=3", Config{Passes: 3}, []Evidence{Pass}, Healthy, ReasonNone},
		{"one miss is not enough", Config{}, []Evidence{Miss}, Unknown, ReasonNone},
		{"fails misses eject for hang", Config{}, []Evidence{Miss, Miss}, Ejected, Hang},
		{"fails=1", Config{Fails: 1}, []Evidence{Miss}, Ejected, Hang},
		{"fails=3", Config{Fails: 3}, []Evidence{Miss, Miss}, Unknown, ReasonNone},
		{"fails wrong statuses eject for bad status", Config{}, []Evidence{WrongStatus, WrongStatus}, Ejected, BadStatus},
		{"refused: nothing listens yet", Config{Fails: 1}, []Evidence{Gone, Gone, Gone}, Unknown, ReasonNone},
		{"refusals are not fails", Config{}, []Evidence{Gone, Miss, Gone}, Unknown, ReasonNone},
		{"misses after refusals eject for hang", Config{}, []Evidence{Gone, Miss, Gone, Miss}, Ejected, Hang},
		{"wrong statuses after a refusal eject for bad status", Config{}, []Evidence{Gone, WrongStatus, WrongStatus}, Ejected, BadStatus},
		{"refused then answering admits", Config{Passes: 3}, []Evidence{Gone, Gone, Pass}, Healthy, ReasonNone},
		{"timeouts count as misses", Config{}, []Evidence{Timeout, Timeout}, Ejected, Hang},
		{"misses need not be consecutive kinds", Config{Fails: 3}, []Evidence{Miss, Timeout, WrongStatus}, Ejected, BadStatus},
		{"a pass resets the misses", Config{}, []Evidence{Miss, Pass, Miss}, Healthy, ReasonNone},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// two backends: the guard must not be what decides here
			p, bs, _ := machine(t, 2, c.cfg)
			feed(p, bs[0], c.evidence...)
			requireState(t, bs[0], c.state, c.reason)
		})
	}
}

func TestTransitionsPublished(t *testing.T) {
	p, bs, rec := machine(t, 3, Config{Passes: 2})
	ready := p.Ready()

	feed(p, bs[0], Pass)        // unknown → healthy
	feed(p, bs[1], Gone)        // nothing listens yet: no transition
	feed(p, bs[2], Miss, Miss)  // unknown → ejected(hang)
	feed(p, bs[1], Pass)        // unknown → healthy: one pass is enough
	feed(p, bs[0], Timeout)     // healthy → ejected(hang), guard permitting
	feed(p, bs[0], Pass, Pass)  // ejected → healthy
	feed(p, bs[1], WrongStatus) // one of two
	feed(p, bs[1], WrongStatus) // healthy → ejected(bad-status)
	feed(p, bs[0], Gone)        // healthy → ejected(crash), though it is the last
	feed(p, bs[2], Pass, Pass)  // ejected → healthy
	feed(p, bs[2], Miss, Miss)  // the last in service: guarded, no transition
	feed(p, bs[2], Gone)        // healthy → ejected(crash)
	feed(p, bs[2], Gone, Miss)  // ejected stays ejected
	require.True(t, closed(ready))

	type tr struct {
		i        int
		from, to State
		r        Reason
	}
	want := []tr{
		{0, Unknown, Healthy, ReasonNone},
		{2, Unknown, Ejected, Hang},
		{1, Unknown, Healthy, ReasonNone},
		{0, Healthy, Ejected, Hang},
		{0, Ejected, Healthy, ReasonNone},
		{1, Healthy, Ejected, BadStatus},
		{0, Healthy, Ejected, Crash},
		{2, Ejected, Healthy, ReasonNone},
		{2, Healthy, Ejected, Crash},
	}
	for _, w := range want {
		got := rec.waitFor(anyBackend, wait, fmt.Sprintf("%+v", w), func(Transition) bool { return true })
		assert.Equal(t, w, tr{got.Index, got.From, got.To, got.Reason}, "transitions in order")
		assert.Equal(t, p.Backends()[w.i].Addr, got.Backend)
		assert.False(t, got.At.IsZero())
		if w.to == Ejected {
			assert.Equal(t, errTest.Error(), got.Cause)
		} else {
			assert.Empty(t, got.Cause)
		}
	}
	// nothing more was published
	rec.flush()
	assert.Len(t, rec.list(), len(want), "transitions:%s", rec)

	assert.EqualValues(t, 2, bs[0].Gen())
	assert.EqualValues(t, 1, bs[1].Gen())
	assert.EqualValues(t, 1, bs[2].Gen())
	snap := p.Snapshot()
	require.Len(t, snap, 3)
	for i, s := range snap {
		st, r, since := bs[i].State()
		assert.Equal(t, Snapshot{Addr: bs[i].Addr, Index: i, State: st, Reason: r, Since: since}, s)
	}
	assert.Equal(t, []State{Ejected, Ejected, Ejected}, []State{snap[0].State, snap[1].State, snap[2].State})
	assert.Equal(t, 0, p.InService())
}

func TestStateSince(t *testing.T) {
	p, bs, rec := machine(t, 1, Config{})
	_, _, created := bs[0].State()
	feed(p, bs[0], Pass)
	tr := rec.healthy(0)
	_, _, since := bs[0].State()
	assert.Equal(t, tr.At, since)
	assert.False(t, since.Before(created))
}

func TestReadmitNeedsPasses(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{Passes: 3})
	feed(p, bs[1], Pass)
	feed(p, bs[0], Pass, Gone)
	requireState(t, bs[0], Ejected, Crash)

	feed(p, bs[0], Pass, Pass)
	requireState(t, bs[0], Ejected, Crash)
	feed(p, bs[0], Miss) // resets the passes
	feed(p, bs[0], Pass, Pass)
	requireState(t, bs[0], Ejected, Crash)
	feed(p, bs[0], Gone) // resets them too
	feed(p, bs[0], Pass, Pass)
	requireState(t, bs[0], Ejected, Crash)
	feed(p, bs[0], Pass)
	requireState(t, bs[0], Healthy, ReasonNone)
	assert.EqualValues(t, 2, bs[0].Gen())
}

func TestHealthyNeedsFailsConsecutiveMisses(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{Fails: 3})
	feed(p, bs[0], Pass)
	feed(p, bs[1], Pass)
	feed(p, bs[0], Miss, Miss, Pass, Miss, Miss, Pass, WrongStatus, Miss)
	requireState(t, bs[0], Healthy, ReasonNone)
	feed(p, bs[0], Miss)
	requireState(t, bs[0], Ejected, Hang)
}

// Later evidence updates an ejected backend's reason: an answer of any
// status ends a hang or a crash (bad-status), a refusal proves a crash,
// and Fails misses in a row make a crashed or answering backend a hang.
func TestEvidenceUpdatesEjectedReason(t *testing.T) {
	ejectFor := map[Reason][]Evidence{Crash: {Pass, Gone}, Hang: {Miss, Miss}, BadStatus: {WrongStatus, WrongStatus}}
	for _, c := range []struct {
		from     Reason
		evidence []Evidence
		want     Reason
	}{
		{Crash, []Evidence{Miss}, Crash},
		{Crash, []Evidence{Miss, Miss}, Hang},
		{Crash, []Evidence{Miss, Gone, Miss, Gone, Miss}, Crash},
		{Crash, []Evidence{Miss, Timeout}, Hang},
		{Crash, []Evidence{WrongStatus}, BadStatus},
		{Hang, []Evidence{Miss, Timeout, Miss, Miss}, Hang},
		{Hang, []Evidence{WrongStatus}, BadStatus},
		{Hang, []Evidence{Gone}, Crash},
		{BadStatus, []Evidence{WrongStatus, WrongStatus, WrongStatus}, BadStatus},
		{BadStatus, []Evidence{Miss, WrongStatus, Miss}, BadStatus},
		{BadStatus, []Evidence{Miss, Miss}, Hang},
		{BadStatus, []Evidence{Gone}, Crash},
		{Hang, []Evidence{Gone, WrongStatus, Miss, Miss}, Hang},
	} {
		t.Run(fmt.Sprintf("%s+%v", c.from, c.evidence), func(t *testing.T) {
			p, bs, rec := machine(t, 2, Config{Passes: 2})
			feed(p, bs[1], Pass)
			feed(p, bs[0], ejectFor[c.from]...)
			requireState(t, bs[0], Ejected, c.from)
			feed(p, bs[0], c.evidence...)
			requireState(t, bs[0], Ejected, c.want)
			rec.flush()
			last := ReasonNone
			for _, tr := range rec.list() {
				if tr.Index == 0 && tr.To == Ejected {
					assert.NotEqual(t, last, tr.Reason, "a transition to the same reason:%s", rec)
					last = tr.Reason
				}
			}
		})
	}
}

func TestPanicGuard(t *testing.T) {
	t.Run("last backend stays on probe evidence", func(t *testing.T) {
		p, bs, rec := machine(t, 1, Config{})
		feed(p, bs[0], Pass)
		for i := 0; i < 10; i++ {
			feed(p, bs[0], Miss, WrongStatus, Timeout)
		}
		requireState(t, bs[0], Healthy, ReasonNone)
		assert.Equal(t, 1, p.InService())
		rec.flush()
		assert.Equal(t, 0, rec.ejections(0))
	})
	t.Run("exactly one of two failing is ejected", func(t *testing.T) {
		p, bs, _ := machine(t, 2, Config{})
		feed(p, bs[0], Pass)
		feed(p, bs[1], Pass)
		for i := 0; i < 5; i++ {
			feed(p, bs[0], WrongStatus)
			feed(p, bs[1], WrongStatus)
		}
		requireState(t, bs[0], Ejected, BadStatus)
		requireState(t, bs[1], Healthy, ReasonNone)
	})
	t.Run("all but one of many", func(t *testing.T) {
		p, bs, _ := machine(t, 5, Config{})
		for _, b := range bs {
			feed(p, b, Pass)
		}
		for i := 0; i < 3; i++ {
			for _, b := range bs {
				feed(p, b, Miss)
			}
		}
		assert.Equal(t, 1, p.InService())
		requireState(t, bs[4], Healthy, ReasonNone)
	})
	t.Run("refused ejects the last", func(t *testing.T) {
		p, bs, _ := machine(t, 1, Config{})
		feed(p, bs[0], Pass, Miss, Miss)
		requireState(t, bs[0], Healthy, ReasonNone)
		bs[0].Report(Gone, errTest)
		requireState(t, bs[0], Ejected, Crash)
		assert.Equal(t, 0, p.InService())
	})
	t.Run("guard lifts when another comes back", func(t *testing.T) {
		p, bs, _ := machine(t, 2, Config{})
		feed(p, bs[0], Pass)
		feed(p, bs[1], Gone)
		feed(p, bs[0], Miss, Miss, Miss)
		requireState(t, bs[0], Healthy, ReasonNone) // guarded
		feed(p, bs[1], Pass)                        // back: the guard is no longer needed
		feed(p, bs[0], Miss)                        // still failing: out at once
		requireState(t, bs[0], Ejected, Hang)
		requireState(t, bs[1], Healthy, ReasonNone)
	})
	t.Run("a pass clears the guard", func(t *testing.T) {
		p, bs, _ := machine(t, 2, Config{})
		feed(p, bs[0], Pass)
		feed(p, bs[1], Gone)
		feed(p, bs[0], Miss, Miss)
		require.True(t, bs[0].guardedNow())
		feed(p, bs[0], Pass)
		require.False(t, bs[0].guardedNow())
		feed(p, bs[1], Pass)
		feed(p, bs[0], Miss) // one miss after a pass is not enough
		requireState(t, bs[0], Healthy, ReasonNone)
	})
	t.Run("unknown backends are not guarded", func(t *testing.T) {
		p, bs, _ := machine(t, 1, Config{})
		feed(p, bs[0], Miss, Miss)
		requireState(t, bs[0], Ejected, Hang)
	})
}

func (b *Backend) guardedNow() bool {
	b.pool.mu.Lock()
	defer b.pool.mu.Unlock()
	return b.guarded != ReasonNone
}

func TestReportGoneEjectsAtOnce(t *testing.T) {
	p, bs, rec := machine(t, 1, Config{Fails: 10})
	feed(p, bs[0], Pass)
	bs[0].Report(Gone, errors.New("connection refused"))
	requireState(t, bs[0], Ejected, Crash) // synchronous
	tr := rec.ejected(0, Crash)
	assert.Equal(t, Healthy, tr.From)
	assert.Equal(t, "connection refused", tr.Cause)
	assert.False(t, bs[0].kicked.Load(), "proof of a crash asked for a beat")
}

func TestReportTimeout(t *testing.T) {
	t.Run("ejects for hang at once", func(t *testing.T) {
		p, bs, rec := machine(t, 2, Config{Fails: 10})
		feed(p, bs[0], Pass)
		feed(p, bs[1], Pass)
		bs[0].Report(Timeout, context.DeadlineExceeded)
		requireState(t, bs[0], Ejected, Hang)
		assert.Equal(t, Healthy, rec.ejected(0, Hang).From)
		assert.True(t, bs[0].kicked.Load(), "a timeout report did not ask for a beat")
	})
	t.Run("guard permitting", func(t *testing.T) {
		p, bs, _ := machine(t, 1, Config{})
		feed(p, bs[0], Pass)
		bs[0].Report(Timeout, context.DeadlineExceeded)
		requireState(t, bs[0], Healthy, ReasonNone)
		assert.True(t, bs[0].kicked.Load(), "a timeout report did not ask for a beat")
	})
	t.Run("unknown needs fails", func(t *testing.T) {
		_, bs, _ := machine(t, 1, Config{})
		bs[0].Report(Timeout, nil)
		requireState(t, bs[0], Unknown, ReasonNone)
		bs[0].Report(Timeout, nil)
		requireState(t, bs[0], Ejected, Hang)
	})
	t.Run("report miss and wrong status count like beats", func(t *testing.T) {
		p, bs, _ := machine(t, 2, Config{})
		feed(p, bs[0], Pass)
		feed(p, bs[1], Pass)
		bs[0].Report(WrongStatus, nil)
		requireState(t, bs[0], Healthy, ReasonNone)
		bs[0].Report(WrongStatus, nil)
		requireState(t, bs[0], Ejected, BadStatus)
	})
}

func TestProbeNeverBlocks(t *testing.T) {
	_, bs, _ := machine(t, 1, Config{})
	for i := 0; i < 100; i++ {
		bs[0].Probe()
		bs[0].Report(Miss, nil)
	}
	assert.True(t, bs[0].kicked.Load())
}

func TestReady(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{})
	ready := p.Ready()
	assert.True(t, ready == p.Ready(), "one channel until something is admitted")

	woke := make(chan struct{})
	go func() {
		<-ready
		close(woke)
	}()
	feed(p, bs[0], Miss, Miss, Gone)
	feed(p, bs[1], Gone, WrongStatus)
	assert.False(t, closed(ready), "no admission, no wake-up")
	assert.False(t, closed(woke))

	feed(p, bs[0], Pass)
	within(t, wait, woke, "the waiter's wake-up")
	assert.True(t, closed(ready))

	next := p.Ready()
	assert.False(t, closed(next), "a fresh channel after an admission")
	feed(p, bs[0], Gone) // an ejection wakes no one
	assert.False(t, closed(next))
	feed(p, bs[1], Pass) // admissions do
	assert.True(t, closed(next))
	assert.Equal(t, 1, p.InService())
}

// A miss while a live request has waited longer than a beat may take is a
// second witness of a hang: no need to wait for Fails misses.
func TestStuckFlightEjectsOnFirstMiss(t *testing.T) {
	cfg := Config{Fails: 5, Timeout: 20 * time.Millisecond}
	p, bs, rec := machine(t, 2, cfg)
	feed(p, bs[0], Pass)
	feed(p, bs[1], Pass)

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	f := &Flight{Cancel: cancel, Replayable: true}
	bs[0].Begin(f)
	feed(p, bs[0], Miss) // the flight is younger than Timeout
	requireState(t, bs[0], Healthy, ReasonNone)

	// age the flight past Timeout without sleeping
	bs[0].flightMu.Lock()
	f.start = f.start.Add(-time.Second)
	bs[0].flightMu.Unlock()
	feed(p, bs[0], WrongStatus) // a wrong status is no sign of a hang
	requireState(t, bs[0], Healthy, ReasonNone)
	feed(p, bs[0], Pass, Miss)
	requireState(t, bs[0], Ejected, Hang)
	assert.Equal(t, Healthy, rec.ejected(0, Hang).From)
	assert.ErrorIs(t, context.Cause(ctx), ErrRescued)
	assert.ErrorIs(t, bs[0].End(f), ErrRescued)

	// guard still applies
	g := &Flight{Cancel: func(error) {}, Replayable: true}
	bs[1].Begin(g)
	bs[1].flightMu.Lock()
	g.start = g.start.Add(-time.Second)
	bs[1].flightMu.Unlock()
	feed(p, bs[1], Miss)
	requireState(t, bs[1], Healthy, ReasonNone)
	assert.NoError(t, bs[1].End(g))
}

// Transitions reach the hook in the order they were made, without the
// pool's lock held: the hook may call the pool, even cause a transition.
func TestOnTransition(t *testing.T) {
	const n = 8
	p, bs, _ := machine(t, n, Config{Fails: 1})
	var (
		mu  sync.Mutex
		got = map[int][]Transition{}
	)
	p.OnTransition(func(tr Transition) {
		st, _, _ := bs[tr.Index].State() // would deadlock under p.mu
		mu.Lock()
		got[tr.Index] = append(got[tr.Index], tr)
		mu.Unlock()
		if tr.To == Ejected && tr.Reason == Crash && st == Ejected {
			feed(p, bs[tr.Index], Pass) // a transition from the hook itself
		}
	})
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				feed(p, b, Pass, Gone, WrongStatus)
			}
		}()
	}
	wg.Wait()
	p.deliver(true)
	for i := range n {
		trs := got[i]
		require.NotEmpty(t, trs)
		assert.Equal(t, Unknown, trs[0].From)
		for k := 1; k < len(trs); k++ {
			require.Equal(t, trs[k-1].To, trs[k].From, "backend %d, transition %d out of order", i, k)
		}
	}
}
