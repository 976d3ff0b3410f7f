// Command failover-demo shows what clients see when crash-only backends
// crash, hang and all go down at once behind Caddy.
//
//	go run ./cmd/failover-demo
//
// It builds ./cmd/caddy and ./examples/backend into a temporary directory,
// starts the backends on free loopback ports (with a supervisor stand-in that
// restarts an exited backend after 100ms, like systemd's RestartSec), starts
// Caddy in front of them with the `failover` directive, then runs a closed-loop
// load (GET /work and POST /order) while it injects a seeded, reproducible
// schedule of faults. It prints every fault and restart as it happens, a
// progress line every second and, at the end, a report: failures by kind,
// latency, the longest time without a successful answer, and how many orders
// were executed twice (an unsafe replay) or executed although the client saw
// a failure.
//
// Compare with Caddy's stock proxy:
//
//	go run ./cmd/failover-demo -directive 'reverse_proxy {{.Upstreams}}'
//
// The exit status is 0 whatever the clients saw; it is non-zero only when the
// demo could not be set up. Every process it started is killed on exit and on
// Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/template"
	"time"

	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

type config struct {
	Duration    time.Duration `json:"duration_ns"`
	Backends    int           `json:"backends"`
	Concurrency int           `json:"concurrency"`
	Faults      []string      `json:"faults"`
	Every       time.Duration `json:"every_ns"`
	HangFor     time.Duration `json:"hang_for_ns"`
	RestartSec  time.Duration `json:"restart_sec_ns"`
	Seed        int64         `json:"seed"`
	PostRatio   float64       `json:"post_ratio"`
	WorkMs      int           `json:"work_ms"`
	Timeout     time.Duration `json:"timeout_ns"`
	Directive   string        `json:"directive"`
	JSON        string        `json:"-"`
	Keep        bool          `json:"-"`
}

func main() {
	var cfg config
	var faults string
	flag.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long the load runs")
	flag.IntVar(&cfg.Backends, "backends", 3, "number of backends")
	flag.IntVar(&cfg.Concurrency, "concurrency", 8, "closed-loop clients")
	flag.StringVar(&faults, "faults", "crash,hang,outage", "comma-separated fault kinds (crash, hang, outage); empty: none")
	flag.DurationVar(&cfg.Every, "every", 2*time.Second, "one fault every this long")
	flag.DurationVar(&cfg.HangFor, "hang-for", 1500*time.Millisecond, "how long a hung backend stays hung before it is killed and restarted")
	flag.DurationVar(&cfg.RestartSec, "restart-sec", 100*time.Millisecond, "pause between a backend's exit and its restart")
	flag.Int64Var(&cfg.Seed, "seed", 1, "seed of the fault schedule and the request mix")
	flag.Float64Var(&cfg.PostRatio, "post-ratio", 0.2, "share of requests that are POST /order (not idempotent)")
	flag.IntVar(&cfg.WorkMs, "work-ms", 5, "milliseconds each GET /work takes in the backend")
	flag.DurationVar(&cfg.Timeout, "timeout", 15*time.Second, "client timeout per request")
	flag.StringVar(&cfg.Directive, "directive", "failover {{.Upstreams}}",
		"the site block, a Go template: {{.Upstreams}} is \"127.0.0.1:P1 127.0.0.1:P2 …\", {{.Addrs}} the list")
	flag.StringVar(&cfg.JSON, "json", "", "also write the report, faults and restarts as JSON to this `file`")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (Caddyfile, Caddy log, order records)")
	flag.Parse()
	if faults != "" {
		cfg.Faults = strings.Split(faults, ",")
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
	}
	return chaos.ValidateKinds(cfg.Faults)
}

// printer serializes the timeline lines printed from several goroutines.
type printer struct {
	mu    sync.Mutex
	start time.Time // the load's start; zero before it
}

func (p *printer) line(at time.Time, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := "        "
	if !p.start.IsZero() {
		prefix = fmt.Sprintf("%+7.3fs", at.Sub(p.start).Seconds())
	}
	fmt.Printf(prefix+"  "+format+"\n", args...)
}

