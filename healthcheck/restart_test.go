//go:build unix

package healthcheck

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// procSupervisor restarts real child processes on their own address, the
// way a supervisor asked by a restarter would: SIGKILL, then start again.
type procSupervisor struct {
	tb      testing.TB
	mu      sync.Mutex
	kids    map[string]*child // by address
	calls   atomic.Int64
	delay   time.Duration // before the new process starts
	noop    atomic.Bool   // accept requests and do nothing
	failing atomic.Int64  // fail this many requests first
	wg      sync.WaitGroup
	stop    chan struct{}
	serial  sync.Mutex    // one restart at a time, as a real supervisor does
	started chan struct{} // closed and replaced when a child is registered
}

func newProcSupervisor(tb testing.TB) *procSupervisor {
	s := &procSupervisor{tb: tb, kids: map[string]*child{}, stop: make(chan struct{}), started: make(chan struct{})}
	tb.Cleanup(func() { // runs last, after the pool's Close
		close(s.stop)
		s.wg.Wait()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.kids {
			c.end()
		}
	})
	return s
}

// start runs a child on a fixed free loopback port.
func (s *procSupervisor) start(addr string) *child {
	c := newChild(s.tb, addr)
	s.mu.Lock()
	s.kids[addr] = c
	close(s.started)
	s.started = make(chan struct{})
	s.mu.Unlock()
	return c
}

// replaced waits until the child at old's address is another one: the new
// process may answer heartbeats before the supervisor has registered it.
func (s *procSupervisor) replaced(tb testing.TB, old *child) *child {
	tb.Helper()
	for {
		s.mu.Lock()
		c, started := s.kids[old.addr], s.started
		s.mu.Unlock()
		if c != old {
			return c
		}
		select {
		case <-started:
		case <-timeout():
			tb.Fatalf("%s was not restarted", old.addr)
		}
	}
}

func (s *procSupervisor) kid(addr string) *child {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kids[addr]
}

func (s *procSupervisor) Restart(_ context.Context, b *Backend, _ Reason, _ time.Time) error {
	s.calls.Add(1)
	if s.failing.Add(-1) >= 0 {
		return fmt.Errorf("supervisor unavailable")
	}
	if s.noop.Load() {
		return nil
	}
	s.wg.Add(1)
	go func() { // the request returns; the restart goes on
		defer s.wg.Done()
		s.serial.Lock()
		defer s.serial.Unlock()
		if old := s.kid(b.Addr); old != nil {
			old.end()
		}
		select {
		case <-time.After(s.delay):
			s.start(b.Addr)
		case <-s.stop:
		}
	}()
	return nil
}

func restartConfig() Config {
	return Config{Path: "/health", Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond}
}

// pairUnder starts two backends under sup, a pool over them with the given
// config (restartConfig when zero) and restart policy, and waits until both
// are healthy. Backend 0 is the one the tests break.
func pairUnder(t *testing.T, sup *procSupervisor, pol RestartPolicy, cfg Config) (*child, *Pool, *recorder) {
	t.Helper()
	if reflect.DeepEqual(cfg, Config{}) { // Config holds a header map: not comparable
		cfg = restartConfig()
	}
	a, b := freeAddr(t), freeAddr(t)
	ca := sup.start(a)
	sup.start(b)
	p, rec := newPool(t, []string{a, b}, cfg)
	pol.Restarter = sup
	p.SetRestartPolicy(pol)
	p.Start()
	rec.healthy(0)
	rec.healthy(1)
	return ca, p, rec
}

func TestHungBackendIsRestarted(t *testing.T) {
	sup := newProcSupervisor(t)
	ca, p, rec := pairUnder(t, sup, RestartPolicy{After: 200 * time.Millisecond, Lease: 10 * time.Second}, Config{})

	stopped := time.Now()
	ca.signal(t, syscall.SIGSTOP)
	rec.ejected(0, Hang)
	rs := rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	// restart_after counts from the last good answer, at most a beat
	// before the process froze
	assert.GreaterOrEqual(t, rs.At.Sub(stopped), 200*time.Millisecond-restartConfig().Interval)
	back := rec.healthy(0)
	assert.Equal(t, Restarting, back.From)
	assert.EqualValues(t, 1, sup.calls.Load(), "one restart request")
	assert.NotEqual(t, ca.pid(), sup.replaced(t, ca).pid(), "a new process serves")
	assert.Positive(t, p.RetryAfter(), "a restart time was learnt")
}

