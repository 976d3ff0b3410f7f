package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/crashonly/caddy-failover/internal/procstat"
)

// Fault kinds.
const (
	FaultCrash  = "crash"  // SIGKILL one backend; its supervisor restarts it
	FaultHang   = "hang"   // SIGSTOP one backend; SIGKILL it HangFor later unless Injector.PidOf is set
	FaultOutage = "outage" // SIGKILL every backend at once
	FaultDeploy = "deploy" // a rolling deploy: every backend restarted gracefully, one at a time
	FaultPause  = "pause"  // a stop-the-world pause: SIGSTOP one backend, SIGCONT it PauseFor later
)

// FaultKinds lists the kinds Schedule and Injector know.
var FaultKinds = []string{FaultCrash, FaultHang, FaultOutage, FaultDeploy, FaultPause}

// DefaultFaultKinds are the kinds a run has unless told otherwise: faults,
// not deploys.
var DefaultFaultKinds = []string{FaultCrash, FaultHang, FaultOutage}

// Fault is one planned fault.
type Fault struct {
	At      time.Duration `json:"at_ns"`   // offset from the start of the run
	Kind    string        `json:"kind"`    // FaultCrash, FaultHang or FaultOutage
	Backend int           `json:"backend"` // index of the target; -1 for an outage
}

func (f Fault) String() string {
	if f.Kind == FaultOutage || f.Kind == FaultDeploy {
		return fmt.Sprintf("+%v %s (all backends)", f.At, f.Kind)
	}
	return fmt.Sprintf("+%v %s backend %d", f.At, f.Kind, f.Backend)
}

// Schedule plans one fault every `every`, at every, 2*every, … strictly
// before duration. The same arguments always give the same plan. Kinds are
// drawn in seeded shuffled rounds (each round uses every kind once, so a short
// run still sees each kind); targets are drawn uniformly. Empty kinds means
// FaultKinds. It returns nil when nBackends or every is not positive.
func Schedule(seed int64, duration time.Duration, nBackends int, kinds []string, every time.Duration) []Fault {
	if nBackends <= 0 || every <= 0 {
		return nil
	}
	if len(kinds) == 0 {
		kinds = DefaultFaultKinds
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6368616f73)) // "chaos"
	round := slices.Clone(kinds)
	var out []Fault
	for i, at := 0, every; at < duration; i, at = i+1, at+every {
		if i%len(round) == 0 {
			rng.Shuffle(len(round), func(a, b int) { round[a], round[b] = round[b], round[a] })
		}
		f := Fault{At: at, Kind: round[i%len(round)], Backend: rng.IntN(nBackends)}
		if f.Kind == FaultOutage || f.Kind == FaultDeploy {
			f.Backend = -1
		}
		out = append(out, f)
	}
	return out
}

// ValidateKinds reports an unknown fault kind.
func ValidateKinds(kinds []string) error {
	for _, k := range kinds {
		if !slices.Contains(FaultKinds, k) {
			return fmt.Errorf("chaos: unknown fault kind %q (want %v)", k, FaultKinds)
		}
	}
	return nil
}

// FaultEvent records one action of the Injector. A hang produces two events:
// the SIGSTOP and, HangFor later, the SIGKILL.
type FaultEvent struct {
	Fault
	Time   time.Time `json:"time"`
	Action string    `json:"action"` // "SIGKILL", "SIGSTOP" or "SIGKILL after hang"
	Pids   []int     `json:"pids"`   // processes signalled
	Err    string    `json:"err,omitempty"`
}

func (e FaultEvent) String() string {
	s := fmt.Sprintf("%s %s: %s pids %v", e.Fault, e.Time.Format("15:04:05.000"), e.Action, e.Pids)
	if e.Err != "" {
		s += " (" + e.Err + ")"
	}
	return s
}

// Injector applies faults to backends: a crash is a SIGKILL; a hang is a
// SIGSTOP followed HangFor later by the SIGKILL a supervisor asked to restart
// a hung process would send; an outage SIGKILLs every backend at once.
// Restarting is the Supervisor's job. Set the fields before the first use.
//
// With PidOf set the injector works on processes something else runs (Caddy's
// built-in supervisor, say): it signals the pid PidOf returns at the time of
// the fault, and a hung process is not killed later: restarting it is the
// job of whoever runs it. KillStopped is the safety net for the end of a run.
type Injector struct {
	Backends []*Backend
	HangFor  time.Duration // default 1.5s
	PauseFor time.Duration // default 100ms
	// PidOf, if set, replaces Backends: it returns the current pid of
	// backend i (0 if none runs), for i in [0, NumBackends).
	PidOf       func(i int) int
	NumBackends int
	// OnFault, if set, is called with every event as it happens, possibly
	// from several goroutines at once.
	OnFault func(FaultEvent)
	// Deploy, if set, performs a deploy fault (e.g. a rolling restart
	// through failover's admin API) and returns when it is done. Unset: a
	// rolling SIGTERM, one backend at a time, each waited for until a new
	// process answers (its supervisor restarts it).
	Deploy func(ctx context.Context) error

	mu      sync.Mutex
	events  []FaultEvent
	stopped []int          // pids SIGSTOPped in PidOf mode
	pending sync.WaitGroup // delayed hang kills
}

