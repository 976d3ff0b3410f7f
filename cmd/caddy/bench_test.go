package main

import (
	"cmp"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// BenchmarkNoFaults compares failover with stock reverse_proxy in one Caddy
// process, in front of the same three backends, with no faults: the price
// of failover when nothing fails.
//
//	go test -run XXX -bench NoFaults -benchtime 8000x -count 4 ./cmd/caddy
//
// Two ways, each reporting each site's req/s and p50 and p99 latency, and
// the ratios failover/reverse_proxy of req/s and p50 (req/s-ratio is over
// the whole run; req/s-ratio-median is the median of its rounds'):
//
//   - turns: the two sites take turns in short slices of 8 clients each
//     (failover first in one round, reverse_proxy first in the next), so
//     that a change in the machine's load during the run weighs on both
//     alike: run one after the other, as separate benchmarks, they differed
//     by ±20% on a busy machine whatever the code. Even so, two stock sites
//     compared this way differed by 7% in one run on a busy machine.
//   - together: both sites at once, 4 clients each, for the same stretch of
//     time in each round: a change in the machine's load falls on both at
//     the same instant. They share the CPU, so each one's throughput is
//     inversely proportional to its own cost per request (the price of
//     failover, diluted by the backends' and clients' share of the CPU).
func BenchmarkNoFaults(b *testing.B) {
	ports, err := chaos.FreePorts(6)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var addrs []string
	for i, p := range ports[3:] {
		be, err := chaos.StartBackend(b.Context(), chaos.BackendConfig{
			Bin: backendBin, Addr: fmt.Sprintf("127.0.0.1:%d", p), ID: fmt.Sprintf("b%d", i+1),
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { be.Close() })
		addrs = append(addrs, be.Config().Addr)
	}
	upstreams := strings.Join(addrs, " ")
	cfg := chaos.Caddyfile(fmt.Sprintf("127.0.0.1:%d", ports[0]), ports[1],
		"failover "+upstreams+" {\n\thealth_uri /health\n}")
	cfg += fmt.Sprintf("\nhttp://127.0.0.1:%d {\n\treverse_proxy %s\n}\n", ports[2], upstreams)
	c, err := chaos.StartCaddy(b.Context(), caddyBin, cfg, filepath.Join(dir, "caddy"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	newSites := func() [2]*benchSite {
		return [2]*benchSite{
			newBenchSite("failover", fmt.Sprintf("http://127.0.0.1:%d/work", ports[1])),
			newBenchSite("reverse_proxy", fmt.Sprintf("http://127.0.0.1:%d/work", ports[2])),
		}
	}
	// each mode: fresh sites, warmed, then rounds of per requests a site,
	// each round measured by round into a failover / reverse_proxy ratio
	const rounds = 10
	mode := func(name string, round func(sites [2]*benchSite, r, per int) (float64, error)) {
		b.Run(name, func(b *testing.B) {
			sites := newSites()
			warm(b, sites)
			per := max(b.N/rounds, 1)
			var ratios []float64
			b.ResetTimer()
			for r := range rounds {
				ratio, err := round(sites, r, per)
				if err != nil {
					b.Fatal(err)
				}
				ratios = append(ratios, ratio)
			}
			b.StopTimer()
			report(b, sites, ratios)
		})
	}
	mode("turns", func(sites [2]*benchSite, r, per int) (float64, error) {
		var rate [2]float64
		for i := range sites {
			s := sites[(i+r)%2]
			n, busy := len(s.lat), s.busy
			if err := s.run(per, 8); err != nil {
				return 0, err
			}
			rate[(i+r)%2] = float64(len(s.lat)-n) / (s.busy - busy).Seconds()
		}
		return rate[0] / rate[1], nil
	})
	mode("together", func(sites [2]*benchSite, _, per int) (float64, error) { return together(sites, per) })
}

// warm fills the sites' connection pools, theirs and Caddy's.
func warm(b *testing.B, sites [2]*benchSite) {
	for _, s := range sites {
		b.Cleanup(s.client.CloseIdleConnections)
		for range 200 {
			if _, err := s.get(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// together runs both sites at once, 4 clients each, until they have
// answered 2n requests between them, and returns the ratio of their rates
// (first/second) over that time.
func together(sites [2]*benchSite, n int) (float64, error) {
	var answered atomic.Int64
	stop := make(chan struct{})
	var once sync.Once
	count := func() {
		if answered.Add(1) >= int64(2*n) {
			once.Do(func() { close(stop) })
		}
	}
	var got [2]int
	errs := make(chan error, 2)
	for i, s := range sites {
		go func() {
			before := len(s.lat)
			err := s.runUntil(stop, 4, count)
			got[i] = len(s.lat) - before
			errs <- err
		}()
	}
	err := cmp.Or(<-errs, <-errs)
	return float64(got[0]) / float64(max(got[1], 1)), err
}

// report reports each site's req/s, p50 and p99, and the ratios.
func report(b *testing.B, sites [2]*benchSite, ratios []float64) {
	var rate, p50 [2]float64
	for i, s := range sites {
		slices.Sort(s.lat)
		rate[i] = float64(len(s.lat)) / s.busy.Seconds()
		p50[i] = float64(s.lat[len(s.lat)/2].Microseconds())
		b.ReportMetric(rate[i], s.name+"-req/s")
		b.ReportMetric(p50[i], s.name+"-p50-µs")
		b.ReportMetric(float64(s.lat[len(s.lat)*99/100].Microseconds()), s.name+"-p99-µs")
	}
	slices.Sort(ratios)
	b.ReportMetric(rate[0]/rate[1], "req/s-ratio")
	b.ReportMetric(ratios[len(ratios)/2], "req/s-ratio-median")
	b.ReportMetric(p50[0]/p50[1], "p50-ratio")
}

// benchSite is one site of BenchmarkNoFaults: its client, the latencies
// seen and the time spent sending to it.
type benchSite struct {
	name, url string
	client    *http.Client
	lat       []time.Duration
	busy      time.Duration
}

func newBenchSite(name, url string) *benchSite {
	return &benchSite{name: name, url: url,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}}
}

func (s *benchSite) get() (time.Duration, error) {
	start := time.Now()
	res, err := s.client.Get(s.url)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: status %d", s.name, res.StatusCode)
	}
	return time.Since(start), err
}

// run sends n requests from clients clients (closed loop), recording
// latencies.
func (s *benchSite) run(n, clients int) error {
	var next atomic.Int64
	return s.load(clients, func() bool { return next.Add(1) <= int64(n) }, func() {})
}

// runUntil sends requests from clients clients (closed loop) until stop is
// closed, calling answered after each answer and recording latencies.
func (s *benchSite) runUntil(stop <-chan struct{}, clients int, answered func()) error {
	return s.load(clients, func() bool {
		select {
		case <-stop:
			return false
		default:
			return true
		}
	}, answered)
}

// load sends requests from clients clients while more() says so.
func (s *benchSite) load(clients int, more func() bool, answered func()) error {
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			var local []time.Duration
			for more() {
				d, err := s.get()
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					break
				}
				local = append(local, d)
				answered()
			}
			mu.Lock()
			s.lat = append(s.lat, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	s.busy += time.Since(start)
	return first
}

// BenchmarkHangToRestart measures, under the built-in supervisor with
// default settings, the time from SIGSTOP of a backend to the restart
// request (the engine's transition to restarting), and on to serving again:
//
//	go test -run XXX -bench HangToRestart -benchtime 10x ./cmd/caddy
func BenchmarkHangToRestart(b *testing.B) {
	ports, err := chaos.FreePorts(5)
	if err != nil {
		b.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	var addrs []string
	for _, p := range ports[2:] {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	block := fmt.Sprintf("failover {\n\thealth_uri /health\n\tspawn %s -addr {backend} {\n\t\tto %s\n\t}\n}", backendBin, strings.Join(addrs, " "))
	c, err := chaos.StartCaddy(b.Context(), caddyBin, chaos.Caddyfile(admin, ports[1], block), filepath.Join(b.TempDir(), "caddy"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	var toRestart, toServing []time.Duration
	for i := 0; i < b.N; i++ {
		victim := i % len(addrs)
		waitPool(b, admin, "all healthy", allState("healthy"))
		pid := backendPid(addrs[victim])
		// a random phase within the heartbeat interval
		time.Sleep(time.Duration(rand.IntN(250)) * time.Millisecond)
		stopped := time.Now()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			b.Fatal(err)
		}
		p := waitPool(b, admin, "restarting", func(p caddymodule.PoolStatus) bool { return p.Backends[victim].State.String() == "restarting" })
		toRestart = append(toRestart, p.Backends[victim].Since.Sub(stopped))
		p = waitPool(b, admin, "healthy again", func(p caddymodule.PoolStatus) bool { return p.Backends[victim].State.String() == "healthy" })
		toServing = append(toServing, p.Backends[victim].Since.Sub(stopped))
	}
	slices.Sort(toRestart)
	slices.Sort(toServing)
	b.ReportMetric(float64(toRestart[len(toRestart)/2].Milliseconds()), "ms-to-restart-p50")
	b.ReportMetric(float64(toRestart[len(toRestart)*9/10].Milliseconds()), "ms-to-restart-p90")
	b.ReportMetric(float64(toServing[len(toServing)/2].Milliseconds()), "ms-to-serving-p50")
}
