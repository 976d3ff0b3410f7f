package chaos

import (
	"fmt"
	"slices"
	"time"
)

// Faults is how a proxy reacted to the faults of a run: how long it took to
// take a crashed or hung backend out of service, and to ask for a hung one's
// restart. Report embeds it; AddFaults fills it in.
type Faults struct {
	// FaultsApplied counts crash, hang, outage and deploy faults applied (not the
	// kill that ends a hang).
	FaultsApplied int `json:"faults_applied"`
	// StateSource says where the backend states came from (see
	// StateWatcher.Source); empty when nowhere, and then no latency is known.
	StateSource string `json:"state_source,omitempty"`

	// From the fault (the injector's clock, just before the signal) to the
	// proxy taking the backend out of service (the engine's own transition
	// time when the proxy reports one). An outage counts as a crash of every
	// backend.
	CrashToEject Latencies `json:"crash_to_eject"`
	HangToEject  Latencies `json:"hang_to_eject"`
	// From a hang to the backend's state "restarting": the proxy asked its
	// supervisor to restart it.
	HangToRestart Latencies `json:"hang_to_restart_requested"`

	Restarts       int `json:"restarts"` // processes the supervisor restarted
	RestartsFailed int `json:"restarts_failed"`

	Detections []Detection `json:"detections,omitempty"` // one per fault and backend hit
}

// Latencies summarizes one kind of reaction over the faults of one kind.
type Latencies struct {
	Faults   int      `json:"faults"`   // faults that hit a backend in service
	Observed int      `json:"observed"` // faults the reaction was seen for
	Min      Duration `json:"min_ms"`
	P50      Duration `json:"p50_ms"`
	Max      Duration `json:"max_ms"`
}

func (l Latencies) String() string {
	switch {
	case l.Faults == 0:
		return "-"
	case l.Observed == 0:
		return fmt.Sprintf("n/a (0 of %d)", l.Faults)
	case l.Observed == 1:
		return fmt.Sprintf("%v (1 of %d)", l.P50, l.Faults)
	}
	return fmt.Sprintf("p50 %v, max %v (%d of %d)", l.P50, l.Max, l.Observed, l.Faults)
}

// Short is String without the counts, for narrow tables.
func (l Latencies) Short() string {
	switch {
	case l.Faults == 0:
		return "-"
	case l.Observed == 0:
		return "n/a"
	case l.Observed == 1:
		return l.P50.String()
	}
	return fmt.Sprintf("%v / %v", l.P50, l.Max)
}

// Detection is what the proxy did about one fault on one backend.
type Detection struct {
	At      Duration `json:"at_ms"` // from the load's start
	Kind    string   `json:"kind"`  // FaultCrash or FaultHang
	Outage  bool     `json:"outage,omitempty"`
	Backend int      `json:"backend"`
	// Before is the backend's state in the proxy when the fault hit; a
	// backend already out of service is not counted.
	Before    string    `json:"state_before,omitempty"`
	Eject     *Duration `json:"eject_ms,omitempty"`      // fault → out of service
	EjectSeen *Duration `json:"eject_seen_ms,omitempty"` // fault → the watcher saw it
	Reason    string    `json:"reason,omitempty"`        // why, as the proxy says
	Restart   *Duration `json:"restart_requested_ms,omitempty"`
}

// AddFaults fills in r.Faults from the injector's events, the supervisor's
// restarts and the backend state transitions a StateWatcher saw (source is
// its Source(); empty if there was none). start is the load's start and
// nBackends the number of backends (an outage hits each).
//
// The reaction to a fault on a backend is the first transition out of
// service after the fault and before the next fault on that backend; a hang's
// restart request is the first transition to "restarting" in that window.
func (r *Report) AddFaults(start time.Time, nBackends int, faults []FaultEvent, restarts []RestartEvent, transitions []Transition, source string) {
	f := Faults{StateSource: source}
	for _, ev := range restarts {
		if ev.Err == "" {
			f.Restarts++
		} else {
			f.RestartsFailed++
		}
	}
	type hit struct {
		ev      FaultEvent
		backend int
	}
	var hits []hit
	for _, ev := range faults {
		if ev.Err == "" && (ev.Kind == FaultDeploy || ev.Kind == FaultPause && ev.Action == "SIGSTOP") {
			f.FaultsApplied++ // no detection latency to measure: nothing failed
			continue
		}
		if ev.Err != "" || (ev.Action != "SIGKILL" && ev.Action != "SIGSTOP") {
			continue // failed, or the kill that ends a hang
		}
		f.FaultsApplied++
		if ev.Kind == FaultOutage {
			for b := range nBackends {
				hits = append(hits, hit{ev, b})
			}
			continue
		}
		hits = append(hits, hit{ev, ev.Backend})
	}
	byBackend := map[int][]Transition{}
	for _, t := range transitions {
		byBackend[t.Backend] = append(byBackend[t.Backend], t)
	}
	for _, ts := range byBackend {
		slices.SortStableFunc(ts, func(a, b Transition) int { return a.Since.Compare(b.Since) })
	}

	var crash, hang, restart []time.Duration
	var crashN, hangN int
	for i, h := range hits {
		T := h.ev.Time
		end := time.Time{} // the next fault on this backend
		for _, o := range hits[i+1:] {
			if o.backend == h.backend && o.ev.Time.After(T) {
				end = o.ev.Time
				break
			}
		}
		d := Detection{At: Duration(T.Sub(start)), Kind: h.ev.Kind, Backend: h.backend}
		if h.ev.Kind == FaultOutage {
			d.Kind, d.Outage = FaultCrash, true
		}
		ts := byBackend[h.backend]
		for _, t := range ts {
			if t.Since.After(T) {
				break
			}
			d.Before = t.State
		}
		if source != "" && d.Before != "" && !InService(d.Before) {
			f.Detections = append(f.Detections, d) // already out: not counted
			continue
		}
		if d.Kind == FaultHang {
			hangN++
		} else {
			crashN++
		}
		for _, t := range ts {
			if t.Since.Before(T) {
				continue
			}
			if !end.IsZero() && !t.Since.Before(end) {
				break
			}
			if d.Eject == nil && !InService(t.State) {
				e, s := Duration(t.Since.Sub(T)), Duration(t.Seen.Sub(T))
				d.Eject, d.EjectSeen, d.Reason = &e, &s, t.Reason
			}
			if d.Kind == FaultHang && d.Restart == nil && t.State == StateRestarting {
				rs := Duration(t.Since.Sub(T))
				d.Restart = &rs
			}
		}
		if d.Eject != nil {
			if d.Kind == FaultHang {
				hang = append(hang, time.Duration(*d.Eject))
			} else {
				crash = append(crash, time.Duration(*d.Eject))
			}
		}
		if d.Restart != nil {
			restart = append(restart, time.Duration(*d.Restart))
		}
		f.Detections = append(f.Detections, d)
	}
	f.CrashToEject = latencies(crashN, crash)
	f.HangToEject = latencies(hangN, hang)
	f.HangToRestart = latencies(hangN, restart)
	r.Faults = f
}

func latencies(n int, ds []time.Duration) Latencies {
	l := Latencies{Faults: n, Observed: len(ds)}
	if len(ds) == 0 {
		return l
	}
	slices.Sort(ds)
	l.Min, l.P50, l.Max = Duration(ds[0]), Duration(percentile(ds, 0.5)), Duration(ds[len(ds)-1])
	return l
}
