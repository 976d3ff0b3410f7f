package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// live is the demo's terminal output during a run. Timeline lines (faults,
// restarts) are printed as they happen. On a terminal a block below them
// shows every backend's state and the running counts, redrawn in place four
// times a second; otherwise a progress line is printed every second.
type live struct {
	out io.Writer
	tty bool

	mu       sync.Mutex
	start    time.Time // the load's start; zero before
	name     string
	duration time.Duration
	planned  int
	applied  int
	ids      []string
	watcher  *chaos.StateWatcher
	procs    []proc
	drawn    int  // lines of the block on screen
	drawing  bool // the block is live: from the load's start to the end of run
	counts   counts
	samples  []sample // (time, total) for the request rate
}

// proc is a backend process as the injector and the supervisor left it.
type proc struct {
	state string // chaos.ProcUp, ProcHung, ProcDown
	pid   int
}

type counts struct {
	total, ok, failed int
	byKind            map[string]int
	byStatus          map[string]int
	byMethod          map[string]int
}

type sample struct {
	at    time.Time
	total int
}

func newLive(out io.Writer, tty bool) *live { return &live{out: out, tty: tty} }

// begin starts the view of one run, before its load.
func (l *live) begin(name string, duration time.Duration, planned int, ids []string, pids []int, w *chaos.StateWatcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.name, l.duration, l.planned, l.applied = name, duration, planned, 0
	l.ids, l.watcher = ids, w
	l.procs = make([]proc, len(pids))
	for i, pid := range pids {
		l.procs[i] = proc{chaos.ProcUp, pid}
	}
	l.counts = counts{byKind: map[string]int{}, byStatus: map[string]int{}, byMethod: map[string]int{}}
	l.samples = nil
	l.start = time.Time{}
}

// setStart marks the load's start: lines get a time offset from then on.
func (l *live) setStart(t time.Time) {
	l.mu.Lock()
	l.start, l.drawing = t, !t.IsZero()
	l.mu.Unlock()
}

// line prints a timeline line above the block.
func (l *live) line(at time.Time, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prefix := "        "
	if !l.start.IsZero() {
		prefix = fmt.Sprintf("%+7.3fs", at.Sub(l.start).Seconds())
	}
	l.erase()
	fmt.Fprintf(l.out, prefix+"  "+format+"\n", args...)
	l.draw()
}

// result counts one finished request; called concurrently by the workers.
func (l *live) result(r chaos.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Err == chaos.ErrCanceled {
		return
	}
	c := &l.counts
	c.total++
	if r.OK() {
		c.ok++
		return
	}
	c.failed++
	c.byKind[r.Err]++
	c.byMethod[r.Method]++
	if r.Err == chaos.ErrStatus {
		c.byStatus[strconv.Itoa(r.Status)]++
	}
}

// fault records an injector event and prints it.
func (l *live) fault(ev chaos.FaultEvent) {
	l.mu.Lock()
	if ev.Err == "" {
		state := chaos.ProcDown
		switch ev.Action {
		case "SIGSTOP":
			state = chaos.ProcHung
		case "SIGCONT after pause":
			state = chaos.ProcUp
		}
		for i := range l.procs {
			if ev.Backend < 0 || ev.Backend == i {
				l.procs[i].state = state
			}
		}
		if ev.Action != "SIGKILL after hang" && ev.Action != "SIGCONT after pause" {
			l.applied++
		}
	}
	who := "all"
	if ev.Backend >= 0 && ev.Backend < len(l.ids) {
		who = l.ids[ev.Backend]
	}
	l.mu.Unlock()
	msg := fmt.Sprintf("fault   %-6s %-3s %s pid %v", ev.Kind, who, ev.Action, ev.Pids)
	if ev.Err != "" {
		msg += " (" + ev.Err + ")"
	}
	l.line(ev.Time, "%s", msg)
}

// restart records a supervisor restart and prints it.
func (l *live) restart(ev chaos.RestartEvent) {
	if ev.Err != "" {
		l.line(ev.Time, "restart %s failed: %s", ev.ID, ev.Err)
		return
	}
	l.mu.Lock()
	if ev.Backend >= 0 && ev.Backend < len(l.procs) {
		l.procs[ev.Backend] = proc{chaos.ProcUp, ev.NewPid}
	}
	l.mu.Unlock()
	l.line(ev.Time, "restart %s: pid %d -> %d (down %v)", ev.ID, ev.OldPid, ev.NewPid, ev.Time.Sub(ev.ExitedAt).Round(time.Millisecond))
}

// run refreshes the view until ctx ends, then draws it one last time.
func (l *live) run(ctx context.Context) {
	every := time.Second
	if l.tty {
		every = 250 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			if l.tty {
				l.erase()
				l.draw()
			}
			l.drawn, l.drawing = 0, false // leave the last state on screen
			l.mu.Unlock()
			return
		case now := <-tick.C:
			l.mu.Lock()
			l.samples = append(l.samples, sample{now, l.counts.total})
			if l.tty {
				l.erase()
				l.draw()
			} else {
				l.progress(now)
			}
			l.mu.Unlock()
		}
	}
}

// rate is the request rate over the last second or so.
func (l *live) rate() float64 {
	n := len(l.samples)
	if n < 2 {
		return 0
	}
	last := l.samples[n-1]
	first := l.samples[max(0, n-1-int(time.Second/(250*time.Millisecond)))]
	if !l.tty {
		first = l.samples[n-2]
	}
	if d := last.at.Sub(first.at).Seconds(); d > 0 {
		return float64(last.total-first.total) / d
	}
	return 0
}

