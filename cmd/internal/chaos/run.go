package chaos

import (
	"slices"
	"time"
)

// Run is one proxy's pass through a scenario: its configuration, what
// happened to the backends and what the clients saw. The demo writes runs as
// JSON and renders them with WriteHTML.
type Run struct {
	Name        string         `json:"name"`            // e.g. "failover", "reverse_proxy"
	Block       string         `json:"caddyfile_block"` // the site block, expanded
	Caddyfile   string         `json:"caddyfile"`       // the whole Caddyfile
	Backends    []string       `json:"backends"`        // ids, b1…bN
	Addrs       []string       `json:"addrs"`
	Start       time.Time      `json:"start"` // the load's start
	Report      Report         `json:"report"`
	Faults      []FaultEvent   `json:"faults"`
	Restarts    []RestartEvent `json:"restarts"`
	Transitions []Transition   `json:"transitions"`
	Timeline    Timeline       `json:"timeline"`
}

// Timeline is a run over time, for the chart: answers per bucket, every
// backend's state as spans, and the faults.
type Timeline struct {
	Bucket   Duration         `json:"bucket_ms"`
	Duration Duration         `json:"duration_ms"`
	OK       []int            `json:"ok"`     // successful answers completed in each bucket
	Failed   map[string][]int `json:"failed"` // failures completed in each bucket, by kind
	// States are the proxy's view of each backend (empty when it has none);
	// Process is what the injector and supervisor did to the process:
	// "up", "hung" (stopped) or "down" (killed, not yet restarted).
	States  []Span      `json:"states"`
	Process []Span      `json:"process"`
	Faults  []FaultMark `json:"faults"`
}

// Span is a backend in one state from From to To (seconds from the start).
type Span struct {
	Backend int     `json:"backend"`
	State   string  `json:"state"`
	Reason  string  `json:"reason,omitempty"`
	From    float64 `json:"from"`
	To      float64 `json:"to"`
}

// FaultMark is one injector action at At seconds from the start.
type FaultMark struct {
	At      float64 `json:"at"`
	Kind    string  `json:"kind"`
	Action  string  `json:"action"`
	Backend int     `json:"backend"` // -1: every backend
}

// Process states in a Timeline.
const (
	ProcUp   = "up"
	ProcHung = "hung"
	ProcDown = "down"
)

// BuildTimeline computes the timeline of a run with nBackends backends,
// counting answers in buckets of the given width (default 100ms).
func BuildTimeline(res *Results, nBackends int, bucket time.Duration, faults []FaultEvent, restarts []RestartEvent, transitions []Transition) Timeline {
	if bucket <= 0 {
		bucket = 100 * time.Millisecond
	}
	wall := res.End.Sub(res.Start)
	n := int(wall/bucket) + 1
	tl := Timeline{Bucket: Duration(bucket), Duration: Duration(wall), OK: make([]int, n), Failed: map[string][]int{}}
	for _, k := range []string{ErrStatus, ErrTransport, ErrTimeout} {
		tl.Failed[k] = make([]int, n)
	}
	for _, r := range res.Requests {
		if r.Err == ErrCanceled {
			continue
		}
		i := min(n-1, max(0, int(r.End().Sub(res.Start)/bucket)))
		if r.OK() {
			tl.OK[i]++
		} else if c, ok := tl.Failed[r.Err]; ok {
			c[i]++
		}
	}
	sec := func(t time.Time) float64 {
		return min(wall.Seconds(), max(0, t.Sub(res.Start).Seconds()))
	}

	// The proxy's view: each transition lasts until the backend's next one.
	byBackend := make([][]Transition, nBackends)
	for _, t := range transitions {
		if t.Backend >= 0 && t.Backend < nBackends {
			byBackend[t.Backend] = append(byBackend[t.Backend], t)
		}
	}
	for b, ts := range byBackend {
		slices.SortStableFunc(ts, func(x, y Transition) int { return x.Since.Compare(y.Since) })
		for i, t := range ts {
			to := wall.Seconds()
			if i+1 < len(ts) {
				to = sec(ts[i+1].Since)
			}
			if from := sec(t.Since); to > from || (i+1 == len(ts) && to >= from) {
				tl.States = append(tl.States, Span{Backend: b, State: t.State, Reason: t.Reason, From: from, To: to})
			}
		}
	}

	// The processes: up until a signal, then hung or down until a restart.
	type change struct {
		at      time.Time
		backend int
		state   string
	}
	var changes []change
	for _, ev := range faults {
		if ev.Err != "" {
			continue
		}
		tl.Faults = append(tl.Faults, FaultMark{At: sec(ev.Time), Kind: ev.Kind, Action: ev.Action, Backend: ev.Backend})
		state := ProcDown
		switch ev.Action {
		case "SIGSTOP":
			state = ProcHung
		case "SIGCONT after pause":
			state = ProcUp
		}
		if ev.Backend < 0 {
			for b := range nBackends {
				changes = append(changes, change{ev.Time, b, state})
			}
		} else {
			changes = append(changes, change{ev.Time, ev.Backend, state})
		}
	}
	for _, ev := range restarts {
		if ev.Err == "" {
			changes = append(changes, change{ev.Time, ev.Backend, ProcUp})
		}
	}
	slices.SortStableFunc(changes, func(x, y change) int { return x.at.Compare(y.at) })
	cur := make([]string, nBackends)
	from := make([]float64, nBackends)
	for b := range cur {
		cur[b] = ProcUp
	}
	for _, c := range changes {
		if c.backend < 0 || c.backend >= nBackends || c.state == cur[c.backend] {
			continue
		}
		at := sec(c.at)
		if at > from[c.backend] {
			tl.Process = append(tl.Process, Span{Backend: c.backend, State: cur[c.backend], From: from[c.backend], To: at})
		}
		cur[c.backend], from[c.backend] = c.state, at
	}
	for b := range cur {
		tl.Process = append(tl.Process, Span{Backend: b, State: cur[b], From: from[b], To: wall.Seconds()})
	}
	return tl
}
