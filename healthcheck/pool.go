package healthcheck

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Pool is a set of backends probed with one Config. All state transitions
// of all its backends happen under one mutex, in observe: transitions are
// rare, and one lock makes the panic guard exact.
type Pool struct {
	id       uint64
	cfg      Config
	backends []*Backend
	log      *zap.Logger

	mu        sync.Mutex
	inService int
	// ready is closed and replaced whenever a backend enters service; read
	// without the lock on every request
	ready atomic.Pointer[chan struct{}]
	// pending transitions, made under mu, delivered by deliver after it
	hook    func(Transition)
	pending []Transition
	// delivering: one deliverer at a time keeps transitions in order
	delivering sync.Mutex
	// the restart policy and what it learnt (restart.go)
	policy RestartPolicy
	// restartTook is how long restarts have taken, request to readmission:
	// a moving average, 0 until one was seen
	restartTook time.Duration
	restartWake chan struct{}

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	closed  bool
}

// NewPool makes a pool of backends at addrs (host:port). Nothing runs until
// Start.
func NewPool(addrs []string, cfg Config, log *zap.Logger) *Pool {
	if log == nil {
		log = zap.NewNop()
	}
	p := &Pool{
		id:          poolIDs.Add(1),
		cfg:         cfg.WithDefaults(),
		log:         log,
		restartWake: make(chan struct{}, 1),
	}
	ready := make(chan struct{})
	p.ready.Store(&ready)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	now := time.Now()
	for i, a := range addrs {
		p.backends = append(p.backends, &Backend{
			Addr: a, Index: i, pool: p, since: now, lastGood: now,
			kick: make(chan struct{}, 1),
		})
	}
	return p
}

var poolIDs atomic.Uint64

// ID is unique per pool in this process.
func (p *Pool) ID() uint64 { return p.id }

// Config is the pool's configuration with defaults applied.
func (p *Pool) Config() Config { return p.cfg }

// Backends returns the pool's backends, in the order given to NewPool.
func (p *Pool) Backends() []*Backend { return p.backends }

// Start launches one prober per backend; each beats at once.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.superviseRestarts()
	}()
	for _, b := range p.backends {
		pr := newProber(p, b)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			pr.run()
		}()
	}
}

// Close stops the probers and waits for them to end.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
}

// OnTransition makes f receive every transition from now on, in order, after
// it is logged; it replaces an earlier f. f runs without the pool's lock, on
// whichever engine goroutine delivers the transition, so it must be quick;
// it may call the pool.
func (p *Pool) OnTransition(f func(Transition)) {
	p.mu.Lock()
	p.hook = f
	p.mu.Unlock()
}

// Ready returns a channel that is closed the next time any backend enters
// service. Take it before looking for a backend, then wait on it: a
// readmission in between closes the channel you hold, so no wake-up is lost.
func (p *Pool) Ready() <-chan struct{} { return *p.ready.Load() }

// InService counts the backends in service now.
func (p *Pool) InService() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inService
}

// Snapshot is a backend's state at one moment.
type Snapshot struct {
	Addr     string    `json:"address"`
	State    State     `json:"state"`
	Reason   Reason    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	Beats    uint64    `json:"beats"`
	InFlight int       `json:"in_flight"`
}

// Snapshot returns every backend's state, in pool order.
func (p *Pool) Snapshot() []Snapshot {
	out := make([]Snapshot, len(p.backends))
	p.mu.Lock()
	for i, b := range p.backends {
		out[i] = Snapshot{Addr: b.Addr, State: b.state, Reason: b.reason, Since: b.since}
	}
	p.mu.Unlock()
	for i, b := range p.backends {
		out[i].Beats = b.beats.Load()
		out[i].InFlight = b.InFlight()
	}
	return out
}

// observe is the state machine: it applies one piece of evidence about b.
func (p *Pool) observe(b *Backend, e Evidence, cause error) {
	// a missed beat while live requests wait longer than a beat may take
	// is two witnesses of a hang: do not wait for the next beat to agree
	stuck := e == Miss && b.stuck(p.cfg.Timeout)
	p.mu.Lock()
	var rescue, guarded bool
	switch e {
	case Pass:
		b.fails = 0
		b.passes++
		b.guarded = ReasonNone
		b.lastGood = time.Now()
		need := p.cfg.Passes
		if b.state == Unknown {
			need = 1 // a backend that has never failed needs no proof of recovery
		}
		if !b.state.InService() && b.passes >= need {
			p.admit(b)
		}
	case Miss, WrongStatus, Timeout:
		b.passes = 0
		b.fails++
		reason := Hang
		if e == WrongStatus {
			reason = BadStatus
		}
		switch {
		case b.state == Unknown && b.fails >= p.cfg.Fails:
			p.eject(b, reason, cause)
		case b.state.InService() && (b.fails >= p.cfg.Fails || e == Timeout || stuck):
			rescue, guarded = p.ejectGuarded(b, reason, cause)
		}
	case Gone:
		b.passes = 0
		b.fails++
		// also when already out for another reason: the process is gone
		// now, which is what a supervisor needs to know
		if b.state == Unknown || b.state.InService() || (b.state == Ejected && b.reason != Crash) {
			p.eject(b, Crash, cause)
		}
	}
	p.unlock()
	if guarded {
		p.log.Error("panic guard: keeping the last backend in service despite failed health checks; check health_uri and the network",
			zap.String("backend", b.Addr), zap.Stringer("evidence", e), zap.Error(cause))
	}
	if rescue {
		if n := b.rescue(); n > 0 {
			p.log.Info("replaying requests in flight on a hung backend",
				zap.String("backend", b.Addr), zap.Int("requests", n))
		}
	}
}

