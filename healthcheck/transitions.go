package healthcheck

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// The transition table (docs/states.md has it too, with a diagram; the test
// TestTransitionTable drives every cell). Rows are inputs, columns states;
// a cell is the state (reason) that follows, "-" none. r is the backend's
// reason, F Config.Fails, P Config.Passes; a "fail" is any bad evidence
// since the last pass (the reason is the F-th's), a "miss" a beat unanswered
// (miss or timeout) since the last answer or refusal.
//
//	input \ state     unknown              healthy, probation         suspected            ejected(r)                   restarting(r)           draining(manual)  draining(announced)  maint
//	pass              healthy              -                          healthy⁷             P-th pass: admit¹            P = 1: admit¹,          -                 admit¹               -
//	                                                                                                                      else ejected(r)
//	miss              F-th fail:           F-th fail: ejected(hang)²  ejected(hang)        r crash or bad-status and    -                       -                 -                    -
//	                  ejected(hang)                                                        F-th miss: ejected(hang)
//	timeout           as miss              ejected(hang)²             ejected(hang)        as miss                      -                       -                 -                    -
//	wrong status      F-th fail:           F-th fail:                 ejected(bad-status)  ejected(bad-status)          ejected(bad-status)     -                 -                    -
//	                  ejected(bad-status)  ejected(bad-status)²
//	gone              -⁶                   ejected(crash)             ejected(crash)       ejected(crash)               -                       -                 -                    -
//	suspect⁸          -                    suspected²                 -                    -                            -                       -                 -                    -
//	drain announced⁵  draining(announced)  draining(announced)        draining(announced)  draining(announced)          draining(announced)     -                 -                    -
//	drain             draining(manual)     draining(manual)           draining(manual)     draining(manual)             draining(manual)        -                 draining(manual)     draining(manual)
//	maint             maint(manual)        maint(manual)              maint(manual)        maint(manual)                maint(manual)           maint(manual)     maint(manual)        -
//	return            -                    -                          -                    -                            -                       unknown³          unknown³             unknown³
//	restart due⁴      -                    guarded(hang):             -                    r hang or lease-expired, or  -                       -                 -                    -
//	                                       restarting(hang)                                crash with restart_crashed:
//	                                                                                       restarting(r)
//	lease expired     -                    -                          -                    -                            ejected(lease-expired)  -                 -                    -
//	restart failed    -                    -                          -                    -                            ejected(r)              -                 -                    -
//	slow start over   -                    probation: healthy         -                    -                            -                       -                 -                    -
//	peer restart⁹     -                    restarting(peer's r)¹⁰     restarting(peer's r)¹⁰ r not bad-status:            -¹¹                     -                 -                    -
//	                                                                                       restarting(r)
//
//	¹ probation when slow_start is set, else healthy; from unknown healthy (it never failed, so one pass)
//	² unless the last in service: the panic guard keeps it (no transition), guarded for that reason;
//	  new evidence replaces the reason (an answer ends a guarded hang), a pass or leaving service ends it
//	³ and a beat at once
//	⁴ a restarter is set, no pass since the last bad evidence, the last answer restart_after ago,
//	  no crash-loop backoff pending, fewer than max_restarting restarting
//	⁵ a heartbeat answer, whatever its status, with the DrainHeader
//	⁶ nothing listens yet (a process starting): no transition, not counted as a fail
//	⁷ a suspicion cleared (false, or a pause shorter than a heartbeat): back in service at once, no
//	  slow start, whatever P (it was never ejected); logged and counted as a false suspicion
//	⁸ the watchdog's urgent heartbeat went unanswered while a request waited (suspect.go); the
//	  next miss confirms it, as a miss while a request waits is a timeout; under the panic guard no
//	  transition and no guard reason (the beats that follow decide)
//	⁹ another instance sharing the pool asked for the restart (peer.go), after this instance's last
//	  answer from b and with its lease still running; else no transition. The lease runs until the
//	  peer's ends, and counts for the crash-loop backoff as a restart of this instance's
//	¹⁰ hang, crash or lease-expired; crash for an operator's replacement (the process goes away);
//	  no panic guard: the process is being restarted
//	¹¹ the lease runs until the peer's ends, if later
//
// Requests in flight (Flight): into suspected, the replayable ones are
// rescued while the rescue budget allows; into ejected(hang), from any
// state, the replayable ones not yet asked are rescued and the others
// abandoned (settle). No other transition touches them.
//
// A draining backend whose process is being replaced (ReturnOnNewProcess)
// takes "return" by itself at its first pass on a connection made since:
// the replacement answers (the old process, on its old connection, does not
// count; the prober's next beat goes on a new connection), then that pass
// applies as to unknown.
//
// A miss while a live request waits longer than Timeout is a timeout.

// input is what moves a backend: a piece of Evidence, a timed decision of
// the restart policy, or an operator's action.
type input uint8

