package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Restarter asks a backend's supervisor to restart it. It returns once the
// request is made; the backend's return is seen by its heartbeats.
type Restarter interface {
	Restart(ctx context.Context, b *Backend, reason Reason, lastGood time.Time) error
}

// Defaults of the restart policy.
const (
	DefaultRestartAfter = time.Second
	DefaultRestartLease = 30 * time.Second
	// restartRetry: a failed restart request is retried after this.
	restartRetry = time.Second
)

// restartLoop: a backend restarted 5 times in a row, each time without
// answering for 10s after the restart before it needed the next (systemd's
// StartLimitBurst=5 in StartLimitIntervalSec=10s), is in a crash loop: its
// next restarts wait a second, doubling up to a minute.
var restartLoop = CrashLoopPolicy{Burst: 5, Stable: 10 * time.Second, Base: time.Second, Cap: time.Minute}

// RestartPolicy says when the engine asks for a restart. Restarts are
// leased: one in flight per backend, each lasting Lease or until the backend
// is healthy again; an expired lease is requested again, with backoff.
type RestartPolicy struct {
	Restarter Restarter
	// After: a hung backend is restarted once it has not answered for this
	// long (counted from its last good answer). Default 1s.
	After time.Duration
	// Lease: how long one restart may take. Default 30s.
	Lease time.Duration
	// MaxRestarting: most backends restarting at once. Default half the
	// pool, at least 1.
	MaxRestarting int
	// Crashed: also restart backends whose process is gone. Off when the
	// supervisor restarts exited processes by itself.
	Crashed bool
}

// SetRestartPolicy installs (or, with a nil Restarter, removes) the restart
// policy. The latest call wins: a reloaded config installs its own.
func (p *Pool) SetRestartPolicy(rp RestartPolicy) {
	if rp.After == 0 {
		rp.After = DefaultRestartAfter
	}
	if rp.Lease == 0 {
		rp.Lease = DefaultRestartLease
	}
	if rp.MaxRestarting == 0 {
		rp.MaxRestarting = max(1, len(p.backends)/2)
	}
	p.mu.Lock()
	p.policy = rp
	p.mu.Unlock()
	p.wakeRestarts()
}

func (p *Pool) wakeRestarts() {
	select {
	case p.restartWake <- struct{}{}:
	default:
	}
}

// superviseRestarts runs the restart policy and timed transitions (lease
// expiry, end of probation). It wakes on every transition and on the
// earliest deadline.
func (p *Pool) superviseRestarts() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := p.restartRound(time.Now())
		t.Reset(wait)
		select {
		case <-p.ctx.Done():
			return
		case <-p.restartWake:
		case <-t.C:
		}
	}
}