// Run applies faults at their offsets from now, in order, and returns once
// all have been applied and every hung process has been killed. If ctx ends
// first it stops applying faults and kills hung processes at once, so no
// process is left stopped.
func (in *Injector) Run(ctx context.Context, faults []Fault) {
	start := time.Now()
	for _, f := range faults {
		if !sleepCtx(ctx, time.Until(start.Add(f.At))) {
			break
		}
		in.Apply(ctx, f)
	}
	in.pending.Wait()
}

// Apply applies one fault now. For a hang it returns after the SIGSTOP; the
// SIGKILL follows HangFor later (or when ctx ends) and Run, or Wait, waits
// for it.
func (in *Injector) Apply(ctx context.Context, f Fault) {
	if f.Kind == FaultDeploy {
		in.deploy(ctx, f)
		return
	}
	if f.Kind == FaultPause {
		in.pause(ctx, f)
		return
	}
	if in.PidOf != nil {
		in.applyPid(f)
		return
	}
	ev := FaultEvent{Fault: f, Time: time.Now()}
	switch f.Kind {
	case FaultOutage:
		ev.Action = "SIGKILL"
		var procs []*proc
		for _, b := range in.Backends { // signal all first: at once
			p, _ := b.current()
			if p.signal(syscall.SIGKILL) == nil {
				ev.Pids = append(ev.Pids, p.pid)
				procs = append(procs, p)
			}
		}
		for _, p := range procs {
			if err := p.wait(reapTimeout); err != nil {
				ev.Err = err.Error()
			}
		}
	case FaultCrash, FaultHang:
		if f.Backend < 0 || f.Backend >= len(in.Backends) {
			ev.Err = fmt.Sprintf("no backend %d", f.Backend)
			break
		}
		b := in.Backends[f.Backend]
		p, gen := b.current()
		ev.Pids = []int{p.pid}
		if f.Kind == FaultCrash {
			ev.Action = "SIGKILL"
			if p.exited() {
				ev.Err = ErrNotRunning.Error() // down already, e.g. awaiting restart
			} else if err := p.kill(); err != nil {
				ev.Err = err.Error()
			}
			break
		}
		ev.Action = "SIGSTOP"
		if err := p.signal(syscall.SIGSTOP); err != nil {
			ev.Err = err.Error()
			break
		}
		in.pending.Go(func() { in.killHung(ctx, f, b, gen) })
	default:
		ev.Err = "unknown fault kind"
	}
	in.record(ev)
}

// pause SIGSTOPs one backend's process and SIGCONTs it PauseFor later (at
// once if ctx ends): a stop-the-world pause, not a fault to be restarted.
func (in *Injector) pause(ctx context.Context, f Fault) {
	ev := FaultEvent{Fault: f, Time: time.Now(), Action: "SIGSTOP"}
	pid := 0
	switch {
	case in.PidOf != nil && f.Backend >= 0 && f.Backend < in.NumBackends:
		pid = in.PidOf(f.Backend)
	case in.PidOf == nil && f.Backend >= 0 && f.Backend < len(in.Backends):
		if p, _ := in.Backends[f.Backend].current(); !p.exited() {
			pid = p.pid
		}
	}
	if pid <= 0 {
		ev.Err = ErrNotRunning.Error()
		in.record(ev)
		return
	}
	ev.Pids = []int{pid}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		ev.Err = err.Error()
		in.record(ev)
		return
	}
	in.record(ev)
	pauseFor := in.PauseFor
	if pauseFor <= 0 {
		pauseFor = 100 * time.Millisecond
	}
	in.pending.Go(func() {
		sleepCtx(ctx, pauseFor)
		ev := FaultEvent{Fault: f, Time: time.Now(), Action: "SIGCONT after pause", Pids: []int{pid}}
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			ev.Err = err.Error()
		}
		in.record(ev)
	})
}

// killHung SIGKILLs the hung process HangFor after its SIGSTOP, or at once if
// ctx ends, unless it was already replaced.
func (in *Injector) killHung(ctx context.Context, f Fault, b *Backend, gen int) {
	hangFor := in.HangFor
	if hangFor <= 0 {
		hangFor = 1500 * time.Millisecond
	}
	sleepCtx(ctx, hangFor)
	ev := FaultEvent{Fault: f, Time: time.Now(), Action: "SIGKILL after hang"}
	pid, err := b.killGen(gen)
	if err != nil {
		ev.Err = err.Error()
	} else {
		ev.Pids = []int{pid}
	}
	in.record(ev)
}

