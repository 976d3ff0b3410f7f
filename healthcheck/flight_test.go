package healthcheck

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkFlights verifies the swap-remove bookkeeping: every registered
// flight sits at its own slot, once.
func checkFlights(t *testing.T, b *Backend, want map[*Flight]bool) {
	t.Helper()
	b.flightMu.Lock()
	defer b.flightMu.Unlock()
	require.Len(t, b.flights, len(want))
	for i, f := range b.flights {
		require.Equal(t, i, f.slot, "slot of flight %d", i)
		require.True(t, want[f], "flight at %d is not registered", i)
	}
}

func TestFlightsBeginEnd(t *testing.T) {
	b := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	const n = 300
	fs := make([]*Flight, n)
	live := map[*Flight]bool{}
	for i := range fs {
		fs[i] = &Flight{Cancel: func(error) { t.Error("cancelled without a rescue") }, Replayable: true}
		b.Begin(fs[i])
		live[fs[i]] = true
		require.Equal(t, len(live), b.InFlight())
	}
	checkFlights(t, b, live)
	// end them in random order, with some begun again on the way
	for round := 0; round < 3; round++ {
		rand.Shuffle(n, func(i, j int) { fs[i], fs[j] = fs[j], fs[i] })
		for i, f := range fs {
			require.NoError(t, b.End(f))
			delete(live, f)
			if i%7 == 0 {
				b.Begin(f) // a flight is reusable after End
				live[f] = true
			}
			checkFlights(t, b, live)
		}
		for f := range live {
			require.NoError(t, b.End(f))
			delete(live, f)
		}
		require.Zero(t, b.InFlight())
		for _, f := range fs {
			b.Begin(f)
			live[f] = true
		}
	}
}

func TestFlightsEndLastAndOnly(t *testing.T) {
	b := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	f, g := &Flight{}, &Flight{}
	b.Begin(f)
	require.NoError(t, b.End(f))
	require.Zero(t, b.InFlight())
	b.Begin(f)
	b.Begin(g)
	require.NoError(t, b.End(g)) // the last one: swapped with itself
	checkFlights(t, b, map[*Flight]bool{f: true})
	require.NoError(t, b.End(f))
	require.Zero(t, b.InFlight())
}

func TestFlightsConcurrent(t *testing.T) {
	b := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]*Flight, 0, 16)
			for i := 0; i < 2000; i++ {
				if len(mine) < 16 && (len(mine) == 0 || rand.IntN(2) == 0) {
					f := &Flight{Cancel: func(error) {}, Replayable: true}
					b.Begin(f)
					mine = append(mine, f)
				} else {
					k := rand.IntN(len(mine))
					if b.End(mine[k]) != nil {
						t.Error("ended flight reported rescued")
					}
					mine[k] = mine[len(mine)-1]
					mine = mine[:len(mine)-1]
				}
			}
			for _, f := range mine {
				b.End(f)
			}
		}()
	}
	wg.Wait()
	require.Zero(t, b.InFlight())
	checkFlights(t, b, map[*Flight]bool{})
}

// Rescues racing with Begin/End: End says "rescued" exactly for the flights
// whose context got ErrRescued, and never touches a flight it already let go.
func TestFlightsRescueRace(t *testing.T) {
	b := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	type rec struct {
		ctx     context.Context
		rescued bool
	}
	var (
		mu   sync.Mutex
		recs []rec
		wg   sync.WaitGroup
		stop atomic.Bool
	)
	var rescues atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			n, _ := b.cut(nil, false)
			rescues.Add(int64(n))
		}
	}()
	var workers sync.WaitGroup
	for g := 0; g < 4; g++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := 0; i < 3000; i++ {
				ctx, cancel := context.WithCancelCause(context.Background())
				f := &Flight{Cancel: cancel, Replayable: true}
				b.Begin(f)
				r := b.End(f) != nil
				mu.Lock()
				recs = append(recs, rec{ctx, r})
				mu.Unlock()
			}
		}()
	}
	workers.Wait()
	stop.Store(true)
	wg.Wait() // every cancel a rescue took has been called
	n := 0
	for _, r := range recs {
		if r.rescued {
			n++
			assert.ErrorIs(t, context.Cause(r.ctx), ErrRescued)
		} else {
			assert.NoError(t, r.ctx.Err(), "a flight that ended unrescued was cancelled")
		}
	}
	assert.EqualValues(t, n, rescues.Load())
	assert.Zero(t, b.InFlight())
	t.Logf("%d of %d flights rescued", n, len(recs))
}

