package caddymodule

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/cluster"
	"github.com/crashonly/caddy-failover/healthcheck"
)

// member is a pool's part in the cluster of Caddy instances that front the
// same pool (by name) and share Caddy's storage: it claims the restart
// leases the restarter adapter asks for, and polls the peers' restarts
// into the engine (PeerRestarted). Nothing touches storage before the
// config has started (see App.commit); a pool whose config has cluster off
// never does.
type member struct {
	pool *healthcheck.Pool
	obs  *observer

	// what the running config says; store nil: off
	store atomic.Pointer[cluster.Store]
	max   atomic.Int64 // max_restarting (effective)
	lease atomic.Int64 // restart_timeout (effective)

	outage atomic.Bool // storage failing now: logged once per outage

	mu     sync.Mutex
	cancel context.CancelFunc // the poller's, once started
	done   chan struct{}
	held   map[string]bool // backends whose restart lease this instance holds
}

func newMember(p *healthcheck.Pool, obs *observer) *member {
	return &member{pool: p, obs: obs, held: map[string]bool{}}
}

// Bounds of the storage operations: a storage that does not answer within
// them is out, and restarts go on locally. A claim may wait for a lock a
// dead instance left: file_system's go stale after 10s, and it polls a
// held lock every second.
const (
	claimTimeout = 12 * time.Second
	pollTimeout  = 2 * time.Second
)

// Poll interval: a quarter of the heartbeat interval, within these. A
// peer's fact pays only when it comes before this instance's own heartbeats
// tell (a miss or more after the fault): a poll as slow as a beat would
// lose that race half the time. One small read per pool per poll.
const (
	pollsPerBeat = 4
	minPoll      = 100 * time.Millisecond
	maxPoll      = 2 * time.Second
)

// configure applies the running config's settings; s nil turns sharing
// off. Called when the config starts (App.commit), then the poller runs
// until the pool is destroyed.
func (m *member) configure(s certmagic.Storage, name string, pol healthcheck.RestartPolicy) {
	if s == nil {
		m.store.Store(nil)
		return
	}
	most := pol.MaxRestarting
	if most == 0 {
		most = max(1, len(m.pool.Backends())/2) // as the engine does
	}
	lease := pol.Lease
	if lease == 0 {
		lease = healthcheck.DefaultRestartLease
	}
	m.max.Store(int64(most))
	m.lease.Store(int64(lease))
	m.store.Store(&cluster.Store{S: s, Pool: name})
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel, m.done = cancel, make(chan struct{})
		every := min(max(m.pool.Config().Interval/pollsPerBeat, minPoll), maxPoll)
		go m.poll(ctx, every)
	}
}

