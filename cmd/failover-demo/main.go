// Command failover-demo shows what clients see when crash-only backends
// crash, hang and all go down at once behind Caddy.
//
//	go run ./cmd/failover-demo            # failover only
//	go run ./cmd/failover-demo -compare   # the same scenario through stock reverse_proxy too
//
// It builds ./cmd/caddy and ./examples/backend into a temporary directory and
// starts Caddy with the `failover` directive, whose built-in supervisor
// (`spawn`) runs the backends on free loopback ports: it starts them,
// restarts one that exits, and restarts one that hangs when failover asks.
// Then it runs a closed-loop load (GET /work and POST /order) while it
// injects a seeded, reproducible schedule of faults into the current
// processes (found by asking each backend its pid): crash (SIGKILL), hang
// (SIGSTOP, and nothing more: restarting it is failover's job) and outage
// (every backend SIGKILLed at once).
//
// A site block without spawn (stock reverse_proxy in -compare, say) gets
// backends started by the demo, with a supervisor stand-in that restarts an
// exited backend after -restart-sec (like systemd's RestartSec) and a hung
// one SIGKILLed -hang-for after its SIGSTOP, as a supervisor asked to restart
// it would: stock reverse_proxy has no way to have a hung process restarted.
//
// While it runs it prints every fault and restart as it happens and, on a
// terminal, a block that shows every backend's state (the proxy's view, read
// from Caddy's admin API every 10ms, and the process's) and the running
// counts, redrawn in place; when the output is not a terminal, a progress
// line every second instead. At the end it prints the report: failures by
// kind, status and method, the success ratio in nines, latency, the longest
// time without a successful answer, how many orders were executed twice (an
// unsafe replay) or executed although the client saw a failure, and how long
// the proxy took to take a crashed or hung backend out of service.
//
// With -compare it runs the same scenario (same seed, faults and load, fresh
// backends and records) a second time through stock reverse_proxy set up
// with its best failover settings (-stock-directive), prints both Caddyfile
// blocks and both reports side by side with ratios.
//
// It writes an HTML report with a timeline chart of every run (-html) and,
// with -json, the raw figures. The exit status is 0 whatever the clients saw;
// it is non-zero only when the demo could not be set up. Every process it
// started is gone on exit and on Ctrl-C (the spawned backends through a
// graceful `caddy stop`, then checked).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// stockDirective is stock reverse_proxy with its best failover settings for
// this scenario (Caddy v2.11.9; read in modules/caddyhttp/reverseproxy, and
// tuned by running this demo with -directive set to variants of it):
//
//   - lb_policy round_robin: failover rotates too; random may pick the
//     backend that just failed again (passive checks then catch it).
//   - lb_try_duration 10s: hold requests while no upstream is available, as
//     long as failover's default hold. Without it (or lb_retries) stock does
//     not retry at all.
//   - lb_try_interval 10ms: the poll while none is available, and also a
//     pause after every failed attempt even when a peer is up, so small is
//     better; 8 held clients polling every 10ms cost nothing.
//   - lb_retries 1000: only a cap, never reached before lb_try_duration
//     (10s / 10ms); every poll counts as a retry, so a small cap would end
//     holds early during a total outage.
//   - lb_retry_match method GET HEAD OPTIONS TRACE PUT DELETE: replay
//     idempotent requests after errors other than dial errors (a crash
//     mid-request, the response header timeout). Dial errors are retried for
//     every method anyway. Once lb_retry_match is set GET is no longer
//     retried implicitly (tryAgain: only a nil RetryMatch retries GET by
//     default), so GET must be listed. POST is not: replaying it is unsafe
//     (RFC 9110 §9.2.2), and failover does not replay it either.
//   - health_uri /health, health_interval 250ms, health_timeout 200ms,
//     health_fails 2, health_passes 1: failover's heartbeat settings. One
//     failed probe (fails 1) would let a single slow probe on a busy machine
//     eject a healthy backend, with no guard against ejecting them all; it
//     did not help in runs of this scenario.
//   - fail_duration 250ms, max_fails 1: one failed request takes an upstream
//     out at once, for 250ms. Longer keeps restarted backends out: with 1s
//     every total outage stalls clients for a second; shorter lets the active
//     check mark them down, and recovery then waits for its next probe.
//   - dial_timeout 200ms: a dead local process refuses at once; a dial only
//     waits on a frozen process's full backlog. (The default is 3s.)
//   - response_header_timeout 250ms: a hung backend holds a request until
//     this fires (there is no default); then it counts as a passive failure
//     and GETs are retried. 50 times the 5ms of work and about 10 times the
//     loaded p99 here; lower cuts off slow but good answers (a POST then
//     fails although it may run).
//   - no unhealthy_latency (a slow answer is still an answer; the timeout
//     covers hangs) and no request_buffers (only POST has a body, and it is
//     replayed only after a dial error, which works unbuffered).
const stockDirective = `reverse_proxy {{upstreams}} {
	lb_policy round_robin
	lb_try_duration 10s
	lb_try_interval 10ms
	lb_retries 1000
	lb_retry_match {
		method GET HEAD OPTIONS TRACE PUT DELETE
	}
	health_uri /health
	health_interval 250ms
	health_timeout 200ms
	health_fails 2
	health_passes 1
	fail_duration 250ms
	max_fails 1
	transport http {
		dial_timeout 200ms
		response_header_timeout 250ms
	}
}`