func TestCrashedBackendLeftToItsSupervisor(t *testing.T) {
	sup := newProcSupervisor(t)
	ca, p, rec := pairUnder(t, sup, RestartPolicy{After: 10 * time.Millisecond}, Config{})

	ca.end() // SIGKILL: the process is gone; its supervisor restarts exits itself
	rec.ejected(0, Crash)
	bk := p.Backends()[0]
	seen := bk.beats.Load()
	deadline := time.Now().Add(wait)
	for bk.beats.Load() < seen+10 { // ten more beats find it still gone
		require.True(t, time.Now().Before(deadline), "beats stopped")
		time.Sleep(5 * time.Millisecond)
	}
	assert.Zero(t, sup.calls.Load(), "no restart request for a crash")
	st, reason, _ := bk.State()
	assert.Equal(t, Ejected, st)
	assert.Equal(t, Crash, reason)

	p.SetRestartPolicy(RestartPolicy{Restarter: sup, Crashed: true})
	rec.waitFor(0, wait, "restarting", to(0, Restarting, Crash))
	rec.healthy(0)
	assert.EqualValues(t, 1, sup.calls.Load())
}

func TestRestartLeaseExpiresAndIsRequestedAgain(t *testing.T) {
	sup := newProcSupervisor(t)
	sup.noop.Store(true) // the supervisor says yes and does nothing
	ca, _, rec := pairUnder(t, sup, RestartPolicy{After: 10 * time.Millisecond, Lease: 200 * time.Millisecond}, Config{})

	ca.signal(t, syscall.SIGSTOP)
	first := rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	exp := rec.waitFor(0, wait, "lease expired", to(0, Ejected, LeaseExpired))
	assert.GreaterOrEqual(t, exp.At.Sub(first.At), 190*time.Millisecond, "the lease lasted")
	rec.waitFor(0, wait, "restarting again", to(0, Restarting, LeaseExpired))
	sup.noop.Store(false) // now it works: a request brings it back
	rec.healthy(0)
	assert.GreaterOrEqual(t, sup.calls.Load(), int64(2), "requested again after the lease")
}

func TestRestartBudget(t *testing.T) {
	sup := newProcSupervisor(t)
	sup.delay = 300 * time.Millisecond
	var addrs []string
	var kids []*child
	for range 4 {
		a := freeAddr(t)
		addrs = append(addrs, a)
		kids = append(kids, sup.start(a))
	}
	p, rec := newPool(t, addrs, restartConfig())
	p.SetRestartPolicy(RestartPolicy{Restarter: sup, After: 10 * time.Millisecond}) // budget: half of 4
	p.Start()
	for i := range addrs {
		rec.healthy(i)
	}
	for _, c := range kids[:3] {
		c.signal(t, syscall.SIGSTOP)
	}
	for i := range 3 {
		rec.waitFor(i, 10*time.Second, "back", func(tr Transition) bool { return tr.Index == i && tr.From == Restarting && tr.To == Healthy })
	}
	rec.flush()
	restarting, most := 0, 0
	for _, tr := range rec.list() {
		if tr.To == Restarting {
			restarting++
		}
		if tr.From == Restarting {
			restarting--
		}
		most = max(most, restarting)
	}
	assert.Equal(t, 2, most, "at most half the pool restarting at once:%s", rec)
	assert.EqualValues(t, 3, sup.calls.Load())
}

