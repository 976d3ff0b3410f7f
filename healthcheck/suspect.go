package healthcheck

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Suspicion tells a hang from a slow request in milliseconds, without
// waiting for heartbeats to time out twice.
//
// While requests are in flight (and only then: an idle pool has no
// watchdog running), the pool's watchdog looks at each backend in service
// every watchTick. A backend is worth a look when its longest-waiting
// request (any request, replayable or not) has waited longer than its
// silence threshold AND it answered nothing, neither a live request nor a
// heartbeat, for as long. The threshold adapts to the backend: the silences
// it shows while busy are learnt (a mean and a mean deviation, as phi
// accrual does with heartbeat intervals) and the threshold is mean +
// silenceDevs deviations, never below suspectFloor nor above a quarter of
// the heartbeat timeout. Silence is the right thing to learn, not request
// latency: a backend serving some legitimately slow requests still answers
// the others, while a frozen one answers nothing at all.
//
// Such a backend is asked directly: an urgent heartbeat, on a connection of
// its own (a frozen process's kernel still accepts), given urgentFactor
// times its usual heartbeat latency (at least urgentFloor). One that answers
// is only slow: it is left alone, and not asked again before twice the wait
// has passed (doubling while no live answer comes). One that does not is
// suspected (the input "suspect" of the transition table): out of service
// at once, unless nothing else is in service, and its replayable requests
// rescued to peers. It is then asked once more, given until it has been
// silent for confirmSilence (three quarters of the heartbeat timeout).
// That beat's answer clears the suspicion (a pause, a slow beat: counted
// as a false suspicion); its miss, a second witness, ejects it for a hang:
// the requests it still holds, which cannot be replayed, are abandoned
// (answered 502 at once; see Flight), and the usual restart policy
// follows. A backend silent that long with requests waiting, which missed
// two beats, is hung for its clients' purposes: waiting on until the
// restart (restart_after) would only make them wait for the same failure,
// and three quarters of the timeout keep a hang's cost to them under the
// timeout even for requests that began before it.
//
// Before a suspicion, a backend is already passed over by the selector
// while it is quiet (Quiet): requests wait on it and it has answered nothing
// for half its threshold, as of the watchdog's last look. A frozen backend
// then stops taking new requests within about 15ms; requests that could
// not be rescued (POSTs) stop going to it within a few milliseconds, as
// soon as it is hushed (Hushed: silent longer than usual, asked at the
// pick).
//
// The hot path pays nothing for this beyond what a request in flight
// already pays (Begin's timestamp), one atomic load in Begin that wakes the
// watchdog when it sleeps, and one in each selection (Quiet).
const (
	// suspectFloor is the least wait and silence that raise a suspicion:
	// a loaded machine's scheduling alone explains shorter ones.
	suspectFloor = 20 * time.Millisecond
	// silenceDevs: a silence beyond the mean plus this many mean
	// deviations is not one the backend usually shows.
	silenceDevs = 6
	// urgentFactor times the last heartbeat latency is the time an urgent
	// heartbeat is given, at least urgentFloor, at most Config.Timeout.
	urgentFactor = 8
	urgentFloor  = 20 * time.Millisecond
	// watchTick is how often the watchdog looks while requests are in
	// flight: a suspicion is raised at most this late.
	watchTick = 5 * time.Millisecond
	// confirmSilence, times Config.Timeout, is how long a suspect may
	// have been silent when its confirming beat times out.
	confirmSilence = 0.75
	// hushDevs and hushFloor: a backend is hushed (Hushed) when silent
	// longer than its mean silence plus hushDevs mean deviations, and
	// than hushFloor.
	hushDevs  = 3
	hushFloor = 2 * time.Millisecond
	// maxBackoff bounds the doublings of the wait after urgent beats that
	// answered: a backend slow for long is still asked every 64 thresholds.
	maxBackoff = 6
)