// admit is the transition into service: unknown → healthy, and ejected or
// restarting → probation (with slow start) or healthy.
func (p *Pool) admit(b *Backend) {
	b.gen.Add(1)
	if b.state == Restarting {
		took := time.Since(b.restartedAt)
		if p.restartTook == 0 {
			p.restartTook = took
		} else {
			p.restartTook = (3*p.restartTook + took) / 4
		}
	}
	to := Healthy
	if p.cfg.SlowStart > 0 && b.state != Unknown {
		to = Probation
	}
	p.set(b, to, ReasonNone, nil) // in service before waiters wake
	next := make(chan struct{})
	close(*p.ready.Swap(&next))
}

// eject is the transition out of service, whatever the evidence.
func (p *Pool) eject(b *Backend, r Reason, cause error) {
	p.set(b, Ejected, r, cause)
}

// ejectGuarded ejects b on evidence that does not prove its process gone,
// unless b is the last backend in service: heartbeat misses alone must never
// take the whole pool out (a wrong health path or a slow network would then
// be a total outage). It reports whether b was ejected for a hang, and
// whether the guard just engaged (to be logged once the lock is released).
func (p *Pool) ejectGuarded(b *Backend, r Reason, cause error) (rescue, guarded bool) {
	if p.inService <= 1 {
		if b.guarded == ReasonNone {
			b.guarded = r
			p.wakeRestarts() // kept in, but maybe to be restarted
			return false, true
		}
		return false, false
	}
	p.eject(b, r, cause)
	return r == Hang, false
}

// set records a transition, to be delivered once p.mu is released (see
// deliver). Callers hold p.mu.
func (p *Pool) set(b *Backend, to State, r Reason, cause error) {
	from := b.state
	if from == to && b.reason == r {
		return
	}
	now := time.Now()
	b.state, b.reason, b.since = to, r, now
	if from.InService() != to.InService() {
		b.inService.Store(to.InService())
		if to.InService() {
			p.inService++
		} else {
			p.inService--
		}
	}
	if to == Probation {
		b.probation.Store(now.UnixNano())
	} else if from == Probation {
		b.probation.Store(0)
	}
	p.wakeRestarts()
	t := Transition{Backend: b.Addr, Index: b.Index, From: from, To: to, Reason: r, At: now}
	if cause != nil {
		t.Cause = cause.Error()
	}
	p.pending = append(p.pending, t)
}

// unlock releases p.mu and delivers the transitions made under it.
func (p *Pool) unlock() {
	has := len(p.pending) > 0
	p.mu.Unlock()
	if has {
		p.deliver(false)
	}
}

// deliver logs the pending transitions and hands them to the hook, in
// order, with p.mu released. A caller that finds another delivering leaves
// its transitions to it (the other loops until none is pending), unless
// wait is set: then it returns only once all pending ones are delivered.
func (p *Pool) deliver(wait bool) {
	for {
		if wait {
			p.delivering.Lock()
		} else if !p.delivering.TryLock() {
			return
		}
		p.mu.Lock()
		ts, hook := p.pending, p.hook
		p.pending = nil
		p.mu.Unlock()
		for _, t := range ts {
			if t.To == Ejected {
				p.log.Warn("backend ejected", zap.String("backend", t.Backend),
					zap.Stringer("reason", t.Reason), zap.String("cause", t.Cause))
			} else {
				p.log.Info("backend state", zap.String("backend", t.Backend),
					zap.Stringer("from", t.From), zap.Stringer("to", t.To), zap.Stringer("reason", t.Reason))
			}
			if hook != nil {
				hook(t)
			}
		}
		p.delivering.Unlock()
		p.mu.Lock()
		more := len(p.pending) > 0
		p.mu.Unlock()
		if !more {
			return
		}
	}
}