// defaultDirective runs the pool under failover's built-in supervisor. With
// -keys failover gives every POST an Idempotency-Key and the backends keep
// the key's contract in a shared store.
const defaultDirective = `failover {
	health_uri /health{{if .Keys}}
	idempotency_key generate{{end}}
	spawn {{.BackendBin}} -addr {backend} -id b{index} -records {{.Records}}{{if .Keys}} -keys-dir {{.KeysDir}}{{end}} {
		to {{upstreams}}
	}
}`

var spawnRE = regexp.MustCompile(`(?m)^\s*spawn\s`)

// spawns reports whether a site block has Caddy run the backends.
func spawns(block string) bool { return spawnRE.MatchString(block) }

type config struct {
	Duration       time.Duration `json:"duration_ns"`
	Backends       int           `json:"backends"`
	Concurrency    int           `json:"concurrency"`
	Faults         []string      `json:"faults"`
	Every          time.Duration `json:"every_ns"`
	HangFor        time.Duration `json:"hang_for_ns"`
	RestartSec     time.Duration `json:"restart_sec_ns"`
	Seed           int64         `json:"seed"`
	PostRatio      float64       `json:"post_ratio"`
	WorkMs         int           `json:"work_ms"`
	SlowRatio      float64       `json:"slow_ratio,omitempty"`
	SlowMs         int           `json:"slow_ms,omitempty"`
	PauseFor       time.Duration `json:"pause_for_ns,omitempty"`
	Timeout        time.Duration `json:"timeout_ns"`
	Poll           time.Duration `json:"poll_ns"`
	Warmup         time.Duration `json:"warmup_ns"`
	Directive      string        `json:"directive"`
	StockDirective string        `json:"stock_directive,omitempty"`
	Compare        bool          `json:"compare"`
	Keys           bool          `json:"keys"`
	JSON           string        `json:"-"`
	HTML           string        `json:"-"`
	Keep           bool          `json:"-"`
	Plain          bool          `json:"-"`
}

