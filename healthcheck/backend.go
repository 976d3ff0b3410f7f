package healthcheck

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Backend is one upstream of a Pool. Its state changes only through the
// pool (Pool.observe); the hot path reads the atomics without locking.
type Backend struct {
	Addr string
	// Index is b's place in the pool's first backends, and for a backend
	// added later (Pool.Add) the next number: unique in its pool, never
	// reused.
	Index int

	pool *Pool

	// inService mirrors state.InService() for lock-free reads.
	inService atomic.Bool
	// gen counts admissions: a request that failed on a backend may try it
	// again only after the backend has been ejected and readmitted.
	gen atomic.Uint64
	// beats counts heartbeats sent.
	beats atomic.Uint64
	// lastBeat is how long the last answered heartbeat took (ns).
	lastBeat atomic.Int64
	// answered is when b last answered a live request (UnixNano).
	answered atomic.Int64
	// heard is when b last answered a heartbeat (UnixNano).
	heard atomic.Int64
	// steady (written under pool.mu, by apply): b is in service with no
	// bad evidence to forget, so a pass changes nothing but passedAt
	// (UnixNano), which observe then sets without the lock
	steady   atomic.Bool
	passedAt atomic.Int64
	// renewConn: see conns, below
	renewConn atomic.Bool
	// busySince is when b last went from no flight to one (UnixNano).
	busySince atomic.Int64
	// sus is the watchdog's record of b (suspect.go)
	sus suspicion

	// guarded by pool.mu
	state  State
	reason Reason
	since  time.Time
	fails  int // consecutive bad beats
	passes int // consecutive good beats
	misses int // consecutive beats unanswered (fails without the answers and refusals)
	// guarded is why the panic guard keeps b in service (ReasonNone: it
	// does not).
	guarded Reason
	// lastGood is when b last answered as expected (but see passedAt).
	lastGood time.Time

	// restarts, guarded by pool.mu (see restart.go)
	lease       uint64    // counts restart requests; identifies the current one
	leaseUntil  time.Time // the current restart must be done by then
	restartAt   time.Time // no restart before then (crash-loop backoff)
	restartedAt time.Time // when the current restart was requested
	loop        CrashLoop // restarts in a row that did not last
	peer        peerFact  // a peer's restart being applied (peer.go)

	// probation holds when b entered probation (UnixNano), 0 outside it,
	// for the selector to ramp b's share without locking.
	probation atomic.Int64

	// prober probes b while the pool runs (see scheduler.start); kicked
	// holds a Probe made before it started.
	prober atomic.Pointer[prober]
	kicked atomic.Bool

	// active counts requests in flight (see Acquire), plus idleWaited while
	// WaitIdle waits: then ReleaseActive's one atomic add returns exactly
	// idleWaited when the last request ends, and only then takes idleMu.
	active atomic.Int64
	idleMu sync.Mutex
	idle   chan struct{} // closed when active drops to 0; nil if none waits

	// conns counts the prober's connections made; awaitConn, guarded by
	// pool.mu, is conns when ReturnOnNewProcess was called (0: not waiting);
	// renewConn (with the fields a beat reads, above) asks the prober to
	// make its next beat on a new connection (the one it holds may be to
	// the replacement already: see fire)
	conns     atomic.Uint64
	awaitConn uint64

	flightMu sync.Mutex
	flights  []*Flight
	// nFlights is len(flights), for the watchdog to pass over idle
	// backends without taking flightMu
	nFlights atomic.Int32
}

// InService reports whether requests may be sent to b now.
func (b *Backend) InService() bool { return b.inService.Load() }

// Gen is the number of times b has been admitted to service.
func (b *Backend) Gen() uint64 { return b.gen.Load() }

// InProbation reports whether b is ramping up after a readmission.
func (b *Backend) InProbation() bool { return b.probation.Load() != 0 }

// Share is the part of its round-robin turns b takes now: 1, but less
// during probation (slow start), ramping linearly from 10%.
func (b *Backend) Share(now time.Time) float64 {
	start := b.probation.Load()
	if start == 0 {
		return 1
	}
	ramp := time.Duration(b.pool.slowStart.Load())
	f := float64(now.UnixNano()-start) / float64(ramp)
	return min(max(f, 0.1), 1)
}

// State returns b's state, why it is there, and since when.
func (b *Backend) State() (State, Reason, time.Time) {
	b.pool.mu.Lock()
	defer b.pool.mu.Unlock()
	return b.state, b.reason, b.since
}

// Report feeds evidence from live traffic into the state machine. Evidence
// that does not prove the process gone also asks for a heartbeat at once,
// so that a false alarm is cleared within one beat.
func (b *Backend) Report(e Evidence, cause error) {
	b.pool.observe(b, e, cause)
	if e != Gone {
		b.Probe()
	}
}

// Answered records that b just answered a live request: the process is
// not hung, so its next heartbeat can wait (see prober.coveredByTraffic).
func (b *Backend) Answered() { b.answered.Store(time.Now().UnixNano()) }

// Probe asks for a heartbeat now instead of at the next interval.
func (b *Backend) Probe() {
	if pr := b.prober.Load(); pr != nil {
		pr.s.kick(pr)
		return
	}
	b.kicked.Store(true)
}

// idleWaited marks active while WaitIdle waits; counts stay below it.
const idleWaited = 1 << 32