// restartRound takes the timed decisions due at now and returns how long
// until the next one may be due.
func (p *Pool) restartRound(now time.Time) time.Duration {
	type request struct {
		b        *Backend
		reason   Reason
		lastGood time.Time
		lease    uint64
	}
	var requests []request
	type loop struct {
		b    *Backend
		runs int
		wait time.Duration
	}
	var loops []loop // backends in a crash loop, to be logged
	next := time.Hour
	due := func(at time.Time) {
		if d := at.Sub(now); d < next {
			next = max(d, time.Millisecond)
		}
	}
	p.mu.Lock()
	pol := p.policy
	restarting := 0
	for _, b := range p.backends {
		if b.state == Restarting {
			restarting++
		}
	}
	for _, b := range p.backends {
		if b.state == Probation {
			if end := b.since.Add(time.Duration(p.slowStart.Load())); !now.Before(end) {
				p.apply(b, inSlowStartOver, nil)
			} else {
				due(end)
			}
		}
		switch {
		case b.state == Restarting:
			if !now.Before(b.leaseUntil) {
				p.apply(b, inLeaseExpired, fmt.Errorf("not back %v after the restart request", pol.Lease))
				restarting--
			} else {
				due(b.leaseUntil)
			}
		case pol.Restarter != nil && p.wantsRestart(b, pol):
			if at := b.lastAnswer().Add(pol.After); b.reason == Hang && now.Before(at) {
				due(at)
				continue
			}
			if now.Before(b.restartAt) {
				due(b.restartAt)
				continue
			}
			if restarting >= pol.MaxRestarting {
				continue // woken again when a restart ends
			}
			restarting++
			// the run since the last restart: until its last answer
			if wait := b.loop.Ended(b.restartedAt, b.lastAnswer()); wait > 0 {
				b.restartAt = now.Add(wait)
				runs, _ := b.loop.Runs()
				loops = append(loops, loop{b, runs, wait})
			}
			b.lease++
			b.leaseUntil = now.Add(pol.Lease)
			b.restartedAt = now
			p.apply(b, inRestart, nil)
			due(b.leaseUntil)
			requests = append(requests, request{b, b.reason, b.lastAnswer(), b.lease})
		}
	}
	p.unlock()
	for _, l := range loops {
		p.logger().Warn("crash loop: backing off restarts", zap.String("backend", l.b.Addr),
			zap.Int("restarts_in_a_row", l.runs), zap.Duration("next_after", l.wait))
	}
	for _, r := range requests {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, pol.Lease)
			defer cancel()
			err := pol.Restarter.Restart(ctx, r.b, r.reason, r.lastGood)
			if err != nil && p.ctx.Err() == nil {
				p.restartFailed(r.b, r.lease, err)
			}
		}()
	}
	return next
}

// lastAnswer is when b last answered as expected, a heartbeat (under the
// lock or, steady, without: see observe) or a live request. Callers hold p.mu.
func (b *Backend) lastAnswer() time.Time {
	if last := max(b.answered.Load(), b.passedAt.Load()); last > b.lastGood.UnixNano() {
		return time.Unix(0, last)
	}
	return b.lastGood
}

// wantsRestart: a hang (or an expired restart), and a crash when the
// supervisor does not restart exits itself. Never a backend that answers
// its heartbeat (a bad status is an answer). Callers hold p.mu.
func (p *Pool) wantsRestart(b *Backend, pol RestartPolicy) bool {
	if b.passes > 0 {
		return false // answering now, on its way back
	}
	switch b.state {
	case Ejected:
		return b.reason == Hang || b.reason == LeaseExpired || (b.reason == Crash && pol.Crashed)
	case Healthy, Probation:
		return b.guarded == Hang
	}
	return false
}

// restartFailed puts a backend whose restart request failed back to wait,
// with backoff, unless a newer lease or a readmission came first. A
// *PeerRestart answer is no failure: b waits for the peer's (peerLease).
func (p *Pool) restartFailed(b *Backend, lease uint64, err error) {
	var peer *PeerRestart
	if errors.As(err, &peer) {
		p.peerLease(b, lease, peer)
		return
	}
	now := time.Now()
	p.mu.Lock()
	if b.state == Restarting && b.lease == lease {
		if at := now.Add(restartRetry); at.After(b.restartAt) {
			b.restartAt = at
		}
		p.apply(b, inRestartFailed, fmt.Errorf("restart request failed: %w", err))
	}
	p.unlock()
	if errors.Is(err, ErrRestartBudget) {
		p.logger().Info("restart waits for the pool's restart budget", zap.String("backend", b.Addr), zap.Error(err))
	} else {
		p.logger().Error("restart request failed; will retry", zap.String("backend", b.Addr), zap.Error(err))
	}
	p.wakeRestarts()
}

// RetryAfter is when a client told "no backend" should come back: the time
// restarts have been taking, else one heartbeat round.
func (p *Pool) RetryAfter() time.Duration {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	best := time.Duration(-1)
	for _, b := range p.backends {
		if b.state == Restarting && p.restartTook > 0 {
			left := b.restartedAt.Add(p.restartTook).Sub(now)
			if best < 0 || left < best {
				best = max(left, 0)
			}
		}
	}
	if best < 0 {
		best = p.cfg.Interval * time.Duration(p.cfg.Passes)
	}
	return best
}
