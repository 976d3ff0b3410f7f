package healthcheck

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Peers are other instances (other processes, other hosts) that front the
// same backends with pools of their own and share their restarts through a
// store the engine knows nothing of (caddymodule/cluster). The engine takes
// two things from them:
//   - a Restarter may answer that a peer restarts b already (*PeerRestart):
//     b stays restarting here, as if this instance had asked, until the
//     peer's lease ends;
//   - PeerRestarted: a peer asked for b's restart; newer than this
//     instance's last good answer from b, the fault is in hand: b leaves
//     service at once (the input "peer restart" of the transition table).

// PeerRestart is a Restarter's answer when it did not ask for a restart
// because a peer has b's restart in hand: it holds the lease (requested at
// Since, running until Until), or it asked after this instance's last good
// answer from b. b stays restarting until Until (or its own lease, if
// Until has passed), or until it answers.
type PeerRestart struct {
	Holder       string
	Since, Until time.Time
}

func (e *PeerRestart) Error() string {
	return fmt.Sprintf("%s asked for its restart at %s (lease until %s)", e.Holder,
		e.Since.Format(time.RFC3339Nano), e.Until.Format(time.RFC3339Nano))
}

// ErrRestartBudget is a Restarter's answer when max_restarting backends of
// the pool are restarting across the instances that share it: the restart
// is retried later, as a failed one, logged without alarm.
var ErrRestartBudget = errors.New("max_restarting backends are restarting across the instances sharing the pool")

// peerFact is a peer's restart of b being applied (PeerRestarted): set
// under pool.mu just before apply takes the input.
type peerFact struct {
	since, until time.Time
	reason       Reason
}

// PeerRestarted tells the pool that a peer asked for b's restart at since
// (for reason), its lease running until until; took is the peer's estimate
// of how long restarts take (0: none), which seeds this pool's RetryAfter
// when it has none. It reports whether b left service or stopped waiting
// for a restart of its own. A request no newer than this instance's last
// good answer from b is stale (b answered since) and changes nothing; a
// fact never readmits: only a heartbeat does.
func (p *Pool) PeerRestarted(b *Backend, since, until time.Time, reason Reason, took time.Duration, holder string) bool {
	p.mu.Lock()
	if took > 0 && p.restartTook == 0 {
		p.restartTook = took
	}
	from := b.state
	b.peer = peerFact{since, until, reason}
	p.apply(b, inPeerRestart, fmt.Errorf("%s asked for its restart", holder))
	moved := b.state != from
	p.unlock()
	return moved
}

// peerRestart is apply's cell for inPeerRestart. Callers hold p.mu.
func (p *Pool) peerRestart(b *Backend, cause error) {
	f := b.peer
	now := time.Now()
	if !f.since.After(b.lastAnswer()) || !now.Before(f.until) {
		return // stale, or over: b's own heartbeats tell
	}
	switch s := b.state; {
	case s == Restarting:
		if f.until.After(b.leaseUntil) {
			b.leaseUntil = f.until // the peer's lease is the cluster's
		}
		return
	case !s.InService() && s != Ejected && s != Suspected, s == Ejected && b.reason == BadStatus:
		return // unknown, draining, maint; or answering here, never restarted
	}
	// a restart in a row, as if this instance had asked: the crash-loop
	// backoff of every instance counts the same restarts
	if wait := b.loop.Ended(b.restartedAt, b.lastAnswer()); wait > 0 {
		b.restartAt = now.Add(wait)
	}
	b.lease++ // a restart request of this instance in flight is superseded
	b.leaseUntil, b.restartedAt = f.until, f.since
	r := b.reason // ejected: its own reason
	if b.state != Ejected {
		switch r = f.reason; r {
		case Hang, Crash, LeaseExpired:
		default:
			r = Crash // an operator's replacement: the process goes away
		}
	}
	p.set(b, Restarting, r, cause)
}

// peerLease applies a Restarter's *PeerRestart answer to the request of
// lease: b waits for the peer's restart, not one of its own.
func (p *Pool) peerLease(b *Backend, lease uint64, pr *PeerRestart) {
	p.mu.Lock()
	if b.state == Restarting && b.lease == lease && time.Now().Before(pr.Until) {
		b.leaseUntil, b.restartedAt = pr.Until, pr.Since
	}
	p.mu.Unlock()
	p.wakeRestarts()
	p.logger().Info("a peer has the restart in hand", zap.String("backend", b.Addr), zap.Error(pr))
}

// RestartTook is how long restarts of the pool have taken, request to
// first good answer (a moving average; 0 until one was seen): shared with
// peers for their Retry-After.
func (p *Pool) RestartTook() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restartTook
}