func main() {
	var cfg config
	var faults string
	flag.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long the load runs (per proxy)")
	flag.IntVar(&cfg.Backends, "backends", 3, "number of backends")
	flag.IntVar(&cfg.Concurrency, "concurrency", 8, "closed-loop clients")
	flag.StringVar(&faults, "faults", "crash,hang,outage", "comma-separated fault kinds (crash, hang, outage, deploy: a rolling restart, through failover's admin API or, for stock, SIGTERM one by one; pause: SIGSTOP one backend, SIGCONT it -pause-for later); empty: none")
	flag.DurationVar(&cfg.Every, "every", 2*time.Second, "one fault every this long")
	flag.DurationVar(&cfg.HangFor, "hang-for", 1500*time.Millisecond, "without spawn (stock reverse_proxy): how long a hung backend stays hung before the stand-in supervisor kills and restarts it")
	flag.DurationVar(&cfg.RestartSec, "restart-sec", 100*time.Millisecond, "without spawn: the stand-in supervisor's pause between a backend's exit and its restart")
	flag.Int64Var(&cfg.Seed, "seed", 1, "seed of the fault schedule and the request mix")
	flag.Float64Var(&cfg.PostRatio, "post-ratio", 0.2, "share of requests that are POST /order (not idempotent)")
	flag.IntVar(&cfg.WorkMs, "work-ms", 5, "milliseconds each GET /work takes in the backend")
	flag.Float64Var(&cfg.SlowRatio, "slow-ratio", 0, "share of GETs that are legitimately slow: GET /work?ms=<slow-ms>")
	flag.IntVar(&cfg.SlowMs, "slow-ms", 1500, "milliseconds a slow GET (-slow-ratio) takes in the backend")
	flag.DurationVar(&cfg.PauseFor, "pause-for", 100*time.Millisecond, "how long a pause fault stops a backend (SIGSTOP, then SIGCONT)")
	flag.DurationVar(&cfg.Timeout, "timeout", 15*time.Second, "client timeout per request")
	flag.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "unmeasured GET load before each run, so that every proxy starts warm")
	flag.DurationVar(&cfg.Poll, "poll", 10*time.Millisecond, "how often to read the proxy's backend states from Caddy's admin API; 0: never (no states, no eject latencies)")
	flag.StringVar(&cfg.Directive, "directive", defaultDirective,
		"the site block, a Go template: {{upstreams}} is \"127.0.0.1:P1 127.0.0.1:P2 …\" ({{.Upstreams}} too), {{.Addrs}} the list, {{.BackendBin}} the example backend, {{.Records}} the order record file, {{.Keys}} -keys and {{.KeysDir}} the backends' key store; with spawn Caddy runs the backends, else the demo does")
	flag.BoolVar(&cfg.Keys, "keys", false, "exactly-once POSTs: the backends keep Idempotency-Keys in a shared store (-keys-dir), and the default site block has failover generate a key for every POST (idempotency_key generate); {{.Keys}} is true in the site block template")
	flag.BoolVar(&cfg.Compare, "compare", false, "run the same scenario through stock reverse_proxy (-stock-directive) too, and compare")
	flag.StringVar(&cfg.StockDirective, "stock-directive", stockDirective, "the site block of the -compare run")
	flag.StringVar(&cfg.JSON, "json", "", "also write the runs (config, reports, faults, restarts, transitions, timelines) as JSON to this `file`")
	flag.StringVar(&cfg.HTML, "html", filepath.Join(os.TempDir(), "failover-demo-report.html"), "write the HTML report to this `file`; empty: none")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (Caddyfiles, Caddy logs, order records)")
	flag.BoolVar(&cfg.Plain, "plain", false, "plain lines even on a terminal (no live view)")
	flag.Parse()
	if faults != "" {
		cfg.Faults = strings.Split(faults, ",")
	}
	if !cfg.Compare {
		cfg.StockDirective = ""
	}
	if err := validate(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "failover-demo:", err)
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once; children die with us (Pdeathsig)
	}()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "failover-demo:", err)
		os.Exit(1)
	}
}