func TestFailedRestartRequestIsRetried(t *testing.T) {
	sup := newProcSupervisor(t)
	sup.failing.Store(1)
	ca, _, rec := pairUnder(t, sup, RestartPolicy{After: 10 * time.Millisecond}, Config{})
	ca.signal(t, syscall.SIGSTOP)
	r1 := rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	back := rec.waitFor(0, wait, "back to waiting", to(0, Ejected, Hang))
	r2 := rec.waitFor(0, wait, "restarting again", to(0, Restarting, Hang))
	assert.Contains(t, back.Cause, "supervisor unavailable")
	assert.GreaterOrEqual(t, r2.At.Sub(r1.At), restartRetry, "retried after a while")
	rec.healthy(0)
	assert.EqualValues(t, 2, sup.calls.Load())
}

func TestCrashLoopBacksOff(t *testing.T) {
	sup := newProcSupervisor(t)
	sup.noop.Store(true) // restarts that never bring the backend back
	ca, _, rec := pairUnder(t, sup, RestartPolicy{Crashed: true, Lease: 50 * time.Millisecond}, Config{})
	ca.end()
	burst := restartLoop.Burst
	for range burst + 1 {
		rec.waitFor(0, 5*time.Second, "restarting", to(0, Restarting, anyReason))
	}
	rec.flush()
	var times []time.Time
	for _, tr := range rec.list() {
		if tr.Index == 0 && tr.To == Restarting {
			times = append(times, tr.At)
		}
	}
	require.GreaterOrEqual(t, len(times), burst+1)
	// the first burst goes at the pace of the lease; then backoff starts
	assert.Less(t, times[burst-1].Sub(times[0]), restartLoop.Stable)
	assert.GreaterOrEqual(t, times[burst].Sub(times[burst-1]), restartLoop.Base,
		"after %d restarts in %v the next waits", burst, restartLoop.Stable)
}

func TestGuardedHungLastBackendIsRestarted(t *testing.T) {
	sup := newProcSupervisor(t)
	a := freeAddr(t)
	ca := sup.start(a)
	p, rec := newPool(t, []string{a}, restartConfig())
	p.SetRestartPolicy(RestartPolicy{Restarter: sup, After: 100 * time.Millisecond})
	p.Start()
	rec.healthy(0)
	ca.signal(t, syscall.SIGSTOP)
	// the panic guard keeps it in service, but it does not answer
	rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	rec.healthy(0)
	assert.NotEqual(t, ca.pid(), sup.replaced(t, ca).pid())
}

func TestSlowStartProbation(t *testing.T) {
	sup := newProcSupervisor(t)
	a, b := freeAddr(t), freeAddr(t)
	ca := sup.start(a)
	sup.start(b)
	cfg := restartConfig()
	cfg.SlowStart = 300 * time.Millisecond
	p, rec := newPool(t, []string{a, b}, cfg)
	p.SetRestartPolicy(RestartPolicy{Restarter: sup, Crashed: true})
	p.Start()
	assert.Equal(t, Healthy, rec.healthy(0).To, "no slow start at startup")
	rec.healthy(1)
	bk := p.Backends()[0]
	assert.InDelta(t, 1.0, bk.Share(time.Now()), 0)

	ca.end()
	rec.ejected(0, Crash)
	pr := rec.waitFor(0, wait, "probation", to(0, Probation, ReasonNone))
	assert.True(t, bk.InService(), "in service during probation")
	assert.InDelta(t, 0.1, bk.Share(pr.At), 0.001, "starts at 10%")
	assert.InDelta(t, 0.5, bk.Share(pr.At.Add(150*time.Millisecond)), 0.001, "ramps linearly")
	end := rec.waitFor(0, wait, "healthy", to(0, Healthy, ReasonNone))
	assert.GreaterOrEqual(t, end.At.Sub(pr.At), cfg.SlowStart)
	assert.InDelta(t, 1.0, bk.Share(time.Now()), 0)
}

