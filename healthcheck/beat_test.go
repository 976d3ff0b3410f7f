package healthcheck

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// beat is one call of the OnBeat hook.
type beat struct {
	e       Evidence
	latency time.Duration
	state   State // b's state as the hook saw it
}

// beats installs an OnBeat hook on p (before Start) that hands every
// beat's call to the channel of its backend's index. The hook reads the
// backend's state, which takes the pool's lock: were it called under that
// lock, it would deadlock and no beat would ever arrive.
func beats(p *Pool) []chan beat {
	chs := make([]chan beat, len(p.Backends()))
	for i := range chs {
		chs[i] = make(chan beat, 64)
	}
	p.OnBeat(func(b *Backend, e Evidence, latency time.Duration) {
		s, _, _ := b.State()
		select {
		case chs[b.Index] <- beat{e, latency, s}:
		default: // the test looks at the first ones only
		}
	})
	return chs
}

// skipBeats throws away the beats received so far.
func skipBeats(ch <-chan beat) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func nextBeat(t *testing.T, ch <-chan beat, what string) beat {
	t.Helper()
	select {
	case bt := <-ch:
		return bt
	case <-timeout():
		t.Fatalf("no beat of %s within %v", what, wait)
		return beat{}
	}
}

func TestOnBeat(t *testing.T) {
	const slow = 20 * time.Millisecond
	good := newBackendFunc(t, func(http.ResponseWriter, *http.Request) { time.Sleep(slow) })
	bad := newBackend(t)
	bad.status.Store(http.StatusInternalServerError)
	release := make(chan struct{})
	hung := newBackendFunc(t, func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // before the servers close (cleanups run last first)
	const tmo = 300 * time.Millisecond
	p, rec := newPool(t, []string{good.addr(), bad.addr(), refusedAddr(t), hung.addr()},
		Config{Path: "/health", Interval: time.Hour, Timeout: tmo})
	chs := beats(p)
	p.Start()

	g := nextBeat(t, chs[0], "the good backend")
	assert.Equal(t, Pass, g.e)
	assert.GreaterOrEqual(t, g.latency, slow, "the answer took at least the handler's sleep")
	assert.Less(t, g.latency, tmo)
	assert.Equal(t, Healthy, g.state, "the hook runs after the verdict is applied")

	nextBeat(t, chs[1], "the bad-status backend")
	b := nextBeat(t, chs[1], "the bad-status backend's second beat, at once; the next in an hour")
	assert.Equal(t, WrongStatus, b.e)
	assert.Positive(t, b.latency)

	r := nextBeat(t, chs[2], "the refused backend")
	assert.Equal(t, Gone, r.e)
	assert.Less(t, r.latency, tmo)

	h := nextBeat(t, chs[3], "the hung backend")
	assert.Equal(t, Miss, h.e)
	assert.GreaterOrEqual(t, h.latency, tmo, "a miss takes the time until it is judged missed")

	rec.flush()
	snap := p.Snapshot()
	assert.Equal(t, g.latency, snap[0].LastBeat, "only one beat an hour: the last answered is the first")
	assert.Equal(t, b.latency, snap[1].LastBeat, "a wrong status is an answer")
	assert.Zero(t, snap[2].LastBeat, "refused: never answered")
	assert.Zero(t, snap[3].LastBeat, "missed: never answered")

	js, err := json.Marshal(snap)
	require.NoError(t, err)
	assert.Contains(t, string(js), fmt.Sprintf(`"last_beat_ns":%d`, int64(g.latency)))
	var back []map[string]any
	require.NoError(t, json.Unmarshal(js, &back))
	assert.NotContains(t, back[2], "last_beat_ns", "absent until a beat is answered")
	assert.NotContains(t, back[0], "restart_lease_until", "absent when not restarting")
}

// A restarting backend's snapshot says when its restart lease runs out.
func TestSnapshotLeaseUntil(t *testing.T) {
	const lease = 30 * time.Second
	p, bs, _ := machine(t, 2, Config{})
	p.SetRestartPolicy(RestartPolicy{Restarter: &recordingRestarter{}, After: time.Millisecond, Lease: lease})
	feed(p, bs[1], Pass)
	feed(p, bs[0], Pass, Timeout)
	requireState(t, bs[0], Ejected, Hang)
	assert.Zero(t, p.Snapshot()[0].LeaseUntil)

	at := time.Now().Add(time.Minute)
	p.restartRound(at)
	requireState(t, bs[0], Restarting, Hang)
	s := p.Snapshot()[0]
	assert.True(t, s.LeaseUntil.Equal(at.Add(lease)), "lease until %v, want %v", s.LeaseUntil, at.Add(lease))
	js, err := json.Marshal(s)
	require.NoError(t, err)
	want, err := json.Marshal(at.Add(lease))
	require.NoError(t, err)
	assert.Contains(t, string(js), `"restart_lease_until":`+string(want))

	feed(p, bs[0], Pass) // back
	requireState(t, bs[0], Healthy, ReasonNone)
	s = p.Snapshot()[0]
	assert.Zero(t, s.LeaseUntil, "zero once not restarting")
	js, err = json.Marshal(s)
	require.NoError(t, err)
	assert.NotContains(t, string(js), "restart_lease_until")
}
