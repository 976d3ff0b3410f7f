package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/stretchr/testify/require"
)

func TestDecide(t *testing.T) {
	now := time.Now()
	good := now.Add(-10 * time.Second) // this instance's last good answer
	live := Lease{Holder: "peer", Since: now.Add(-time.Second), Until: now.Add(time.Second)}
	over := Lease{Holder: "peer", Since: now.Add(-5 * time.Second), Until: now.Add(-time.Second)}
	old := Lease{Holder: "peer", Since: good.Add(-time.Minute), Until: good.Add(-30 * time.Second)}
	mine := live
	mine.Holder = "me"
	other := Lease{Holder: "peer", Since: now, Until: now.Add(time.Second)}
	cases := []struct {
		name  string
		rec   map[string]Lease
		claim Claim
		want  Verdict
	}{
		{"no record", nil, Claim{}, Take},
		{"a peer's live lease", map[string]Lease{"b": live}, Claim{}, Peer},
		{"a peer's live lease, after waiting in vain", map[string]Lease{"b": live}, Claim{Expired: true}, Peer},
		{"my live lease", map[string]Lease{"b": mine}, Claim{}, Take},
		{"a peer asked after my last good answer", map[string]Lease{"b": over}, Claim{}, Peer},
		{"... and its restart did not bring it back", map[string]Lease{"b": over}, Claim{Expired: true}, Take},
		{"a peer asked before my last good answer", map[string]Lease{"b": old}, Claim{}, Take},
		{"an operator's", map[string]Lease{"b": live}, Claim{Force: true}, Take},
		{"budget full", map[string]Lease{"c": other}, Claim{Max: 1}, Budget},
		{"budget: an ended restart does not count", map[string]Lease{"c": over}, Claim{Max: 1}, Take},
		{"budget: the backend's own lease does not count", map[string]Lease{"b": mine}, Claim{Max: 1}, Take},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.claim.Addr, c.claim.Me, c.claim.LastGood = "b", "me", good
			got, _ := Decide(&Record{Restarts: c.rec}, c.claim, now)
			require.Equal(t, c.want, got)
		})
	}
}

// Instances racing for one backend's lease through one real file_system
// storage (each its own FileStorage, as separate processes have): exactly
// one takes it; the others see it.
func TestOneClaimWinsOnFileStorage(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	verdicts := make([]Verdict, n)
	for i := range n {
		wg.Go(func() {
			s := Store{S: &certmagic.FileStorage{Path: dir}, Pool: "p/1:x"}
			c := Claim{Addr: "127.0.0.1:1", Me: fmt.Sprint("i", i), LastGood: time.Now().Add(-time.Second)}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := s.Update(ctx, func(rec *Record, now time.Time) bool {
				v, _ := Decide(rec, c, now)
				verdicts[i] = v
				if v != Take {
					return false
				}
				rec.Restarts = map[string]Lease{c.Addr: {Holder: c.Me, Since: now, Until: now.Add(time.Minute)}}
				return true
			})
			require.NoError(t, err)
		})
	}
	wg.Wait()
	taken := 0
	for _, v := range verdicts {
		if v == Take {
			taken++
		}
	}
	require.Equal(t, 1, taken, "verdicts %v", verdicts)
	rec, err := Store{S: &certmagic.FileStorage{Path: dir}, Pool: "p/1:x"}.Load(t.Context())
	require.NoError(t, err)
	require.Len(t, rec.Restarts, 1)
}

// A record that does not decode is replaced by the next write, and old
// leases are pruned.
func TestUpdateReplacesCorruptRecordAndPrunes(t *testing.T) {
	s := Store{S: &certmagic.FileStorage{Path: t.TempDir()}, Pool: "p"}
	require.NoError(t, s.S.Store(t.Context(), s.Key(), []byte("{not json")))
	_, err := s.Load(t.Context())
	require.Error(t, err)
	long := time.Now().Add(-Keep - time.Minute)
	require.NoError(t, s.Update(t.Context(), func(rec *Record, now time.Time) bool {
		rec.Restarts = map[string]Lease{"old": {Holder: "x", Since: long, Until: long}, "new": {Holder: "x", Since: now, Until: now}}
		return true
	}))
	require.NoError(t, s.Update(t.Context(), func(rec *Record, now time.Time) bool { return true }))
	rec, err := s.Load(t.Context())
	require.NoError(t, err)
	require.Contains(t, rec.Restarts, "new")
	require.NotContains(t, rec.Restarts, "old")
}

// A rolling restart asked for while a peer's ran, even one that started
// just before the request and ended before the lock came (the case of two
// instances asked at once, the first quick), is refused; one that ended
// before the request, or this instance's own, is not.
func TestRollingBusy(t *testing.T) {
	asked := time.Now()
	lease := func(holder string, since, until time.Duration) *Lease {
		return &Lease{Holder: holder, Since: asked.Add(since), Until: asked.Add(until)}
	}
	cases := []struct {
		name string
		l    *Lease
		want bool
	}{
		{"none", nil, false},
		{"a peer's, running", lease("peer", -time.Second, time.Minute), true},
		{"a peer's, started before the request, ended after it", lease("peer", -5*time.Millisecond, 100*time.Millisecond), true},
		{"a peer's, started and ended after the request", lease("peer", time.Millisecond, 100*time.Millisecond), true},
		{"a peer's, ended before the request", lease("peer", -time.Minute, -time.Second), false},
		{"mine, running", lease("me", -time.Second, time.Minute), false},
	}
	for _, c := range cases {
		require.Equal(t, c.want, RollingBusy(c.l, "me", asked), c.name)
	}
}
