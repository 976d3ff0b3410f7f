package healthcheck

import (
	"errors"
	"fmt"
	"time"
)

// State is where a backend stands in the one state machine of this package
// (the table is in transitions.go and docs/states.md).
//
//	unknown → healthy → ejected(reason) → restarting → probation → healthy
//
// plus suspected (between healthy and ejected: see suspect.go) and an
// operator's draining and maint. Only Healthy and Probation backends are in
// service (receive new requests).
type State uint8

const (
	// Unknown: not yet probed; not in service, so nothing is sent to a
	// backend that has never answered (unlike Caddy, which starts healthy).
	Unknown State = iota
	// Healthy: in service.
	Healthy
	// Ejected: out of service for Reason until enough good beats come back.
	Ejected
	// Restarting: out of service while a supervisor restarts it.
	Restarting
	// Probation: back in service, ramping its share of traffic.
	Probation
	// Draining: out by an operator's hand (reason Manual) or by the
	// backend's own announcement (Announced); requests in flight finish.
	// Its heartbeats go on and are shown, but no bad evidence moves it and
	// it is never restarted: a graceful exit is not a crash. Only an
	// announced drain ends by itself, with a good beat that no longer
	// announces it.
	Draining
	// Maint: out by hand for maintenance, on the same rules as Draining.
	Maint
	// Suspected: a request waits on it longer than its usual latency
	// warrants, it answered nothing meanwhile and an urgent heartbeat went
	// unanswered: out of service at once, its replayable requests rescued;
	// its next answer readmits it, its next miss ejects it (suspect.go).
	Suspected
)

var stateNames = [...]string{"unknown", "healthy", "ejected", "restarting", "probation", "draining", "maint", "suspected"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "invalid"
}

// InService reports whether requests may be sent to a backend in this state.
func (s State) InService() bool { return s == Healthy || s == Probation }

// MarshalText lets states print by name in JSON and logs.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state by name, as the admin API prints it.
func (s *State) UnmarshalText(b []byte) error {
	i, err := byName(stateNames[:], string(b))
	*s = State(i)
	return err
}

// Reason says why a backend left service.
type Reason uint8

const (
	ReasonNone Reason = iota
	// Crash: proof the process is gone (connection refused or reset).
	Crash
	// Hang: heartbeats or requests timed out; the process may be alive but
	// stuck, so only a supervisor restart will bring it back.
	Hang
	// BadStatus: the heartbeat answered with an unexpected status.
	BadStatus
	// LeaseExpired: a restart lease ran out before the backend came back.
	LeaseExpired
	// Manual: an operator took it out (draining, maint).
	Manual
	// Announced: the backend announced its drain in a heartbeat answer
	// (the DrainHeader); a good beat without it brings it back.
	Announced
)

var reasonNames = [...]string{"", "crash", "hang", "bad-status", "lease-expired", "manual", "announced"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "invalid"
}

// MarshalText lets reasons print by name in JSON and logs.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a reason by name, as the admin API prints it.
func (r *Reason) UnmarshalText(b []byte) error {
	i, err := byName(reasonNames[:], string(b))
	*r = Reason(i)
	return err
}

func byName(names []string, name string) (int, error) {
	for i, n := range names {
		if n == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown name %q", name)
}

// Transition is one change of a backend's state (see Pool.OnTransition).
type Transition struct {
	Backend string    `json:"backend"`
	Index   int       `json:"index"`
	From    State     `json:"from"`
	To      State     `json:"to"`
	Reason  Reason    `json:"reason,omitempty"`
	Cause   string    `json:"cause,omitempty"`
	At      time.Time `json:"at"`
	// LastAnswer is when the backend last answered as expected, a beat or
	// a live request: At minus LastAnswer is how long an ejected backend
	// may have been failing while in service.
	LastAnswer time.Time `json:"last_answer"`
}

// ErrRescued is the cancel cause of a request that was in flight on a
// backend suspected or ejected for a hang: it is to be replayed elsewhere
// at once.
var ErrRescued = errors.New("backend suspected or ejected for a hang while the request was in flight")

// ErrAbandoned is the cancel cause of a request that cannot be replayed
// (or that the rescue budget did not let be) and was in flight on a
// backend ejected for a hang: no answer is coming, its client is told at
// once.
var ErrAbandoned = errors.New("backend ejected for a hang while the request was in flight; it cannot be replayed")

// Evidence is what the engine learns about a backend; with the restart
// policy's timers and an operator's actions, it drives the transition table
// (transitions.go).
type Evidence uint8

const (
	// Pass: a heartbeat answered as expected.
	Pass Evidence = iota
	// Miss: a heartbeat timed out or could not connect (not refused).
	Miss
	// WrongStatus: a heartbeat answered with an unexpected status.
	WrongStatus
	// Gone: connection refused or reset: the process is not there.
	Gone
	// Timeout: a live request got no response in time; counts as a hang
	// at once (a heartbeat is then sent to confirm recovery).
	Timeout
	// DrainAnnounced: a heartbeat answer, whatever its status, carried the
	// DrainHeader: the backend asks for no new requests (it is about to
	// exit, say), as Envoy's x-envoy-immediate-health-check-fail does.
	DrainAnnounced
)

// DrainHeader in a heartbeat answer, with any value, announces a drain.
const DrainHeader = "Failover-Drain"

var evidenceNames = [...]string{"pass", "miss", "wrong-status", "gone", "timeout", "drain-announced"}

func (e Evidence) String() string {
	if int(e) < len(evidenceNames) {
		return evidenceNames[e]
	}
	return "invalid"
}
