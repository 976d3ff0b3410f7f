package healthcheck

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The wheel gives every beat back once, never before it is due, and no
// later than the first look at or after the look it asked for: a beat due
// already at once, one on the grid at its due time, one off the grid (a
// wall clock stepped) within a tick. Beats further ahead than the ring
// reaches wait their turn around it.
func TestWheelTakesEachBeatOnceWhenDue(t *testing.T) {
	const tick = 25 * time.Millisecond
	start := time.Now()
	w := newWheel(tick, start)
	rnd := rand.New(rand.NewPCG(1, 2))
	type beat struct{ at, look time.Time }
	pending := map[uint64]beat{}
	var gen uint64
	push := func(now time.Time) {
		gen++
		var at time.Time
		switch rnd.IntN(4) {
		case 0:
			at = now // due at once
		case 1: // off the grid
			at = now.Add(time.Duration(rnd.Int64N(int64(4 * time.Second))))
		default: // on it, as the scheduler files them, some past the ring
			at = roundTime(now.Add(time.Duration(rnd.Int64N(int64(8*time.Second)))), tick)
		}
		look := w.push(due{at: at, gen: gen}, now)
		switch {
		case !at.After(now):
			assert.True(t, look.IsZero(), "a beat due is looked at at once")
		case at.Equal(roundTime(at, tick)):
			assert.True(t, look.Equal(at), "a beat on the grid is looked at when due")
		default:
			assert.True(t, look.After(at) && !look.After(at.Add(tick)), "a beat off the grid is looked at within a tick of its due time")
		}
		pending[gen] = beat{at, look}
	}
	now := start
	var out []due
	for range 3000 {
		for range rnd.IntN(5) {
			push(now)
		}
		now = now.Add(time.Duration(rnd.Int64N(int64(3 * tick))))
		out = w.take(now, out[:0])
		for _, d := range out {
			b, ok := pending[d.gen]
			require.True(t, ok, "beat %d given back twice", d.gen)
			require.False(t, b.at.After(now), "beat %d given back early", d.gen)
			delete(pending, d.gen)
		}
		// nothing whose look is past is left behind
		for g, b := range pending {
			require.True(t, b.look.After(now), "beat %d, due %v, kept at %v", g, b.at.Sub(start), now.Sub(start))
		}
		if at, ok := w.next(); ok && len(pending) > 0 {
			var first time.Time
			for _, b := range pending {
				if first.IsZero() || b.look.Before(first) {
					first = b.look
				}
			}
			require.False(t, at.After(first), "the next look is no later than the first one asked for")
		} else {
			require.Equal(t, ok, len(pending) > 0)
		}
	}
	now = now.Add(time.Minute)
	out = w.take(now, out[:0])
	assert.Len(t, out, len(pending), "every beat given back in the end")
	_, ok := w.next()
	assert.False(t, ok)
}
