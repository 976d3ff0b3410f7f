package healthcheck

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCrashLoopDelays(t *testing.T) {
	ms := time.Millisecond
	// the built-in supervisor's (caddymodule/spawn): 0, 100ms, 200ms, ... 30s
	spawn := CrashLoopPolicy{Burst: 2, Stable: time.Second, Base: 100 * ms, Cap: 30 * time.Second}
	want := []time.Duration{0, 0, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms,
		12800 * ms, 25600 * ms, 30 * time.Second, 30 * time.Second}
	for n := 1; n < len(want); n++ {
		assert.Equal(t, want[n], spawn.Delay(n), "spawn, run %d", n)
	}
	// the restart policy's: 5 in a row, then 1s doubling to a minute
	want = []time.Duration{0, 0, 0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	for n := 1; n < len(want); n++ {
		assert.Equal(t, want[n], restartLoop.Delay(n), "restart, run %d", n)
	}
	assert.Equal(t, time.Minute, restartLoop.Delay(1000), "no overflow")
}

func TestCrashLoopCountsShortRuns(t *testing.T) {
	c := CrashLoop{CrashLoopPolicy: CrashLoopPolicy{Burst: 2, Stable: time.Second, Base: 100 * time.Millisecond, Cap: 30 * time.Second}}
	t0 := time.Unix(1000, 0)
	at := t0
	// a process that dies at once, again and again
	var got []time.Duration
	for range 4 {
		d := c.Ended(at, at.Add(10*time.Millisecond))
		got = append(got, d)
		at = at.Add(10*time.Millisecond + d)
	}
	assert.Equal(t, []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}, got)
	runs, first := c.Runs()
	assert.Equal(t, 4, runs)
	assert.Equal(t, t0, first)
	// one that ran for a second worked: its crash starts a new count
	stable := at.Add(5 * time.Second)
	assert.Zero(t, c.Ended(stable.Add(-time.Second), stable))
	runs, first = c.Runs()
	assert.Equal(t, 1, runs)
	assert.Equal(t, stable.Add(-time.Second), first)
	assert.Equal(t, 100*time.Millisecond, c.Ended(stable, stable), "a failed start is a short run")
}

// The restart policy backs off after 5 restarts in a row, each needed
// again before the backend answered for 10s: 1s, doubling to a minute; a
// backend that answered 10s after its restart starts a new count. Driven
// on a fake clock through restartRound.
func TestRestartPolicyCrashLoop(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{})
	rs := &recordingRestarter{}
	const lease = 100 * time.Millisecond
	p.SetRestartPolicy(RestartPolicy{Restarter: rs, After: time.Millisecond, Lease: lease})
	feed(p, bs[1], Pass)
	b := bs[0]
	feed(p, b, Miss, Miss)
	requireState(t, b, Ejected, Hang)

	now := time.Now().Add(time.Second)
	restarts := 0
	// restart asks for a restart at the earliest time it is allowed and
	// returns that time; the restart's lease then expires
	restart := func() time.Time {
		t.Helper()
		p.mu.Lock()
		at := b.restartAt
		p.mu.Unlock()
		if at.After(now) {
			p.restartRound(at.Add(-time.Millisecond))
			st, _, _ := b.State()
			require.Equal(t, Ejected, st, "restarted before its backoff ran out")
		} else {
			at = now
		}
		p.restartRound(at)
		st, _, _ := b.State()
		require.Equal(t, Restarting, st, "restart %d", restarts+1)
		restarts++
		now = at.Add(lease)
		p.restartRound(now) // not back: the lease expires
		requireState(t, b, Ejected, LeaseExpired)
		return at
	}
	// gaps between restart requests
	gaps := func(n int) []time.Duration {
		var out []time.Duration
		last := restart()
		for range n {
			at := restart()
			out = append(out, at.Sub(last))
			last = at
		}
		return out
	}
	s := time.Second
	assert.Equal(t, []time.Duration{lease, lease, lease, lease, s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s},
		gaps(12), "gaps between restarts")

	// the restarted backend answered for 10s: a new count
	p.mu.Lock()
	b.lastGood = b.restartedAt.Add(restartLoop.Stable)
	p.mu.Unlock()
	now = now.Add(time.Minute) // past the last backoff
	assert.Equal(t, []time.Duration{lease, lease, lease, lease, s}, gaps(5), "gaps after a stable run")
	p.Close() // waits for the restart requests
	assert.Equal(t, restarts, rs.count())
}