func (p *printer) setStart(t time.Time) {
	p.mu.Lock()
	p.start = t
	p.mu.Unlock()
}

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
	out := &printer{}

	// Build.
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

	// Backends.
	ports, err := chaos.FreePorts(cfg.Backends + 2)
	if err != nil {
		return err
	}
	adminPort, sitePort, backendPorts := ports[0], ports[1], ports[2:]
	records := filepath.Join(dir, "orders.log")
	backends := make([]*chaos.Backend, 0, cfg.Backends)
	defer func() {
		for _, b := range backends {
			b.Close()
		}
	}()
	var addrs []string
	for i, port := range backendPorts {
		b, err := chaos.StartBackend(ctx, chaos.BackendConfig{
			Bin:     backendBin,
			Addr:    fmt.Sprintf("127.0.0.1:%d", port),
			ID:      fmt.Sprintf("b%d", i+1),
			Records: records,
		})
		if err != nil {
			return err
		}
		backends = append(backends, b)
		addrs = append(addrs, b.Config().Addr)
		out.line(time.Now(), "backend %s on %s, pid %d", b.Config().ID, b.Config().Addr, b.Pid())
	}

	// Caddy.
	tmpl, err := template.New("directive").Option("missingkey=error").Parse(cfg.Directive)
	if err != nil {
		return fmt.Errorf("-directive: %w", err)
	}
	var block strings.Builder
	if err := tmpl.Execute(&block, map[string]any{"Upstreams": strings.Join(addrs, " "), "Addrs": addrs}); err != nil {
		return fmt.Errorf("-directive: %w", err)
	}
	caddyfile := chaos.Caddyfile(fmt.Sprintf("127.0.0.1:%d", adminPort), sitePort, block.String())
	caddy, err := chaos.StartCaddy(ctx, caddyBin, caddyfile, filepath.Join(dir, "caddy"))
	if err != nil {
		return err
	}
	defer caddy.Close() // crash-only all the way: no graceful stop needed
	out.line(time.Now(), "caddy on %s, pid %d, site block: %s", caddy.URL(), caddy.Pid(), strings.Join(strings.Fields(block.String()), " "))
	if err := warmUp(ctx, caddy.URL()); err != nil {
		return fmt.Errorf("%w\ncaddy log:\n%s", err, tailString(caddy.Logs(), 2000))
	}

	// Supervisor, faults, load.
	idOf := func(i int) string {
		if i < 0 {
			return "all"
		}
		return backends[i].Config().ID
	}
	sup := chaos.StartSupervisor(backends, chaos.SupervisorConfig{
		RestartSec: cfg.RestartSec,
		OnRestart: func(ev chaos.RestartEvent) {
			if ev.Err != "" {
				out.line(ev.Time, "restart %s failed: %s", ev.ID, ev.Err)
				return
			}
			out.line(ev.Time, "restart %s: pid %d -> %d (down %v)", ev.ID, ev.OldPid, ev.NewPid, ev.Time.Sub(ev.ExitedAt).Round(time.Millisecond))
		},
	})
	defer sup.Stop()
	inj := &chaos.Injector{
		Backends: backends,
		HangFor:  cfg.HangFor,
		OnFault: func(ev chaos.FaultEvent) {
			msg := fmt.Sprintf("fault   %-6s %-3s %s pid %v", ev.Kind, idOf(ev.Backend), ev.Action, ev.Pids)
			if ev.Err != "" {
				msg += " (" + ev.Err + ")"
			}
			out.line(ev.Time, "%s", msg)
		},
	}
	plan := chaos.Schedule(cfg.Seed, cfg.Duration, cfg.Backends, cfg.Faults, cfg.Every)
	if len(cfg.Faults) == 0 {
		plan = nil
	}
	fmt.Printf("load: %d clients for %v, %.0f%% POST; %d faults (%s), one every %v, seed %d\n",
		cfg.Concurrency, cfg.Duration, 100*cfg.PostRatio, len(plan), strings.Join(cfg.Faults, ","), cfg.Every, cfg.Seed)

	var done, failed atomic.Int64
	var kinds sync.Map // error kind -> *atomic.Int64
	onResult := func(r chaos.Request) {
		done.Add(1)
		if !r.OK() && r.Err != chaos.ErrCanceled {
			failed.Add(1)
			c, _ := kinds.LoadOrStore(r.Err, new(atomic.Int64))
			c.(*atomic.Int64).Add(1)
		}
	}
	injCtx, stopInj := context.WithCancel(ctx)
	defer stopInj()
	start := time.Now()
	out.setStart(start)
	var bg sync.WaitGroup
	bg.Go(func() { inj.Run(injCtx, plan) })
	bg.Go(func() { progress(injCtx, out, &done, &failed, &kinds) })

	res := chaos.RunLoad(ctx, chaos.LoadConfig{
		URL:         caddy.URL(),
		Concurrency: cfg.Concurrency,
		Duration:    cfg.Duration,
		PostRatio:   cfg.PostRatio,
		Seed:        cfg.Seed,
		Timeout:     cfg.Timeout,
		WorkMs:      cfg.WorkMs,
		OnResult:    onResult,
	})
	stopInj() // kills a backend still hung now
	bg.Wait()
	sup.Stop()

	rep, err := chaos.Analyze(res, records)
	if err != nil {
		return err
	}
	events, restarts := inj.Events(), sup.Restarts()
	fmt.Printf("\n%s (%d faults applied, %d restarts)\n%s", strings.Join(strings.Fields(block.String()), " "), countFaults(events), len(restarts), rep)
	if ctx.Err() != nil {
		fmt.Println("interrupted: the run was cut short")
	}
	if cfg.JSON != "" {
		b, err := json.MarshalIndent(map[string]any{
			"config": cfg, "caddyfile": caddyfile, "report": rep, "faults": events, "restarts": restarts,
		}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.JSON, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// countFaults counts applied faults, not the follow-up kill of a hang.
func countFaults(events []chaos.FaultEvent) int {
	n := 0
	for _, ev := range events {
		if ev.Action != "SIGKILL after hang" && ev.Err == "" {
			n++
		}
	}
	return n
}

// warmUp waits until one request through Caddy succeeds, so the load starts
// against a working proxy; it polls every 50ms for at most 10s.
func warmUp(ctx context.Context, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := client.Get(url + "/work")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("no successful request through caddy within 10s (last: %s)", last)
}

// progress prints a line every second until ctx ends.
func progress(ctx context.Context, out *printer, done, failed *atomic.Int64, kinds *sync.Map) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			var parts []string
			for _, k := range []string{chaos.ErrStatus, chaos.ErrTransport, chaos.ErrTimeout} {
				if c, ok := kinds.Load(k); ok {
					parts = append(parts, fmt.Sprintf("%s %d", k, c.(*atomic.Int64).Load()))
				}
			}
			detail := ""
			if len(parts) > 0 {
				detail = " [" + strings.Join(parts, ", ") + "]"
			}
			out.line(now, "progress: %d requests, %d failed%s", done.Load(), failed.Load(), detail)
		}
	}
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