func validate(cfg config) error {
	switch {
	case cfg.Backends < 1 || cfg.Backends > 100:
		return errors.New("-backends must be in 1..100")
	case cfg.Concurrency < 1 || cfg.Concurrency > 1000:
		return errors.New("-concurrency must be in 1..1000")
	case cfg.Duration <= 0 || cfg.Every <= 0:
		return errors.New("-duration and -every must be positive")
	case cfg.PostRatio < 0 || cfg.PostRatio > 1:
		return errors.New("-post-ratio must be in [0, 1]")
	case cfg.SlowRatio < 0 || cfg.SlowRatio > 1:
		return errors.New("-slow-ratio must be in [0, 1]")
	case cfg.SlowMs < 0 || cfg.SlowMs > 60000:
		return errors.New("-slow-ms must be in 0..60000 (the backend's bound)")
	case cfg.PauseFor < 0 || cfg.PauseFor > time.Minute:
		return errors.New("-pause-for must be in 0..1m")
	case cfg.Poll < 0 || cfg.Warmup < 0:
		return errors.New("-poll and -warmup must not be negative")
	}
	return chaos.ValidateKinds(cfg.Faults)
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// proxy is one run to make: a name and a site block.
type proxy struct{ name, block string }

func run(ctx context.Context, cfg config) error {
	dir, err := os.MkdirTemp("", "failover-demo-")
	if err != nil {
		return err
	}
	if cfg.Keep {
		fmt.Println("work directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	view := newLive(os.Stdout, isTerminal(os.Stdout) && !cfg.Plain)

	fmt.Println("building ./cmd/caddy and ./examples/backend (the first build of Caddy takes a minute or two)")
	caddyBin, backendBin := filepath.Join(dir, "bin", "caddy"), filepath.Join(dir, "bin", "backend")
	var caddyErr error
	var wg sync.WaitGroup
	wg.Go(func() { caddyErr = chaos.BuildBinary(ctx, "./cmd/caddy", caddyBin) })
	backendErr := chaos.BuildBinary(ctx, "./examples/backend", backendBin)
	wg.Wait()
	if err := errors.Join(caddyErr, backendErr); err != nil {
		return err
	}

	proxies := []proxy{{name: nameOf(cfg.Directive, "proxy"), block: cfg.Directive}}
	if cfg.Compare {
		name := nameOf(cfg.StockDirective, "stock")
		if name == proxies[0].name {
			name += " (2)"
		}
		proxies = append(proxies, proxy{name: name, block: cfg.StockDirective})
	}
	plan := chaos.Schedule(cfg.Seed, cfg.Duration, cfg.Backends, cfg.Faults, cfg.Every)
	if len(cfg.Faults) == 0 {
		plan = nil
	}
	fmt.Printf("load: %d clients for %v per proxy, %.0f%% POST%s; %d faults (%s), one every %v, seed %d\n",
		cfg.Concurrency, cfg.Duration, 100*cfg.PostRatio, map[bool]string{true: " (backends keep Idempotency-Keys)"}[cfg.Keys], len(plan), strings.Join(cfg.Faults, ","), cfg.Every, cfg.Seed)

	var runs []*chaos.Run
	for i, p := range proxies {
		if ctx.Err() != nil {
			break
		}
		if len(proxies) > 1 {
			fmt.Printf("\n=== run %d of %d: %s\n", i+1, len(proxies), p.name)
		}
		r, err := runScenario(ctx, cfg, view, p, plan, caddyBin, backendBin, filepath.Join(dir, fmt.Sprintf("run%d", i+1)))
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		return ctx.Err()
	}

	fmt.Println()
	for _, r := range runs {
		fmt.Printf("%s, the site block used:\n%s\n%s\n\n", r.Name, indent(r.Block), runNote(r.Block, cfg))
	}
	if len(runs) == 1 {
		r := runs[0]
		fmt.Printf("%s (%d faults applied, %d restarts)\n%s", r.Name, r.Report.FaultsApplied, r.Report.Restarts, r.Report)
	} else {
		var names []string
		var reps []chaos.Report
		for _, r := range runs {
			names, reps = append(names, r.Name), append(reps, r.Report)
		}
		fmt.Print(chaos.FormatTable(names, chaos.SummaryRows(reps), "ratio"))
		fmt.Printf("ratio: %s / %s. crash/hang → eject: from the signal to the proxy taking the backend out of service\n", names[0], names[1])
		fmt.Printf("(failover: the engine's own time, from its admin API; reverse_proxy: its first passive failure, seen by\n")
		fmt.Printf("polling its admin API every %v, or its active health check's \"unhealthy\" event, whichever came first).\n", cfg.Poll)
	}
	if ctx.Err() != nil {
		fmt.Println("interrupted: the run was cut short")
	}

	if cfg.JSON != "" {
		b, err := json.MarshalIndent(map[string]any{"config": cfg, "plan": plan, "runs": runs}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.JSON, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Println("JSON:", cfg.JSON)
	}
	if cfg.HTML != "" {
		var buf bytes.Buffer
		err := chaos.WriteHTML(&buf, chaos.Page{
			Title:     "caddy-failover chaos demo",
			Generated: time.Now(),
			Command:   commandLine(),
			Machine:   machine(),
			Scenario:  scenario(cfg, len(plan)),
			Runs:      runs,
			Notes: []string{
				"Failures are what the clients saw: a status other than 2xx, a transport error or a timeout. Nines = -log10(1 - success ratio).",
				fmt.Sprintf("crash/hang → eject: from the signal (the injector's clock) to the proxy taking the backend out of service: for failover the engine's own transition time (GET /failover/pools, polled every %[1]v); for stock reverse_proxy, which has no such API, the first of a passive failure (GET /reverse_proxy/upstreams, polled every %[1]v) and its active health check's \"unhealthy\" event. hang → restart asked: until the backend's state shows \"restarting\" (n/a while the proxy asks no one).", cfg.Poll),
				"Backends: " + runNote(cfg.Directive, cfg) + func() string {
					if cfg.Compare {
						return " Stock: " + runNote(cfg.StockDirective, cfg)
					}
					return ""
				}(),
				"Each proxy gets fresh backends and a fresh order record, and a warm-up of GETs that is not measured; the two runs follow each other on the same machine, so other load on it weighs on both differently: compare ratios over several runs.",
			},
		})
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.HTML, buf.Bytes(), 0o644); err != nil {
			return err
		}
		abs, _ := filepath.Abs(cfg.HTML)
		fmt.Println("HTML report: file://" + abs)
	}
	return nil
}

// runNote says who runs the backends of a run with this site block.
func runNote(block string, cfg config) string {
	if spawns(block) {
		return "(backends run by Caddy: failover's built-in supervisor (spawn) starts them, restarts one that exits, and restarts one that hangs when failover asks; the demo only signals them)"
	}
	return fmt.Sprintf("(backends started by the demo; a stand-in supervisor restarts one %v after it exits. This proxy has no way to have a hung backend restarted, so the stand-in SIGKILLs a hung one %v after its SIGSTOP, as a supervisor asked to restart it would)", cfg.RestartSec, cfg.HangFor)
}

// runScenario runs the scenario once through one proxy, on fresh backends
// and a fresh record file in dir.
func runScenario(ctx context.Context, cfg config, view *live, p proxy, plan []chaos.Fault, caddyBin, backendBin, dir string) (*chaos.Run, error) {
	view.setStart(time.Time{}) // lines before the load have no offset
	events := filepath.Join(dir, "events.log")
	spawned := spawns(p.block)
	rigCfg := chaos.RigConfig{
		CaddyBin: caddyBin, BackendBin: backendBin, Dir: dir, Backends: cfg.Backends, Keys: cfg.Keys,
		Globals: chaos.EventLogOptions(events) + "\n" + chaos.QuietAdminLog,
	}
	if spawned { // Caddy runs them: only pick their ports
		ports, err := chaos.FreePorts(cfg.Backends)
		if err != nil {
			return nil, err
		}
		for _, port := range ports {
			rigCfg.External = append(rigCfg.External, fmt.Sprintf("127.0.0.1:%d", port))
		}
	}
	rig, err := chaos.NewRig(ctx, rigCfg)
	if err != nil {
		return nil, err
	}
	defer rig.Close() // crash-only all the way: no graceful stop needed (but see stopSpawned)
	for _, b := range rig.Backends() {
		view.line(time.Now(), "backend %s on %s, pid %d", b.Config().ID, b.Config().Addr, b.Pid())
	}
	block, err := rig.ExpandBlock(p.block)
	if err != nil {
		return nil, fmt.Errorf("-directive: %w", err)
	}
	caddyfile, err := rig.Caddyfile(p.block)
	if err != nil {
		return nil, err
	}
	caddy, err := rig.StartCaddy(ctx, p.block)
	if err != nil {
		return nil, err
	}
	view.line(time.Now(), "caddy on %s, pid %d, site block: %s", caddy.URL(), caddy.Pid(), strings.Join(strings.Fields(block), " "))

	// With spawn the backends are Caddy's children: stop Caddy gracefully
	// (spawn stops their process groups), then make sure none is left.
	var pids *chaos.PidWatcher
	var stopOnce sync.Once
	stopSpawned := func() {
		stopOnce.Do(func() {
			if err := caddy.Stop(); err != nil {
				view.line(time.Now(), "warning: caddy stop: %v", err)
			}
			var seen []int
			if pids != nil {
				pids.Stop()
				seen = pids.Seen()
			}
			if left := killLeftovers(seen, backendBin); len(left) > 0 {
				view.line(time.Now(), "warning: backends left after caddy stop, killed: pids %v", left)
			}
		})
	}
	if spawned {
		defer stopSpawned()
	}

	watchCfg := chaos.WatchConfig{Admin: rig.Admin(), Addrs: rig.Addrs(), EventLog: events, MaxFails: maxFails(block), Interval: cfg.Poll}
	if cfg.Poll <= 0 {
		watchCfg.Addrs = nil // watches nothing
	}
	watcher := chaos.WatchStates(watchCfg)
	stopped := false
	stopWatch := func() []chaos.Transition {
		if stopped {
			return nil
		}
		stopped = true
		return watcher.Stop()
	}
	defer stopWatch()
	if err := warmUp(ctx, rig.URL("/work"), watcher, cfg.Backends); err != nil {
		return nil, fmt.Errorf("%w\ncaddy log:\n%s", err, tailString(caddy.Logs(), 2000))
	}
	if spawned {
		// every 200ms: enough to count restarts; more would load the backends
		// of this run only, and bias the comparison
		pids = chaos.WatchPids(rig.Addrs(), rig.IDs(), 200*time.Millisecond, view.restart)
		for i, pid := range pids.Pids() {
			view.line(time.Now(), "backend %s on %s, pid %d (spawned by caddy)", rig.IDs()[i], rig.Addrs()[i], pid)
		}
	}

	if cfg.Warmup > 0 {
		view.line(time.Now(), "warm-up: %v of GETs, not measured", cfg.Warmup)
		chaos.RunLoad(ctx, chaos.LoadConfig{
			URL: rig.URL(""), Concurrency: cfg.Concurrency, Duration: cfg.Warmup, Seed: -cfg.Seed, Timeout: cfg.Timeout, WorkMs: cfg.WorkMs,
		})
	}

	var sup *chaos.Supervisor
	inj := &chaos.Injector{OnFault: view.fault, PauseFor: cfg.PauseFor}
	if spawned {
		view.begin(p.name, cfg.Duration, len(plan), rig.IDs(), pids.Pids(), watcher)
		inj.PidOf, inj.NumBackends = pids.PidOf, cfg.Backends
		// a deploy is failover's rolling restart, through its admin API
		inj.Deploy = func(ctx context.Context) error { return chaos.RollingRestart(ctx, rig.Admin()) }
	} else {
		var backendPids []int
		for _, b := range rig.Backends() {
			backendPids = append(backendPids, b.Pid())
		}
		view.begin(p.name, cfg.Duration, len(plan), rig.IDs(), backendPids, watcher)
		sup = rig.StartSupervisor(chaos.SupervisorConfig{RestartSec: cfg.RestartSec, OnRestart: view.restart})
		inj.Backends, inj.HangFor = rig.Backends(), cfg.HangFor
	}

	injCtx, stopInj := context.WithCancel(ctx)
	defer stopInj()
	start := time.Now()
	view.setStart(start)
	var bg sync.WaitGroup
	bg.Go(func() { inj.Run(injCtx, plan) })
	viewCtx, stopView := context.WithCancel(ctx)
	bg.Go(func() { view.run(viewCtx) })

	res := chaos.RunLoad(ctx, chaos.LoadConfig{
		URL:         rig.URL(""),
		Concurrency: cfg.Concurrency,
		Duration:    cfg.Duration,
		PostRatio:   cfg.PostRatio,
		Seed:        cfg.Seed,
		Timeout:     cfg.Timeout,
		WorkMs:      cfg.WorkMs,
		SlowRatio:   cfg.SlowRatio,
		SlowMs:      cfg.SlowMs,
		OnResult:    view.result,
	})
	stopInj() // without spawn: kills a backend still hung now
	stopView()
	bg.Wait()
	var restarts []chaos.RestartEvent
	if spawned {
		if killed := inj.KillStopped(); len(killed) > 0 {
			view.line(time.Now(), "still stopped at the end of the run, killed: pids %v", killed)
		}
		restarts = pids.Restarts()
	} else {
		sup.Stop()
		restarts = sup.Restarts()
	}
	source := watcher.Source()
	transitions := stopWatch()
	if failed, polls, last := watcher.Errors(); failed > polls/10 {
		view.line(time.Now(), "warning: %d of %d admin API polls failed (last: %v)", failed, polls, last)
	}
	if spawned {
		stopSpawned()
	}

	rep, err := chaos.Analyze(res, rig.RecordFiles()...)
	if err != nil {
		return nil, err
	}
	faults := inj.Events()
	rep.AddFaults(res.Start, cfg.Backends, faults, restarts, transitions, source)
	return &chaos.Run{
		Name: p.name, Block: block, Caddyfile: caddyfile, Backends: rig.IDs(), Addrs: rig.Addrs(), Start: res.Start,
		Report: rep, Faults: faults, Restarts: restarts, Transitions: transitions,
		Timeline: chaos.BuildTimeline(res, cfg.Backends, 100*time.Millisecond, faults, restarts, transitions),
	}, nil
}

// killLeftovers SIGKILLs what is left, after Caddy stopped, of the backends
// it spawned: any pid in seen still alive, and any live process running bin
// (the demo's own build, in its temporary directory). It returns their pids.
func killLeftovers(seen []int, bin string) []int {
	left := map[int]bool{}
	for _, pid := range seen {
		if chaos.Alive(pid) {
			left[pid] = true
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == bin && chaos.Alive(pid) {
				left[pid] = true
			}
		}
	}
	var out []int
	for pid := range left {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			out = append(out, pid)
		}
	}
	return out
}

// nameOf is the directive a site block starts with.
func nameOf(block, fallback string) string {
	if f := strings.Fields(block); len(f) > 0 && !strings.HasPrefix(f[0], "{{") {
		return f[0]
	}
	return fallback
}

var maxFailsRE = regexp.MustCompile(`(?m)^\s*max_fails\s+(\d+)`)

// maxFails is reverse_proxy's max_fails in a block; 1 if unset.
func maxFails(block string) int {
	if m := maxFailsRE.FindStringSubmatch(block); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

// warmUp waits until one request through Caddy succeeds and, behind
// failover, until every backend is in service, so the load starts against a
// working proxy with the whole pool; it polls every 50ms for at most 10s.
func warmUp(ctx context.Context, url string, w *chaos.StateWatcher, n int) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			last = resp.Status
		} else {
			last = err.Error()
		}
		if err == nil && resp.StatusCode == http.StatusOK && allInService(w, n) {
			return nil
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("no successful request through caddy with every backend in service within 10s (last: %s; states %+v)", last, w.Current())
}

func allInService(w *chaos.StateWatcher, n int) bool {
	if w.Mode() != chaos.ModeFailover {
		return true // stock reverse_proxy starts every upstream healthy
	}
	views := w.Current()
	for _, v := range views {
		if !v.Known || !chaos.InService(v.State) {
			return false
		}
	}
	return len(views) == n
}

func indent(s string) string {
	return "\t" + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n\t")
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func commandLine() string {
	args := []string{"go run ./cmd/failover-demo"}
	for _, a := range os.Args[1:] {
		if strings.ContainsAny(a, " \t\n{}'\"") {
			a = strconv.Quote(a)
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

// machine describes the host: CPU model, cores, OS.
func machine() string {
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	s := fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	if model != "" {
		s = model + ", " + s
	}
	return s
}

func scenario(cfg config, faults int) string {
	s := fmt.Sprintf("%v per proxy after a %v warm-up, %d backends, %d closed-loop clients, %.0f%% POST /order, GET /work?ms=%d; ",
		cfg.Duration, cfg.Warmup, cfg.Backends, cfg.Concurrency, 100*cfg.PostRatio, cfg.WorkMs)
	if cfg.SlowRatio > 0 {
		s += fmt.Sprintf("%.1f%% of GETs slow (ms=%d); ", 100*cfg.SlowRatio, cfg.SlowMs)
	}
	if cfg.Keys {
		s += "the backends keep Idempotency-Keys in a shared store (-keys); "
	}
	if faults == 0 {
		s += "no faults"
	} else {
		s += fmt.Sprintf("%d faults (%s), one every %v; ", faults, strings.Join(cfg.Faults, ", "), cfg.Every)
	}
	for i, b := range []string{cfg.Directive, cfg.StockDirective} {
		switch {
		case b == "" || (i == 1 && !cfg.Compare):
		case spawns(b):
			s += "run " + strconv.Itoa(i+1) + ": Caddy runs the backends (spawn) and restarts what exits or hangs; "
		default:
			s += fmt.Sprintf("run %d: a stand-in supervisor restarts a backend %v after exit and SIGKILLs a hung one %v after its SIGSTOP; ", i+1, cfg.RestartSec, cfg.HangFor)
		}
	}
	return s + fmt.Sprintf("seed %d", cfg.Seed)
}