// stop ends the poller (the pool is destroyed).
func (m *member) stop() {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (m *member) log() *zap.Logger {
	if l := m.obs.log.Load(); l != nil {
		return l
	}
	return zap.NewNop()
}

// claim takes b's restart lease before this instance asks for the
// restart. It answers nil (ask), a *healthcheck.PeerRestart (a peer has it
// in hand) or healthcheck.ErrRestartBudget. A storage that fails does not
// stop restarts: they go on locally, with a warning.
func (m *member) claim(ctx context.Context, b *healthcheck.Backend, reason healthcheck.Reason, lastGood time.Time) error {
	st := m.store.Load()
	if st == nil {
		return nil
	}
	c := cluster.Claim{Addr: b.Addr, Me: cluster.ID, LastGood: lastGood, Max: int(m.max.Load()),
		Expired: reason == healthcheck.LeaseExpired, Force: reason == healthcheck.Manual}
	lease, took := time.Duration(m.lease.Load()), m.pool.RestartTook()
	var v cluster.Verdict
	var l cluster.Lease
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	err := st.Update(cctx, func(rec *cluster.Record, now time.Time) bool {
		if v, l = cluster.Decide(rec, c, now); v != cluster.Take {
			return false
		}
		if rec.Restarts == nil {
			rec.Restarts = map[string]cluster.Lease{}
		}
		rec.Restarts[b.Addr] = cluster.Lease{Holder: cluster.ID, Reason: reason.String(), Since: now, Until: now.Add(lease), Took: took}
		return true
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return err // the restart's own time ran out: a failed request, retried
	case err != nil:
		m.storageFailed(err)
		return nil
	}
	m.storageOK()
	switch v {
	case cluster.Take:
		m.mu.Lock()
		m.held[b.Addr] = true
		m.mu.Unlock()
	case cluster.Peer:
		mPeerDeferred.WithLabelValues(m.obs.Name(), "peer").Inc()
		return &healthcheck.PeerRestart{Holder: l.Holder, Since: l.Since, Until: l.Until}
	case cluster.Budget:
		mPeerDeferred.WithLabelValues(m.obs.Name(), "budget").Inc()
		return healthcheck.ErrRestartBudget
	}
	return nil
}

// release gives up b's lease after a failed restart request: a peer may
// try at once.
func (m *member) release(addr string) { m.endLease(addr, true) }

// restartOver hears from the engine (through the observer) that addr's
// restart is over here: a lease this instance holds ends now, so that it
// counts no more in the budget. Its request time stays: a peer that has
// not seen the backend answer since knows its fault was handled.
func (m *member) restartOver(addr string) {
	m.mu.Lock()
	held := m.held[addr]
	m.mu.Unlock()
	if held {
		go m.endLease(addr, false)
	}
}

// endLease ends (or, with drop, deletes) addr's lease if this instance
// still holds it.
func (m *member) endLease(addr string, drop bool) {
	m.mu.Lock()
	delete(m.held, addr)
	m.mu.Unlock()
	st := m.store.Load()
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	err := st.Update(ctx, func(rec *cluster.Record, now time.Time) bool {
		l, ok := rec.Restarts[addr]
		switch {
		case !ok || l.Holder != cluster.ID:
			return false
		case drop:
			delete(rec.Restarts, addr)
		case l.Live(now):
			l.Until = now
			rec.Restarts[addr] = l
		default:
			return false
		}
		return true
	})
	if err != nil {
		m.storageFailed(err)
	}
}

// poll reads the pool's record every interval and hands the peers' live
// restarts to the engine: each backend at most once per restart.
func (m *member) poll(ctx context.Context, every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	seen := map[string]time.Time{} // the request last applied, by backend
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := m.store.Load()
		if st == nil || !m.pool.Started() {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, pollTimeout)
		rec, err := st.Load(lctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.storageFailed(err)
			}
			continue
		}
		m.storageOK()
		now := time.Now()
		members := m.pool.Backends() // they change with dynamic upstreams
		for addr, l := range rec.Restarts {
			var b *healthcheck.Backend
			if i := slices.IndexFunc(members, func(b *healthcheck.Backend) bool { return b.Addr == addr }); i >= 0 {
				b = members[i]
			}
			if b == nil || l.Holder == cluster.ID || !l.Live(now) || seen[addr].Equal(l.Since) {
				continue
			}
			seen[addr] = l.Since
			var r healthcheck.Reason
			_ = r.UnmarshalText([]byte(l.Reason)) // unknown: the engine picks
			if m.pool.PeerRestarted(b, l.Since, l.Until, r, l.Took, l.Holder) {
				mPeerFacts.WithLabelValues(m.obs.Name()).Inc()
			}
		}
	}
}

// storageFailed counts a storage error and warns once per outage.
func (m *member) storageFailed(err error) {
	mStorageErrors.WithLabelValues(m.obs.Name()).Inc()
	if !m.outage.Swap(true) {
		m.log().Warn("cluster storage failing: restarts go on locally, without the other instances' leases (more than one instance may restart a backend)",
			zap.Error(err))
	}
}

func (m *member) storageOK() {
	if m.outage.Swap(false) {
		m.log().Info("cluster storage answering again: restarts are shared again")
	}
}

// holdRolling takes (start) or renews the pool's rolling-restart lease for
// d from now; d 0 ends it. When starting, a peer's rolling restart that
// ran at any time since asked (the operator's request: it is done, or
// being done; see cluster.RollingBusy) is returned and nothing is taken. A failing storage lets
// the rolling restart run locally, with a warning.
func (m *member) holdRolling(start bool, d time.Duration, asked time.Time) *cluster.Lease {
	st := m.store.Load()
	if st == nil {
		return nil
	}
	var peer *cluster.Lease
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	err := st.Update(ctx, func(rec *cluster.Record, now time.Time) bool {
		l := rec.Rolling
		switch {
		case start && cluster.RollingBusy(l, cluster.ID, asked):
			peer = l
			return false
		case !start && (l == nil || l.Holder != cluster.ID):
			return false // taken over meanwhile: the peer's now
		case start:
			rec.Rolling = &cluster.Lease{Holder: cluster.ID, Reason: healthcheck.Manual.String(), Since: now}
		}
		rec.Rolling.Until = now.Add(d)
		return true
	})
	if err != nil {
		m.storageFailed(err)
		return nil
	}
	m.storageOK()
	return peer
}
