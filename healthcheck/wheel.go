package healthcheck

import "time"

// wheel holds the beats due, by when, for the scheduler: a slot for each
// tick of its grid, in a ring of wheelSlots, and a list of the beats due at
// once. A push and the taking of a due beat cost the same whatever the
// pool's size, and a wake-up reads only the slots of the ticks it passed.
// (A heap of 10 000 beats cost a dozen cache misses a pop.) A beat is
// filed under the first tick at or after it is due, so that it is never
// early and, its due time being on the scheduler's grid, not late either.
// One further than the ring reaches waits in its slot while the ring turns.
// Not safe for concurrent use: the scheduler's mu guards it.
type wheel struct {
	tick time.Duration
	base time.Time // tick 0
	// taken: the beats of ticks up to this one were taken
	taken int64
	slots [wheelSlots][]due
	now   []due
}

// wheelSlots reaches 3.2s ahead at the default interval's 25ms grid, more
// than the interval and its jitter: a beat goes around at most at start,
// when a large pool's first beats are spread over up to ten intervals.
const wheelSlots = 128

func newWheel(tick time.Duration, now time.Time) *wheel {
	tick = max(tick, time.Microsecond)
	// tick 0 is on the grid (see roundTime), and before now
	w := &wheel{tick: tick, base: roundTime(now, tick).Add(-tick)}
	// room in every slot for a small pool's beats, made at once (a large
	// pool's slots grow as they fill)
	room := make([]due, wheelSlots*wheelRoom)
	for i := range w.slots {
		w.slots[i] = room[i*wheelRoom : i*wheelRoom : (i+1)*wheelRoom]
	}
	return w
}

const wheelRoom = 2

// push files d, at now; it returns when the wheel should be looked at for
// it (the zero time: at once).
func (w *wheel) push(d due, now time.Time) time.Time {
	t := w.tickOf(d.at)
	if t <= w.taken || !d.at.After(now) {
		w.now = append(w.now, d)
		return time.Time{}
	}
	s := &w.slots[t%wheelSlots]
	*s = append(*s, d)
	return w.base.Add(time.Duration(t) * w.tick)
}

// tickOf is the first tick at or after at.
func (w *wheel) tickOf(at time.Time) int64 {
	d := at.Sub(w.base)
	if d <= 0 {
		return 0
	}
	return int64((d + w.tick - 1) / w.tick)
}

// take appends to out the beats due at now, and forgets them.
func (w *wheel) take(now time.Time, out []due) []due {
	out = append(out, w.now...)
	clear(w.now)
	w.now = w.now[:0]
	last := int64(now.Sub(w.base) / w.tick) // the last tick begun
	for t := w.taken + 1; t <= last && t <= w.taken+wheelSlots; t++ {
		s := &w.slots[t%wheelSlots]
		keep := (*s)[:0]
		for _, d := range *s {
			if d.at.After(now) {
				keep = append(keep, d) // a turn of the ring or more ahead
			} else {
				out = append(out, d)
			}
		}
		clear((*s)[len(keep):])
		*s = keep
	}
	w.taken = max(w.taken, last)
	return out
}

// next returns when the wheel should be looked at next; ok false: it
// holds nothing.
func (w *wheel) next() (at time.Time, ok bool) {
	if len(w.now) > 0 {
		return time.Time{}, true
	}
	for t := w.taken + 1; t <= w.taken+wheelSlots; t++ {
		if len(w.slots[t%wheelSlots]) > 0 {
			return w.base.Add(time.Duration(t) * w.tick), true
		}
	}
	return time.Time{}, false
}
