package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// BenchmarkNoFaults compares failover with stock reverse_proxy in one Caddy
// process, in front of the same three backends, with no faults: the price
// of failover when nothing fails. Run both in one go and compare:
//
//	go test -run XXX -bench NoFaults -count 6 ./cmd/caddy | tee /tmp/nofaults.txt
//
// Each sub-benchmark reports req/s and the p50 and p99 latency it saw.
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

	for _, site := range []struct {
		name string
		port int
	}{{"failover", ports[1]}, {"reverse_proxy", ports[2]}} {
		b.Run(site.name, func(b *testing.B) {
			benchGET(b, fmt.Sprintf("http://127.0.0.1:%d/work", site.port))
		})
	}
}

func benchGET(b *testing.B, url string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func() (time.Duration, error) {
		start := time.Now()
		res, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err == nil && res.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", res.StatusCode)
		}
		return time.Since(start), err
	}
	for range 200 { // warm the connection pools
		if _, err := get(); err != nil {
			b.Fatal(err)
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(4) // 8 clients on this 2-core machine
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			d, err := get()
			if err != nil {
				b.Error(err)
				return
			}
			local = append(local, d)
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
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