// erase removes the block from the screen (terminal only). l.mu is held.
func (l *live) erase() {
	if l.tty && l.drawn > 0 {
		fmt.Fprintf(l.out, "\x1b[%dF\x1b[J", l.drawn)
		l.drawn = 0
	}
}

// draw prints the block (terminal only, once the load runs). Lines are not
// wrapped (auto-wrap is off while drawing), so the cursor arithmetic holds
// on a narrow terminal. l.mu is held.
func (l *live) draw() {
	if !l.tty || !l.drawing {
		return
	}
	lines := l.block(time.Now())
	var b strings.Builder
	b.WriteString("\x1b[?7l")
	for _, s := range lines {
		b.WriteString(s + "\x1b[K\n")
	}
	b.WriteString("\x1b[?7h")
	io.WriteString(l.out, b.String())
	l.drawn = len(lines)
}

// block renders the view. l.mu is held.
func (l *live) block(now time.Time) []string {
	elapsed := min(now.Sub(l.start), l.duration).Seconds()
	bold, dim, reset := "\x1b[1m", "\x1b[2m", "\x1b[0m"
	out := []string{
		fmt.Sprintf("%s── %s ── %.1fs of %v ── %d of %d faults ──%s", bold, l.name, elapsed, l.duration, l.applied, l.planned, reset),
		fmt.Sprintf("%s%-8s %-16s %-26s %-9s %s%s", dim, "backend", "process", "proxy view", "since", "detail", reset),
	}
	var views []chaos.BackendView
	mode := ""
	if l.watcher != nil {
		views, mode = l.watcher.Current(), l.watcher.Mode()
	}
	for i, id := range l.ids {
		p := l.procs[i]
		process := p.state
		if p.state != chaos.ProcDown {
			process = fmt.Sprintf("%-4s pid %d", p.state, p.pid)
		}
		view, since, detail := "n/a", "", ""
		if i < len(views) && views[i].Known {
			v := views[i]
			view = colorState(v.State) + v.State + reset
			if v.Reason != "" {
				view += " (" + v.Reason + ")"
			}
			view += strings.Repeat(" ", max(0, 26-len(v.State)-len(paren(v.Reason))))
			if d := v.Since.Sub(l.start); d >= 0 {
				since = fmt.Sprintf("+%.2fs", d.Seconds())
			} else {
				since = "before"
			}
			switch mode {
			case chaos.ModeFailover:
				detail = fmt.Sprintf("beats %d, in flight %d", v.Beats, v.InFlight)
			case chaos.ModeReverseProxy:
				detail = fmt.Sprintf("passive fails %d, in flight %d", v.Fails, v.InFlight)
			}
		} else {
			view = fmt.Sprintf("%-26s", view)
		}
		out = append(out, fmt.Sprintf("%-8s %-16s %s %-9s %s", id, process, view, since, detail))
	}
	c := l.counts
	failed := fmt.Sprintf("failed %d", c.failed)
	if c.failed > 0 {
		var parts []string
		for _, k := range []string{chaos.ErrStatus, chaos.ErrTransport, chaos.ErrTimeout} {
			if n := c.byKind[k]; n > 0 {
				s := fmt.Sprintf("%s %d", k, n)
				if k == chaos.ErrStatus {
					s += " " + mapString(c.byStatus)
				}
				parts = append(parts, s)
			}
		}
		failed = fmt.Sprintf("\x1b[31mfailed %d\x1b[0m: %s; by method %s", c.failed, strings.Join(parts, ", "), mapString(c.byMethod))
	}
	out = append(out,
		fmt.Sprintf("requests %d (%.0f req/s)  ok %d  %s", c.total, l.rate(), c.ok, failed))
	return out
}

// progress prints the plain progress line (not a terminal). l.mu is held.
func (l *live) progress(now time.Time) {
	if l.start.IsZero() {
		return
	}
	c := l.counts
	detail := ""
	if c.failed > 0 {
		var parts []string
		for _, k := range []string{chaos.ErrStatus, chaos.ErrTransport, chaos.ErrTimeout} {
			if n := c.byKind[k]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", k, n))
			}
		}
		detail = " [" + strings.Join(parts, ", ") + "]"
	}
	states := ""
	if l.watcher != nil && l.watcher.Mode() != "" {
		var parts []string
		for i, v := range l.watcher.Current() {
			if v.Known && i < len(l.ids) {
				parts = append(parts, l.ids[i]+" "+v.State+paren(v.Reason))
			}
		}
		states = " | " + strings.Join(parts, ", ")
	}
	fmt.Fprintf(l.out, "%+7.3fs  progress: %d requests (%.0f req/s), %d failed%s%s\n",
		now.Sub(l.start).Seconds(), c.total, l.rate(), c.failed, detail, states)
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func colorState(state string) string {
	switch state {
	case chaos.StateHealthy:
		return "\x1b[32m"
	case chaos.StateProbation:
		return "\x1b[36m"
	case chaos.StateEjected:
		return "\x1b[31m"
	case chaos.StateRestarting:
		return "\x1b[33m"
	case chaos.StateSuspected:
		return "\x1b[35m"
	}
	return "\x1b[2m"
}

// mapString renders counts as "[502 3, 503 1]".
func mapString(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