const (
	// inRestart: the restart policy asks for a restart now.
	inRestart input = iota + input(DrainAnnounced) + 1 // after the last Evidence
	// inLeaseExpired: a restart lease ran out.
	inLeaseExpired
	// inRestartFailed: the restart request failed.
	inRestartFailed
	// inSlowStartOver: the probation time is over.
	inSlowStartOver
	// An operator's Drain, Maint and Return.
	inDrain
	inMaint
	inReturn
	// inSuspect: the watchdog's urgent heartbeat went unanswered while a
	// request waited (suspect.go).
	inSuspect
	// inPeerRestart: a peer asked for the restart (PeerRestarted).
	inPeerRestart
)

// observe applies one piece of evidence about b.
func (p *Pool) observe(b *Backend, e Evidence, cause error) {
	// a missed beat while live requests wait longer than a beat may take
	// is two witnesses of a hang, as good as a live request's timeout
	if e == Miss && b.stuck(p.cfg.Timeout) {
		e = Timeout
	}
	if e == Pass && b.steady.Load() {
		// the beat of nearly every backend nearly every time: a pass that
		// changes nothing but when b last answered, told without the lock
		b.passedAt.Store(time.Now().UnixNano())
		return
	}
	p.mu.Lock()
	if b.awaitConn != 0 && e == Pass && b.state == Draining && b.conns.Load() != b.awaitConn {
		// the replacement process answers, on a connection made since
		// (the old one's closed when it exited): back to the lifecycle
		b.awaitConn = 0
		p.apply(b, inReturn, nil)
	}
	cuts, guarded := p.apply(b, input(e), cause)
	p.unlock()
	p.settle(b, e.String(), cause, cuts, guarded)
}

// settle does, with p.mu released, what apply asked for: log a new panic
// guard, cut the flights of a backend suspected or ejected for a hang.
func (p *Pool) settle(b *Backend, evidence string, cause error, cuts cutting, guarded bool) {
	if guarded {
		p.logger().Error("panic guard: keeping the last backend in service despite failed health checks; check health_uri and the network",
			zap.String("backend", b.Addr), zap.String("evidence", evidence), zap.Error(cause))
	}
	if cuts == cutNone {
		return
	}
	if rescued, abandoned := b.cut(p.rescueBudget(), cuts == cutAll); rescued+abandoned > 0 {
		p.logger().Info("cutting requests in flight on a hung backend",
			zap.String("backend", b.Addr), zap.Int("replayed", rescued), zap.Int("abandoned", abandoned))
	}
}

// cutting is what a transition does to a backend's flights (Flight).
type cutting uint8

const (
	cutNone cutting = iota
	// cutRescue: suspected; its replayable flights are rescued
	cutRescue
	// cutAll: ejected for a hang; its replayable flights are rescued,
	// the others abandoned
	cutAll
)

// evidenceReason is the reason a piece of bad evidence ejects for.
var evidenceReason = [...]Reason{Miss: Hang, Timeout: Hang, WrongStatus: BadStatus, Gone: Crash}