// applyPid applies a fault to the processes PidOf names.
func (in *Injector) applyPid(f Fault) {
	ev := FaultEvent{Fault: f, Time: time.Now()}
	switch f.Kind {
	case FaultOutage:
		ev.Action = "SIGKILL"
		pids := make([]int, 0, in.NumBackends)
		for i := range in.NumBackends { // look up all first, then signal at once
			if pid := in.PidOf(i); pid > 0 {
				pids = append(pids, pid)
			}
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				ev.Pids = append(ev.Pids, pid)
			}
		}
		if len(ev.Pids) == 0 {
			ev.Err = ErrNotRunning.Error()
		}
	case FaultCrash, FaultHang:
		if f.Backend < 0 || f.Backend >= in.NumBackends {
			ev.Err = fmt.Sprintf("no backend %d", f.Backend)
			break
		}
		pid := in.PidOf(f.Backend)
		if pid <= 0 {
			ev.Err = ErrNotRunning.Error() // down already, e.g. awaiting restart
			break
		}
		ev.Pids = []int{pid}
		sig, name := syscall.SIGKILL, "SIGKILL"
		if f.Kind == FaultHang {
			sig, name = syscall.SIGSTOP, "SIGSTOP"
		}
		ev.Action = name
		if err := syscall.Kill(pid, sig); err != nil {
			ev.Err = err.Error()
			break
		}
		if f.Kind == FaultHang {
			in.mu.Lock()
			in.stopped = append(in.stopped, pid)
			in.mu.Unlock()
		}
	default:
		ev.Err = "unknown fault kind"
	}
	in.record(ev)
}

// KillStopped SIGKILLs every process the injector SIGSTOPped in PidOf mode
// that is still stopped, and returns their pids: the safety net at the end of
// a run, so that no frozen process outlives it.
func (in *Injector) KillStopped() []int {
	in.mu.Lock()
	pids := in.stopped
	in.stopped = nil
	in.mu.Unlock()
	var killed []int
	for _, pid := range pids {
		if ProcState(pid) == "T" && syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

// ProcState is the state letter of a process ("R", "S", "T" for stopped,
// "Z" for a zombie…), or "" if there is no such process.
func ProcState(pid int) string { return procstat.State(pid) }

// Alive reports whether pid is a live process (not a zombie).
func Alive(pid int) bool { return procstat.Alive(pid) }

// Wait waits for the delayed kills of hangs applied with Apply.
func (in *Injector) Wait() { in.pending.Wait() }

func (in *Injector) record(ev FaultEvent) {
	in.mu.Lock()
	in.events = append(in.events, ev)
	in.mu.Unlock()
	if in.OnFault != nil {
		in.OnFault(ev)
	}
}

// Events returns the events so far, in the order they were recorded.
func (in *Injector) Events() []FaultEvent {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]FaultEvent(nil), in.events...)
}

// sleepCtx sleeps for d or until ctx ends, and reports whether it slept the
// whole time.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deploy applies a deploy fault: Deploy, or a rolling SIGTERM.
func (in *Injector) deploy(ctx context.Context, f Fault) {
	ev := FaultEvent{Fault: f, Time: time.Now(), Action: "deploy"}
	var err error
	if in.Deploy != nil {
		err = in.Deploy(ctx)
	} else {
		ev.Action = "SIGTERM, one by one"
		ev.Pids, err = in.rollingTerm(ctx)
	}
	if err != nil {
		ev.Err = err.Error()
	}
	in.record(ev)
}

// rollingTerm SIGTERMs each backend in turn and waits until its process
// is replaced by a new one before the next.
func (in *Injector) rollingTerm(ctx context.Context) ([]int, error) {
	pidOf, n := in.PidOf, in.NumBackends
	if pidOf == nil {
		n = len(in.Backends)
		pidOf = func(i int) int {
			if in.Backends[i].Running() {
				return in.Backends[i].Pid()
			}
			return 0
		}
	}
	var pids []int
	for i := range n {
		pid := pidOf(i)
		if pid <= 0 {
			return pids, fmt.Errorf("backend %d: %w", i, ErrNotRunning)
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			return pids, err
		}
		pids = append(pids, pid)
		deadline := time.Now().Add(30 * time.Second)
		for p := pidOf(i); p == pid || p <= 0; p = pidOf(i) {
			if time.Now().After(deadline) || !sleepCtx(ctx, 10*time.Millisecond) {
				return pids, fmt.Errorf("backend %d (pid %d) did not come back", i, pid)
			}
		}
	}
	return pids, nil
}
