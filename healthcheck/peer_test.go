package healthcheck

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hungAndDue hangs b (backends 1 and 2 in service) and runs the restart
// policy once b's restart is due.
func hungAndDue(t *testing.T, r Restarter) (*Pool, *Backend, time.Time) {
	p, bs, _ := machine(t, 3, Config{Passes: 1, Fails: 1})
	p.SetRestartPolicy(RestartPolicy{Restarter: r, After: time.Second, Lease: 30 * time.Second, MaxRestarting: 3})
	feed(p, bs[1], Pass)
	feed(p, bs[2], Pass)
	b := bs[0]
	feed(p, b, Pass, Timeout)
	p.mu.Lock()
	at := b.lastAnswer().Add(time.Second + time.Millisecond)
	p.mu.Unlock()
	p.restartRound(at)
	return p, b, at
}

// leaseUntil polls b's lease end until it is want (the restarter's answer
// is applied on the engine's goroutine).
func waitLease(t *testing.T, p *Pool, b *Backend, want time.Time) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		got := b.leaseUntil
		p.mu.Unlock()
		if got.Equal(want) {
			return
		}
		require.True(t, time.Now().Before(deadline), "lease until %v, want %v", got, want)
		time.Sleep(time.Millisecond)
	}
}

// A restarter that answers "a peer has it in hand" leaves b restarting
// until the peer's lease ends, then the lease expires as its own would.
func TestPeerRestartAnswerBorrowsThePeersLease(t *testing.T) {
	var calls atomic.Int32
	since, until := time.Now(), time.Now().Add(2*time.Second)
	p, b, _ := hungAndDue(t, restarterFunc(func(context.Context, *Backend, Reason, time.Time) error {
		calls.Add(1)
		return &PeerRestart{Holder: "peer", Since: since, Until: until}
	}))
	waitLease(t, p, b, until)
	requireState(t, b, Restarting, Hang)
	p.restartRound(until.Add(-time.Millisecond))
	requireState(t, b, Restarting, Hang)
	p.SetRestartPolicy(RestartPolicy{}) // timers only from here
	p.restartRound(until)
	requireState(t, b, Ejected, LeaseExpired)
	require.Equal(t, int32(1), calls.Load())
}

// A full budget across peers is a restart to retry later, not a peer's.
func TestRestartBudgetAnswerRetries(t *testing.T) {
	done := make(chan struct{}, 1)
	before := time.Now()
	p, b, _ := hungAndDue(t, restarterFunc(func(context.Context, *Backend, Reason, time.Time) error {
		defer func() { done <- struct{}{} }()
		return ErrRestartBudget
	}))
	within(t, 5*time.Second, done, "the restart request")
	deadline := time.Now().Add(5 * time.Second)
	for st, _, _ := b.State(); st != Ejected; st, _, _ = b.State() {
		require.True(t, time.Now().Before(deadline), "still %v", st)
		time.Sleep(time.Millisecond)
	}
	requireState(t, b, Ejected, Hang)
	p.mu.Lock()
	retry := b.restartAt
	p.mu.Unlock()
	require.False(t, retry.Before(before.Add(restartRetry)), "retried after restartRetry")
}

// A peer's restarts count in the crash-loop backoff as this instance's
// own, and the peer's restart time seeds Retry-After.
func TestPeerRestartsCountForCrashLoopAndRetryAfter(t *testing.T) {
	p, bs, _ := machine(t, 3, Config{Passes: 1, Fails: 1})
	p.SetRestartPolicy(RestartPolicy{Restarter: &recordingRestarter{}, Lease: time.Minute, MaxRestarting: 3})
	feed(p, bs[1], Pass)
	b := bs[0]
	for i := range restartLoop.Burst {
		feed(p, b, Pass)
		require.True(t, p.PeerRestarted(b, time.Now(), time.Now().Add(time.Minute), Hang, 3*time.Second, "peer"))
		requireState(t, b, Restarting, Hang)
		if i == 0 {
			ra := p.RetryAfter()
			require.True(t, ra > 2*time.Second && ra <= 3*time.Second, "Retry-After %v from the peer's estimate", ra)
		}
	}
	p.mu.Lock()
	backoff := b.restartAt
	p.mu.Unlock()
	require.True(t, backoff.After(time.Now()), "in a crash loop after %d short runs", restartLoop.Burst)
}