// watchdog is a pool's watch over requests in flight.
type watchdog struct {
	// idle: the watchdog sleeps until a request begins (Begin wakes it)
	idle atomic.Bool
	wake chan struct{}
}

func (d *watchdog) init() {
	d.wake = make(chan struct{}, 1)
	d.idle.Store(true)
}

func (d *watchdog) wakeUp() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// suspicion is what the watchdog knows of one backend.
type suspicion struct {
	// quiet: requests wait and nothing was heard for half the threshold,
	// at the watchdog's last look (set by it, read by Quiet)
	quiet atomic.Bool
	// touched by the watchdog's goroutine only
	mean, dev float64   // silence while busy, ns: moving averages
	asked     time.Time // when the last urgent beat went out
	backoff   uint      // urgent beats answered since the last live answer
	prober    *prober   // sends urgent beats; made at the first
	// urgent: a beat is out (set by the watchdog, cleared by the beat)
	urgent atomic.Bool
	// hush is the silence past which b is hushed, ns (set by the
	// watchdog, read by Hushed)
	hush atomic.Int64
}

// threshold is the silence (and wait) past which b is worth asking, at
// most a quarter of the heartbeat timeout: asking costs one beat, and a
// backend whose clients mostly wait on slow requests may be silent for long
// while busy; a hang must be seen in milliseconds all the same.
func (s *suspicion) threshold(timeout time.Duration) time.Duration {
	d := time.Duration(s.mean + silenceDevs*s.dev)
	return min(max(d, suspectFloor), max(timeout/4, suspectFloor))
}

// learn takes one silence sample, unless it is itself suspicious.
func (s *suspicion) learn(silence, threshold time.Duration) {
	if silence >= threshold {
		return
	}
	const alpha = 1.0 / 16
	x := float64(silence)
	s.dev += alpha * (math.Abs(x-s.mean) - s.dev)
	s.mean += alpha * (x - s.mean)
}

// Quiet reports whether, at the watchdog's last look (at most watchTick
// ago), requests waited on b and it had answered nothing, neither a request
// nor a heartbeat, for half its suspicion threshold: a backend to pass
// over, if another will do, until it answers or is asked.
func (b *Backend) Quiet() bool { return b.sus.quiet.Load() }

// Hushed reports whether requests wait on b and it has answered nothing,
// neither a request nor a heartbeat, for longer than it usually stays
// silent while busy (see hushDevs), as of now. A request that may not be
// replayed is better sent elsewhere then: unlike Quiet, which lags by up
// to a watchTick and waits for half the suspicion threshold, this catches
// a freeze within milliseconds, and every POST sent to a frozen backend
// is one that fails. It costs a clock read, so the selector asks it of
// such requests only.
func (b *Backend) Hushed(now time.Time) bool {
	if b.nFlights.Load() == 0 {
		return false
	}
	last := max(b.answered.Load(), b.heard.Load(), b.busySince.Load())
	return now.UnixNano()-last > max(b.sus.hush.Load(), int64(hushFloor))
}

// setQuiet writes quiet only when it changes: the selector reads it on
// every request.
func (s *suspicion) setQuiet(q bool) {
	if s.quiet.Load() != q {
		s.quiet.Store(q)
	}
}

// watch is the watchdog's goroutine: asleep while no request is in flight,
// looking every watchTick while some are.
func (p *Pool) watch() {
	t := time.NewTicker(watchTick)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.dog.wake:
		}
		p.dog.idle.Store(false)
		t.Reset(watchTick)
		for busy := true; busy; {
			select {
			case <-p.ctx.Done():
				return
			case <-t.C:
			}
			if busy = p.look(time.Now()); !busy {
				// asleep from now: a request that begins after this
				// look wakes it; one that began before is seen by it
				p.dog.idle.Store(true)
				if busy = p.look(time.Now()); busy {
					p.dog.idle.Store(false)
				}
			}
		}
		t.Stop()
	}
}