// apply is the state machine: every transition of every backend is made
// here, under p.mu. It reports what is to become of b's flights (suspected
// or ejected for a hang: cut) and whether the panic guard kept b in
// service for a new reason (to be logged).
func (p *Pool) apply(b *Backend, in input, cause error) (cuts cutting, guarded bool) {
	s, r := b.state, b.reason
	held := s == Draining || s == Maint // evidence only counts
	announced := s == Draining && r == Announced
	switch in {
	case input(Pass):
		b.passes++
		b.fails, b.misses = 0, 0
		b.lastGood = time.Now()
		b.guarded = ReasonNone
		if s == Restarting {
			p.learnRestart(b)
		}
		switch {
		case announced, s == Suspected:
			// the backend ends its drain by no longer announcing it; a
			// suspect answers: the suspicion clears
			p.admit(b)
		case s.InService() || held:
		case s == Unknown || b.passes >= p.cfg.Passes:
			p.admit(b) // unknown needs one pass: it has never failed
		case s == Restarting:
			p.set(b, Ejected, r, nil) // back: the restart is over, passes to go
		}

	case input(Miss), input(Timeout), input(WrongStatus), input(Gone):
		e := Evidence(in)
		if e == Gone && s == Unknown {
			// nothing listens yet: a backend never seen answering has not
			// crashed (a spawned one starting, one returned before its
			// process listens); not counted either
			break
		}
		b.passes = 0
		b.fails++
		b.misses++
		if e == WrongStatus || e == Gone {
			b.misses = 0
		}
		to := evidenceReason[e]
		switch {
		case s == Unknown:
			if b.fails >= p.cfg.Fails {
				p.set(b, Ejected, to, cause)
			}
		case s.InService():
			if e == Gone {
				p.set(b, Ejected, Crash, cause) // proof: no panic guard
			} else if e == Timeout || b.fails >= p.cfg.Fails {
				cuts, guarded = p.ejectGuarded(b, to, cause)
			}
		case s == Suspected:
			// already out of service: no panic guard; a miss confirms the
			// urgent beat's, and an answer that is not a pass is no way
			// back to service
			p.set(b, Ejected, to, cause)
			if to == Hang { // what began just before, or was not let go
				cuts = cutAll
			}
		case s == Ejected:
			// later evidence updates the reason: any answer ends a hang or
			// a crash, a refusal proves the process gone, and a crashed or
			// answering process that stops answering hangs (lease-expired
			// already means not answering)
			if to != r && (e != Miss && e != Timeout || b.misses >= p.cfg.Fails && (r == Crash || r == BadStatus)) {
				p.set(b, Ejected, to, cause)
			}
		case s == Restarting:
			if e == WrongStatus {
				p.set(b, Ejected, BadStatus, cause) // back, but unhealthy
			}
		}

	case input(DrainAnnounced):
		// an answer, so not a miss; not a pass either
		b.passes, b.misses = 0, 0
		if s != Maint && !(s == Draining && r == Manual) { // an operator's word wins
			p.set(b, Draining, Announced, cause)
		}

	case inRestart:
		switch {
		case s == Ejected:
			p.set(b, Restarting, r, nil)
		case s.InService():
			p.set(b, Restarting, Hang, nil) // kept in by the panic guard, but not answering
		}
	case inLeaseExpired:
		if s == Restarting {
			p.set(b, Ejected, LeaseExpired, cause)
		}
	case inRestartFailed:
		if s == Restarting {
			p.set(b, Ejected, r, cause)
		}
	case inSlowStartOver:
		if s == Probation {
			p.set(b, Healthy, ReasonNone, nil)
		}
	case inDrain:
		p.set(b, Draining, Manual, nil)
	case inMaint:
		p.set(b, Maint, Manual, nil)
	case inSuspect:
		if !s.InService() {
			break
		}
		b.passes = 0
		if p.inService > 1 { // the panic guard: nothing else in service
			p.set(b, Suspected, ReasonNone, cause)
			cuts = cutRescue
		}
	case inReturn:
		if held {
			b.fails, b.passes, b.misses = 0, 0, 0
			p.set(b, Unknown, ReasonNone, nil)
		}
	case inPeerRestart:
		p.peerRestart(b, cause)
	default:
		panic(fmt.Sprintf("healthcheck: unknown input %d", in))
	}
	b.steady.Store(b.state.InService() && b.fails == 0 && b.misses == 0 && b.guarded == ReasonNone)
	return cuts, guarded
}

// admit is the transition into service: unknown or suspected → healthy,
// and ejected, restarting or draining(announced) → probation (with slow
// start) or healthy.
func (p *Pool) admit(b *Backend) {
	b.gen.Add(1)
	to := Healthy
	if time.Duration(p.slowStart.Load()) > 0 && b.state != Unknown && b.state != Suspected {
		to = Probation
	}
	p.set(b, to, ReasonNone, nil) // in service before waiters wake
	next := make(chan struct{})
	close(*p.ready.Swap(&next))
}

// learnRestart updates how long restarts take, request to first good
// answer, for RetryAfter.
func (p *Pool) learnRestart(b *Backend) {
	took := time.Since(b.restartedAt)
	if p.restartTook == 0 {
		p.restartTook = took
	} else {
		p.restartTook = (3*p.restartTook + took) / 4
	}
}

// ejectGuarded ejects b on evidence that does not prove its process gone,
// unless b is the last backend in service: heartbeat misses alone must never
// take the whole pool out (a wrong health path or a slow network would then
// be a total outage). It reports what becomes of b's flights (ejected for
// a hang: all cut), and whether the guard now keeps b in for a new reason
// (the latest evidence: a guarded hang that answers a bad status is no
// longer to be restarted).
func (p *Pool) ejectGuarded(b *Backend, r Reason, cause error) (cuts cutting, guarded bool) {
	if p.inService <= 1 {
		if b.guarded == r {
			return cutNone, false
		}
		b.guarded = r
		p.wakeRestarts() // kept in, but maybe to be restarted
		return cutNone, true
	}
	p.set(b, Ejected, r, cause)
	if r == Hang {
		cuts = cutAll
	}
	return cuts, false
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
	if !to.InService() {
		b.guarded = ReasonNone // the panic guard keeps backends in service only
	}
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
	t := Transition{Backend: b.Addr, Index: b.Index, From: from, To: to, Reason: r, At: now, LastAnswer: b.lastAnswer()}
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
			switch {
			case t.To == Ejected:
				p.logger().Warn("backend ejected", zap.String("backend", t.Backend),
					zap.Stringer("reason", t.Reason), zap.String("cause", t.Cause))
			case t.To == Suspected:
				p.logger().Warn("backend suspected of a hang: out of service until it answers", zap.String("backend", t.Backend),
					zap.String("cause", t.Cause))
			case t.From == Suspected && t.To.InService():
				p.logger().Info("false suspicion: the suspected backend answered and is back in service (slow, or paused shorter than a heartbeat timeout)",
					zap.String("backend", t.Backend))
			default:
				p.logger().Info("backend state", zap.String("backend", t.Backend),
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