// fakePair starts f answering 200 and another backend, a pool over them
// with restart policy pol whose restarter records the reasons it is asked
// for on the returned channel and then runs restart on f (given f, not
// closed over it: the variable the caller assigns is written after the
// pool starts); both are healthy.
func fakePair(t *testing.T, pol RestartPolicy, restart func(*fakeProc)) (*fakeProc, *backend, *Pool, *recorder, chan Reason) {
	t.Helper()
	f := newFakeProc(t)
	f.up(http.StatusOK)
	other := newBackend(t)
	p, rec := newPool(t, []string{f.addr, other.addr()}, restartConfig())
	calls := make(chan Reason, 100)
	pol.Restarter = restarterFunc(func(_ context.Context, _ *Backend, r Reason, _ time.Time) error {
		calls <- r
		restart(f)
		return nil
	})
	p.SetRestartPolicy(pol)
	p.Start()
	rec.healthy(0)
	rec.healthy(1)
	return f, other, p, rec, calls
}

// A crashed backend whose process comes back hung is a hang, and is
// restarted, though crashes are left to the supervisor.
func TestCrashedBackendThatHangsIsRestarted(t *testing.T) {
	f, _, _, rec, calls := fakePair(t, RestartPolicy{After: 10 * time.Millisecond},
		func(f *fakeProc) { f.up(http.StatusOK) })
	f.down()
	rec.ejected(0, Crash)
	f.up(0) // back, and hung
	tr := rec.ejected(0, Hang)
	assert.Equal(t, Ejected, tr.From)
	rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	assert.Equal(t, Restarting, rec.healthy(0).From)
	assert.Equal(t, Hang, <-calls)
	assert.Empty(t, calls, "one restart request")
}

// A restarted backend that answers its heartbeat with a bad status is
// back, alive: it is ejected for the bad status and never restarted again,
// however long its restart lease was.
func TestRestartedBackendAnsweringBadStatusIsNotRestarted(t *testing.T) {
	f, other, _, rec, calls := fakePair(t, RestartPolicy{After: 10 * time.Millisecond, Lease: 200 * time.Millisecond},
		func(f *fakeProc) { f.up(http.StatusInternalServerError) })
	f.up(0) // hangs
	rec.ejected(0, Hang)
	rec.waitFor(0, wait, "restarting", to(0, Restarting, Hang))
	tr := rec.ejected(0, BadStatus)
	assert.Equal(t, Restarting, tr.From, "the answer ended the restart")
	// ten beats of the other backend: more than twice the lease
	other.awaitHits(t, other.hits.Load()+10)
	f.hits.Store(0)
	other.awaitHits(t, other.hits.Load()+10)
	assert.Positive(t, f.hits.Load(), "beats went on")
	rec.flush()
	var after []Transition
	for _, x := range rec.list() {
		if x.Index == 0 && x.At.After(tr.At) {
			after = append(after, x)
		}
	}
	assert.Empty(t, after, "transitions:%s", rec)
	assert.Equal(t, Hang, <-calls)
	assert.Empty(t, calls, "one restart request")
}

// A drained backend's process may exit (gracefully): heartbeats go on and
// are counted, but it is neither ejected nor restarted, even with
// restart_crashed; Return brings it back through unknown.
func TestDrainedBackendExitIsNotACrash(t *testing.T) {
	f, other, p, rec, calls := fakePair(t, RestartPolicy{After: 10 * time.Millisecond, Crashed: true},
		func(f *fakeProc) { f.up(http.StatusOK) })
	b := p.Backends()[0]
	p.Drain(b)
	rec.waitFor(0, wait, "draining", to(0, Draining, Manual))
	f.down()
	beats := b.beats.Load()
	other.awaitHits(t, other.hits.Load()+10) // ten beats of the other one
	assert.Greater(t, b.beats.Load(), beats+5, "heartbeats go on")
	requireState(t, b, Draining, Manual)
	assert.Empty(t, calls, "no restart")

	f.up(http.StatusOK)
	p.Return(b)
	tr := rec.healthy(0)
	assert.Equal(t, Unknown, tr.From)
	rec.flush()
	assert.Zero(t, rec.ejections(0), "transitions:%s", rec)
}
