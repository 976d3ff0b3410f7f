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
	id  uint64
	cfg Config
	// backends, guarded by mu, is replaced whole on a change (members.go),
	// never changed in place; members publishes it for lock-free readers
	backends []*Backend
	members  atomic.Pointer[[]*Backend]
	// nextIndex is the Index of the next backend added
	nextIndex int
	// log and slowStart are settings a reload applies in place (Apply)
	log       atomic.Pointer[zap.Logger]
	slowStart atomic.Int64

	mu        sync.Mutex
	inService int
	// ready is closed and replaced whenever a backend enters service; read
	// without the lock on every request
	ready atomic.Pointer[chan struct{}]
	// pending transitions, made under mu, delivered by deliver after it
	hook    func(Transition)
	pending []Transition
	// onBeat is set by OnBeat (probe.go), before Start
	onBeat func(*Backend, Evidence, time.Duration)
	// sched sends the heartbeats, from Start on
	sched *scheduler
	// delivering: one deliverer at a time keeps transitions in order
	delivering sync.Mutex
	// the restart policy and what it learnt (restart.go)
	policy RestartPolicy
	// restartTook is how long restarts have taken, request to readmission:
	// a moving average, 0 until one was seen
	restartTook time.Duration
	restartWake chan struct{}
	// dog watches requests in flight for hangs (suspect.go)
	dog watchdog
	// allowRescue is the rescue budget (SetRescueBudget); nil: none
	allowRescue atomic.Pointer[func() bool]

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	closed  bool
}

// NewPool makes a pool of backends at addrs (host:port, or unix//path: see
// probeTarget). Nothing runs until Start.
func NewPool(addrs []string, cfg Config, log *zap.Logger) *Pool {
	if log == nil {
		log = zap.NewNop()
	}
	p := &Pool{
		id:          poolIDs.Add(1),
		cfg:         cfg.WithDefaults(),
		restartWake: make(chan struct{}, 1),
	}
	p.dog.init()
	p.log.Store(log)
	p.slowStart.Store(int64(cfg.SlowStart))
	ready := make(chan struct{})
	p.ready.Store(&ready)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	now := time.Now()
	for i, a := range addrs {
		p.backends = append(p.backends, &Backend{
			Addr: a, Index: i, pool: p, since: now, lastGood: now,
			loop: CrashLoop{CrashLoopPolicy: restartLoop},
		})
	}
	p.nextIndex = len(addrs)
	p.publish()
	return p
}

var poolIDs atomic.Uint64

// ID is unique per pool in this process.
func (p *Pool) ID() uint64 { return p.id }

// Config is the pool's configuration with defaults applied.
func (p *Pool) Config() Config { return p.cfg }

// Backends returns the pool's backends now: those given to NewPool, in
// their order, then those added (see Add). The slice is never changed.
func (p *Pool) Backends() []*Backend { return *p.members.Load() }

// Start launches the scheduler and one prober per backend; each beats at
// once (in a large pool, within an interval: see firstBeat).
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
	p.sched = newScheduler(p)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sched.run()
	}()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.watch()
	}()
	for _, b := range p.backends {
		p.startProbing(b)
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

// SetRescueBudget makes allow decide, for each replayable request in
// flight on a backend suspected or ejected for a hang, whether it is
// rescued (replayed on a peer at once): a budget of extra attempts keeps
// rescues from multiplying load during an overload. A request not let go
// waits on; if the backend is then ejected for the hang, it is abandoned
// (see Flight). allow must be quick and take no lock of the pool's. The
// latest call wins; nil: every one is rescued.
func (p *Pool) SetRescueBudget(allow func() bool) {
	if allow == nil {
		p.allowRescue.Store(nil)
		return
	}
	p.allowRescue.Store(&allow)
}

func (p *Pool) rescueBudget() func() bool {
	if f := p.allowRescue.Load(); f != nil {
		return *f
	}
	return nil
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
	Addr string `json:"address"`
	// Index is the backend's Index (unique in its pool)
	Index    int       `json:"-"`
	State    State     `json:"state"`
	Reason   Reason    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	Beats    uint64    `json:"beats"`
	InFlight int       `json:"in_flight"`
	Active   int       `json:"active"`
	// LastBeat is how long the last answered heartbeat took, in
	// nanoseconds; absent until one was answered.
	LastBeat time.Duration `json:"last_beat_ns,omitzero"`
	// LeaseUntil is when the current restart lease runs out; absent when
	// not restarting.
	LeaseUntil time.Time `json:"restart_lease_until,omitzero"`
}

// Snapshot returns every backend's state, in pool order.
func (p *Pool) Snapshot() []Snapshot {
	p.mu.Lock()
	backends := p.backends
	out := make([]Snapshot, len(backends))
	for i, b := range backends {
		out[i] = Snapshot{Addr: b.Addr, Index: b.Index, State: b.state, Reason: b.reason, Since: b.since}
		if b.state == Restarting {
			out[i].LeaseUntil = b.leaseUntil
		}
	}
	p.mu.Unlock()
	for i, b := range backends {
		out[i].Beats = b.beats.Load()
		out[i].InFlight = b.InFlight()
		out[i].Active = b.Active()
		out[i].LastBeat = time.Duration(b.lastBeat.Load())
	}
	return out
}

// Drain takes b out of service for an operator, from any state: no new
// requests, those in flight finish (see WaitIdle). Its heartbeats go on, but
// no evidence moves it and it is never restarted until Return.
func (p *Pool) Drain(b *Backend) { p.operate(b, inDrain) }

// Maint takes b out by hand for maintenance, on the same rules as Drain.
func (p *Pool) Maint(b *Backend) { p.operate(b, inMaint) }

// Return puts a draining or maintained backend back to the normal
// lifecycle: unknown, beaten at once, in service after its first good
// beat. It does nothing to a backend in another state.
func (p *Pool) Return(b *Backend) {
	if p.operate(b, inReturn) {
		b.Probe()
	}
}

// ReturnOnNewProcess returns a drained backend whose process is being
// replaced to the normal lifecycle once the replacement answers: at its
// first good heartbeat on a connection made after this call. The old
// process may go on answering until it exits (a supervisor stops it
// gracefully): its answers, on the connection it held, do not count. The
// next beat goes on a new connection (the one held may be to the
// replacement already), so the call must come once the old process has
// stopped listening: once the restarter has returned.
// A backend that is not draining is left as it is.
func (p *Pool) ReturnOnNewProcess(b *Backend) {
	p.mu.Lock()
	if b.state == Draining {
		b.awaitConn = b.conns.Load()
		if b.awaitConn == 0 {
			b.awaitConn = ^uint64(0) // no connection yet: any will do
		}
		// the held connection may be to the replacement already (a beat
		// connected between its start and this call): made before the
		// call, it would never count, and the prober keeps it
		b.renewConn.Store(true)
	}
	p.mu.Unlock()
	b.Probe()
}

// operate applies an operator's action and reports whether b moved.
func (p *Pool) operate(b *Backend, in input) bool {
	p.mu.Lock()
	from := b.state
	p.apply(b, in, nil)
	moved := b.state != from
	p.unlock()
	return moved
}

// WaitIdle returns once no request is in flight on b (see Acquire), or
// with ctx's error.
func (p *Pool) WaitIdle(ctx context.Context, b *Backend) error {
	b.idleMu.Lock()
	if b.idle == nil {
		b.idle = make(chan struct{})
		b.active.Add(idleWaited)
	}
	idle := b.idle
	b.idleMu.Unlock()
	if b.Active() == 0 {
		b.wakeIdle()
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