func TestRescueOnHangOnly(t *testing.T) {
	for _, c := range []struct {
		name   string
		ev     []Evidence
		reason Reason
		rescue bool
	}{
		{"timeout report", []Evidence{Timeout}, Hang, true},
		{"missed beats", []Evidence{Miss, Miss}, Hang, true},
		{"bad status", []Evidence{WrongStatus, WrongStatus}, BadStatus, false},
		{"crash", []Evidence{Gone}, Crash, false}, // its requests fail by themselves
	} {
		t.Run(c.name, func(t *testing.T) {
			p, bs, rec := machine(t, 2, Config{})
			feed(p, bs[0], Pass)
			feed(p, bs[1], Pass)
			type fl struct {
				f   *Flight
				ctx context.Context
			}
			var on0, on1 []fl
			for i := 0; i < 5; i++ {
				for _, x := range []struct {
					b  *Backend
					to *[]fl
				}{{bs[0], &on0}, {bs[1], &on1}} {
					ctx, cancel := context.WithCancelCause(context.Background())
					t.Cleanup(func() { cancel(nil) })
					f := &Flight{Cancel: cancel, Replayable: true}
					x.b.Begin(f)
					*x.to = append(*x.to, fl{f, ctx})
				}
			}
			require.NoError(t, bs[0].End(on0[4].f)) // ended before: untouched
			feed(p, bs[0], c.ev...)
			rec.ejected(0, c.reason)
			for i, x := range on0[:4] {
				if c.rescue {
					assert.ErrorIs(t, context.Cause(x.ctx), ErrRescued, "flight %d", i)
					assert.ErrorIs(t, bs[0].End(x.f), ErrRescued, "End after a rescue reports it")
					assert.ErrorIs(t, bs[0].End(x.f), ErrRescued, "and does not panic when repeated")
				} else {
					assert.NoError(t, x.ctx.Err())
					assert.NoError(t, bs[0].End(x.f))
				}
			}
			assert.NoError(t, on0[4].ctx.Err())
			assert.Zero(t, bs[0].InFlight())
			for _, x := range on1 { // the other backend's flights are left alone
				assert.NoError(t, x.ctx.Err())
				assert.NoError(t, bs[1].End(x.f))
			}
			// a rescued flight is reusable
			f := on0[0].f
			f.Cancel = func(error) {}
			bs[0].Begin(f)
			assert.NoError(t, bs[0].End(f))
		})
	}
}

func TestNoRescueWhenGuarded(t *testing.T) {
	p, bs, _ := machine(t, 1, Config{})
	feed(p, bs[0], Pass)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	f := &Flight{Cancel: cancel, Replayable: true}
	bs[0].Begin(f)
	bs[0].Report(Timeout, errors.New("slow"))
	feed(p, bs[0], Miss, Miss)
	requireState(t, bs[0], Healthy, ReasonNone)
	assert.NoError(t, ctx.Err())
	assert.NoError(t, bs[0].End(f))
}