// Acquire counts a request (any request, replayable or not) in flight on b,
// until ReleaseActive. Lock-free: the transport calls it on every attempt.
func (b *Backend) Acquire() { b.active.Add(1) }

// ReleaseActive ends a request counted by Acquire.
func (b *Backend) ReleaseActive() {
	if b.active.Add(-1) == idleWaited {
		b.wakeIdle()
	}
}

// Active is the number of requests in flight on b (see Acquire).
func (b *Backend) Active() int { return int(b.active.Load() % idleWaited) }

// wakeIdle releases WaitIdle's waiters if no request is in flight.
func (b *Backend) wakeIdle() {
	b.idleMu.Lock()
	defer b.idleMu.Unlock()
	if b.idle != nil && b.Active() == 0 {
		close(b.idle)
		b.idle = nil
		b.active.Add(-idleWaited)
	}
}

// Flight is a request in flight on a backend. It is registered so that the
// watchdog sees how long it waits (suspect.go), and so that a hang does not
// leave its client to sit out a response timeout: a suspicion or an
// ejection for a hang rescues a replayable one (cancelled with ErrRescued,
// to be replayed on a peer at once) while the pool's rescue budget allows,
// and an ejection for a hang abandons every other (cancelled with
// ErrAbandoned, to be answered 502 at once: its backend is confirmed hung
// and is about to be killed, so no answer is coming).
type Flight struct {
	// Cancel cancels the attempt; nil: the flight is never cut, it only
	// counts as waiting.
	Cancel context.CancelCauseFunc
	// Replayable: the request may be sent again elsewhere.
	Replayable bool
	start      time.Time
	slot       int
	cut        error
	denied     bool // the rescue budget kept it: it is not asked twice
}

// Begin registers f as in flight on b.
func (b *Backend) Begin(f *Flight) {
	b.flightMu.Lock()
	f.start = time.Now()
	f.slot = len(b.flights)
	f.cut, f.denied = nil, false
	if len(b.flights) == 0 {
		b.busySince.Store(f.start.UnixNano())
	}
	b.flights = append(b.flights, f)
	b.nFlights.Store(int32(len(b.flights)))
	b.flightMu.Unlock()
	if b.pool.dog.idle.Load() {
		b.pool.dog.wakeUp()
	}
}

// End removes f from b's flights. It returns why f was cut (its Cancel
// called) before it ended, ErrRescued or ErrAbandoned, or nil: when cut,
// whatever the attempt got must be thrown away. After End returns, f is
// never touched again, so it may be reused.
func (b *Backend) End(f *Flight) (cut error) {
	b.flightMu.Lock()
	defer b.flightMu.Unlock()
	if f.cut != nil {
		return f.cut
	}
	last := len(b.flights) - 1
	moved := b.flights[last]
	b.flights[f.slot] = moved
	moved.slot = f.slot
	b.flights[last] = nil
	b.flights = b.flights[:last]
	b.nFlights.Store(int32(last))
	if last == 0 {
		b.sus.setQuiet(false) // nothing waits: not quiet, whatever the last look saw
	}
	return nil
}

// stuck reports whether a registered flight has waited longer than d: with
// a missed heartbeat, that is a second witness of a hang.
func (b *Backend) stuck(d time.Duration) bool {
	b.flightMu.Lock()
	defer b.flightMu.Unlock()
	for _, f := range b.flights {
		if time.Since(f.start) > d {
			return true
		}
	}
	return false
}

// InFlight is the number of registered flights.
func (b *Backend) InFlight() int { return int(b.nFlights.Load()) }

// oldest returns when the longest-waiting flight began (zero: none).
func (b *Backend) oldest() time.Time {
	b.flightMu.Lock()
	defer b.flightMu.Unlock()
	var t time.Time
	for _, f := range b.flights {
		if t.IsZero() || f.start.Before(t) {
			t = f.start
		}
	}
	return t
}

// cut ends the flights of a backend suspected or ejected for a hang: each
// replayable one is rescued if allow (the rescue budget; nil: always) lets
// it, asked once per flight, and with abandon (an ejection: the backend is
// confirmed hung) every other is abandoned. What is neither stays registered. The cancel
// funcs are taken under the lock, so a flight that ended first is never
// touched, and called after it.
func (b *Backend) cut(allow func() bool, abandon bool) (rescued, abandoned int) {
	b.flightMu.Lock()
	type cancel struct {
		f     context.CancelCauseFunc
		cause error
	}
	var cancels []cancel
	kept := b.flights[:0]
	for _, f := range b.flights {
		switch {
		case f.Cancel == nil:
		case f.Replayable && !f.denied && (allow == nil || allow()):
			f.cut = ErrRescued
			rescued++
		case f.Replayable && !abandon:
			f.denied = true
		case abandon:
			f.cut = ErrAbandoned
			abandoned++
		}
		if f.cut == nil {
			f.slot = len(kept)
			kept = append(kept, f)
			continue
		}
		cancels = append(cancels, cancel{f.Cancel, f.cut})
	}
	clear(b.flights[len(kept):])
	b.flights = kept
	b.nFlights.Store(int32(len(kept)))
	b.flightMu.Unlock()
	for _, c := range cancels {
		c.f(c.cause)
	}
	return rescued, abandoned
}
