package caddymodule

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// observer turns a pool's transitions into what operators see: metrics,
// Caddy events, and the log lines a pool emptying and recovering deserve.
// The engine calls transition in order, one at a time, so the fields only
// it touches need no lock.
type observer struct {
	pool *healthcheck.Pool
	name atomic.Pointer[string]
	log  atomic.Pointer[zap.Logger]
	// beats are the heartbeat metrics of the pool's name, resolved when
	// it is named: a beat costs an increment and an observation
	beats atomic.Pointer[beatMetrics]

	// per backend (its Index → *backendCounts), for the admin API: a
	// dynamic pool's members come and go
	counts sync.Map

	// restartOver, set before the pool starts, hears of every backend whose
	// restart is over here: back in service, or not restarting any more
	restartOver func(addr string)

	// touched by transition only
	inService  int
	wasServing bool
	restarting map[int]time.Time

	// events go out from one goroutine: an event handler (exec) may be
	// slow, and the engine must never wait for it
	events chan caddyEvent
	done   chan struct{}
	once   sync.Once
}

type caddyEvent struct {
	name string
	data map[string]any
}

// maxQueuedEvents bounds the events waiting to be emitted; past it they are
// dropped (and counted in the log), not queued without bound.
const maxQueuedEvents = 1024

func newObserver(p *healthcheck.Pool) *observer {
	o := &observer{
		pool:       p,
		restarting: make(map[int]time.Time),
		events:     make(chan caddyEvent, maxQueuedEvents),
		done:       make(chan struct{}),
	}
	o.setName("unnamed")
	o.log.Store(zap.NewNop())
	p.OnTransition(o.transition)
	p.OnBeat(o.beat)
	return o
}

// backendCounts are what the admin API shows of one backend's past.
type backendCounts struct {
	ejections [healthcheck.Manual + 1]atomic.Uint64
	replays   atomic.Uint64
	restarts  atomic.Uint64
}

// of returns the counts of the backend with Index i.
func (o *observer) of(i int) *backendCounts {
	if c, ok := o.counts.Load(i); ok {
		return c.(*backendCounts)
	}
	c, _ := o.counts.LoadOrStore(i, new(backendCounts))
	return c.(*backendCounts)
}

// forget drops what is kept of a backend that left the pool: its counts,
// and its metric series unless another member has its address.
func (o *observer) forget(b *healthcheck.Backend) {
	o.counts.Delete(b.Index)
	for _, m := range o.pool.Backends() {
		if m.Addr == b.Addr {
			return
		}
	}
	mEjections.DeletePartialMatch(prometheus.Labels{"pool": o.Name(), "backend": b.Addr})
}

// Name is the pool's name, as metrics, events and the admin API give it.
func (o *observer) Name() string { return *o.name.Load() }

// setName names the pool.
func (o *observer) setName(name string) {
	if old := o.name.Load(); old != nil && *old == name {
		return
	}
	bm := &beatMetrics{latency: mHeartbeatLatency.WithLabelValues(name)}
	for e := range bm.verdicts {
		bm.verdicts[e] = mHeartbeats.WithLabelValues(name, healthcheck.Evidence(e).String())
	}
	o.beats.Store(bm)
	o.name.Store(&name)
}

// beatMetrics are a pool's heartbeat counters by verdict, and latency.
type beatMetrics struct {
	verdicts [healthcheck.DrainAnnounced + 1]prometheus.Counter
	latency  prometheus.Observer
}

func (o *observer) beat(_ *healthcheck.Backend, e healthcheck.Evidence, took time.Duration) {
	bm := o.beats.Load()
	if int(e) < len(bm.verdicts) {
		bm.verdicts[e].Inc()
	}
	if e != healthcheck.Miss && e != healthcheck.Gone {
		bm.latency.Observe(took.Seconds())
	}
}

// start begins emitting events; a no-op after the first call.
func (o *observer) start() {
	o.once.Do(func() { go o.emit() })
}

// stop ends emitting events.
func (o *observer) stop() {
	o.once.Do(func() {}) // never start after a stop
	select {
	case <-o.done:
	default:
		close(o.done)
	}
}

func (o *observer) transition(t healthcheck.Transition) {
	name := o.Name()
	if t.To == healthcheck.Ejected {
		mEjections.WithLabelValues(name, t.Backend, t.Reason.String()).Inc()
		if t.Reason <= healthcheck.Manual {
			o.of(t.Index).ejections[t.Reason].Add(1)
		}
		if t.From.InService() {
			mEjectionDelay.WithLabelValues(name, t.Reason.String()).Observe(t.At.Sub(t.LastAnswer).Seconds())
		}
	}
	if t.From == healthcheck.Suspected && t.To.InService() {
		mFalseSuspicions.WithLabelValues(name, t.Backend).Inc()
	}
	if t.To == healthcheck.Restarting {
		o.restarting[t.Index] = t.At
	} else if since, ok := o.restarting[t.Index]; ok && t.From == healthcheck.Restarting {
		delete(o.restarting, t.Index)
		if t.To.InService() {
			mRestartDuration.WithLabelValues(name).Observe(t.At.Sub(since).Seconds())
		}
	}

	if o.restartOver != nil && (t.From == healthcheck.Restarting || t.To.InService() && !t.From.InService()) {
		o.restartOver(t.Backend)
	}

	data := map[string]any{"pool": name, "backend": t.Backend, "reason": t.Reason.String(),
		"from": t.From.String(), "to": t.To.String(), "cause": t.Cause}
	switch {
	case t.To == healthcheck.Ejected && t.From == healthcheck.Restarting && strings.HasPrefix(t.Cause, "restart request failed"):
		o.queue("failover.restart_failed", data)
	case t.To == healthcheck.Ejected:
		o.queue("failover.ejected", data)
	case t.To == healthcheck.Restarting:
		o.queue("failover.restart_requested", data)
	case t.To == healthcheck.Draining:
		o.queue("failover.draining", data)
	case t.To == healthcheck.Maint:
		o.queue("failover.maint", data)
	case t.To.InService() && !t.From.InService():
		o.queue("failover.readmitted", data)
	}

	if t.From.InService() == t.To.InService() {
		return
	}
	if t.To.InService() {
		o.inService++
		if o.inService == 1 && o.wasServing {
			o.log.Load().Info("pool recovered: a backend is in service again", zap.String("pool", name), zap.String("backend", t.Backend))
			o.queue("failover.pool_recovered", map[string]any{"pool": name, "backend": t.Backend})
		}
		o.wasServing = true
		return
	}
	o.inService--
	if o.inService == 0 {
		o.log.Load().Warn("pool empty: no backend in service; requests are held", zap.String("pool", name),
			zap.String("backend", t.Backend), zap.Stringer("reason", t.Reason))
		o.queue("failover.pool_empty", map[string]any{"pool": name, "backend": t.Backend, "reason": t.Reason.String()})
	}
}

func (o *observer) queue(name string, data map[string]any) {
	select {
	case o.events <- caddyEvent{name, data}:
	default:
		o.log.Load().Warn("event dropped: too many waiting to be emitted", zap.String("event", name))
	}
}

// emit hands queued events to the events app of the running config.
func (o *observer) emit() {
	for {
		select {
		case <-o.done:
			return
		case e := <-o.events:
			if em := emitter.Load(); em != nil {
				em.app.Emit(em.ctx, e.name, e.data)
			}
		}
	}
}

// eventSink is the events app of the config that started last: events
// of pools it shares with an older config go there.
type eventSink struct {
	ctx caddy.Context
	app *caddyevents.App
}

var emitter atomic.Pointer[eventSink]