// A suspicion rescues the replayable flights its budget lets go and keeps
// the others, at their own slots; an ejection for a hang then abandons
// what is left (a flight without a Cancel is never cut).
func TestCutRescuesThenAbandons(t *testing.T) {
	b := NewPool([]string{"a:1"}, Config{}, nil).Backends()[0]
	causes := map[*Flight]error{}
	live := map[*Flight]bool{}
	var all []*Flight
	for i := range 9 {
		f := &Flight{Replayable: i%3 != 2}
		if i != 8 {
			f.Cancel = func(cause error) {
				assert.Nil(t, causes[f], "cut twice")
				causes[f] = cause
			}
		}
		all = append(all, f)
		b.Begin(f)
		live[f] = true
	}
	// six replayable, three not (one of them without a Cancel); the budget
	// lets four go
	budget := 4
	allow := func() bool { budget--; return budget >= 0 }
	rescued, abandoned := b.cut(allow, false)
	require.Equal(t, 4, rescued)
	require.Zero(t, abandoned)
	for f := range causes {
		assert.ErrorIs(t, causes[f], ErrRescued)
		assert.True(t, f.Replayable)
		delete(live, f)
	}
	checkFlights(t, b, live)

	rescued, abandoned = b.cut(func() bool { t.Error("a flight the budget kept is asked again"); return true }, true)
	require.Zero(t, rescued)
	require.Equal(t, 4, abandoned, "two replayable ones the budget kept, two that may not be replayed")
	require.Len(t, causes, 8)
	for _, f := range all {
		switch {
		case f.Cancel == nil:
			assert.NoError(t, b.End(f), "no Cancel: never cut")
		case causes[f] == ErrRescued:
			assert.ErrorIs(t, b.End(f), ErrRescued)
		default:
			assert.ErrorIs(t, causes[f], ErrAbandoned)
			assert.ErrorIs(t, b.End(f), ErrAbandoned)
		}
	}
	require.Zero(t, b.InFlight())
}

// Quiet: at the watchdog's look, a request waits and nothing was heard
// for half the threshold.
func TestQuiet(t *testing.T) {
	p := NewPool([]string{"a:1", "b:1"}, Config{}, nil)
	b := p.Backends()[0]
	p.observe(b, Pass, nil)
	look := func(after time.Duration) bool {
		p.look(time.Now().Add(after))
		return b.Quiet()
	}
	b.Answered()
	assert.False(t, look(time.Hour), "nothing waits")
	f := &Flight{}
	b.Begin(f)
	assert.False(t, look(0), "answered just now")
	quiet := suspectFloor * 3 / 4 // past half the threshold, short of it
	assert.True(t, look(quiet), "silent while a request waits")
	b.heard.Store(time.Now().Add(quiet).UnixNano())
	assert.False(t, look(quiet), "a heartbeat answered")
	b.End(f)
	assert.False(t, look(time.Hour), "nothing waits")
}

// Hushed: requests wait and nothing was heard for longer than the backend
// usually stays silent while busy, measured at the call, not at a look.
func TestHushed(t *testing.T) {
	p := NewPool([]string{"a:1", "b:1"}, Config{}, nil)
	b := p.Backends()[0]
	now := time.Now()
	assert.False(t, b.Hushed(now.Add(time.Hour)), "nothing waits")
	f := &Flight{}
	b.Begin(f)
	assert.False(t, b.Hushed(time.Now()), "busy just now")
	later := time.Now().Add(hushFloor * 2)
	assert.True(t, b.Hushed(later), "silent past the floor while a request waits")
	b.Answered()
	assert.False(t, b.Hushed(time.Now()), "a live answer")
	assert.True(t, b.Hushed(time.Now().Add(hushFloor*2)))
	b.sus.hush.Store(int64(time.Hour)) // one that is usually silent long
	assert.False(t, b.Hushed(time.Now().Add(hushFloor*2)), "its own usual silence")
	b.sus.hush.Store(0)
	b.heard.Store(time.Now().Add(hushFloor * 2).UnixNano())
	assert.False(t, b.Hushed(time.Now().Add(hushFloor*2)), "a heartbeat answered")
	require.NoError(t, b.End(f))
	assert.False(t, b.Hushed(time.Now().Add(time.Hour)), "nothing waits")
}