// look checks every backend with requests in flight and reports whether
// there was any.
func (p *Pool) look(now time.Time) (busy bool) {
	for _, b := range p.Backends() {
		if b.nFlights.Load() == 0 { // most, in a large pool: no lock taken
			b.sus.setQuiet(false)
			continue
		}
		oldest := b.oldest()
		if oldest.IsZero() || !b.InService() {
			b.sus.setQuiet(false)
			busy = busy || !oldest.IsZero()
			continue
		}
		busy = true
		p.lookAt(b, now, oldest)
	}
	return busy
}

// lookAt marks b quiet, and sends it an urgent heartbeat when it has been
// silent longer than its threshold (times its backoff) while a request
// waited: silence counts from its last answer, or from when its oldest
// request began if that is later (an idle backend is not silent).
func (p *Pool) lookAt(b *Backend, now, oldest time.Time) {
	s := &b.sus
	live := b.answered.Load()
	if live > s.asked.UnixNano() {
		s.backoff = 0 // it answers requests again
	}
	silent := now.Sub(time.Unix(0, max(live, b.heard.Load(), oldest.UnixNano())))
	waited := now.Sub(oldest)
	threshold := s.threshold(p.cfg.Timeout)
	s.learn(silent, threshold)
	s.hush.Store(int64(s.mean + hushDevs*s.dev))
	s.setQuiet(silent > threshold/2)
	wait := threshold << s.backoff
	if s.urgent.Load() || silent <= wait {
		return
	}
	s.asked = now
	s.backoff = min(s.backoff+1, maxBackoff)
	if s.prober == nil {
		p.mu.Lock() // newProber reads the OnBeat hook
		s.prober = newProber(p, b)
		p.mu.Unlock()
	}
	s.urgent.Store(true)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer s.urgent.Store(false)
		p.urgentBeat(b, waited, now.Add(-silent))
	}()
}

// urgentBeat asks b at once, on a new connection, with a short timeout:
// no answer makes it a suspect, to be confirmed or cleared by one more
// beat; any answer is evidence as a beat's.
func (p *Pool) urgentBeat(b *Backend, waited time.Duration, silentSince time.Time) {
	e, cause := p.ask(b, min(max(urgentFactor*time.Duration(b.lastBeat.Load()), urgentFloor), p.cfg.Timeout))
	if p.ctx.Err() != nil {
		return
	}
	if e != Miss {
		p.observe(b, e, cause) // only slow (or crashed, or draining)
		return
	}
	silent := time.Since(silentSince)
	if !p.suspect(b, fmt.Errorf("a request waited %v with no answer for %v, and an urgent heartbeat: %w",
		waited.Round(time.Millisecond), silent.Round(time.Millisecond), cause)) {
		return // the panic guard kept it: the beats that follow decide
	}
	limit := time.Duration(confirmSilence * float64(p.cfg.Timeout))
	e, cause = p.ask(b, max(limit-silent, urgentFloor))
	if p.ctx.Err() == nil {
		p.observe(b, e, cause)
	}
}

// ask sends b one beat, on a new connection, with the given timeout, and
// tells the OnBeat hook.
func (p *Pool) ask(b *Backend, timeout time.Duration) (Evidence, error) {
	pr := b.sus.prober
	pr.timeout = timeout
	start := time.Now()
	e, cause := pr.beat()
	if pr.onBeat != nil && p.ctx.Err() == nil {
		pr.onBeat(b, e, time.Since(start))
	}
	if e != Miss && e != Gone {
		b.heard.Store(time.Now().UnixNano())
	}
	return e, cause
}

// suspect applies the input "suspect" to b and rescues its replayable
// requests if it is now out of service, which it reports.
func (p *Pool) suspect(b *Backend, cause error) bool {
	p.mu.Lock()
	cuts, guarded := p.apply(b, inSuspect, cause)
	p.unlock()
	p.settle(b, "suspect", cause, cuts, guarded)
	return cuts != cutNone
}
