//go:build unix

package healthcheck

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"syscall"
	"testing"
	"time"
)

// Detection latency benchmarks, against real child processes. Each b.N
// iteration takes samplesPerOp measurements, each on a fresh child; the
// interesting numbers are the reported ms/median and ms/p90 (ns/op is the
// cost of the whole iteration, child start-up included, and means little;
// the timer is left running so that one iteration fills the default
// benchtime and b.N stays 1).
//
//	go test -run XXX -bench . ./healthcheck

const samplesPerOp = 20

// latency reports the median, p90 and max of samples.
func latency(b *testing.B, samples []time.Duration) {
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(samples[len(samples)/2]), "ms/median")
	b.ReportMetric(ms(samples[len(samples)*9/10]), "ms/p90")
	b.ReportMetric(ms(samples[len(samples)-1]), "ms/max")
}

// BenchmarkCrashToEjected: SIGKILL of a healthy backend to its
// ejected(crash) transition, with the default Config.
func BenchmarkCrashToEjected(b *testing.B) {
	var samples []time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < samplesPerOp; j++ {
			samples = append(samples, detect(b, syscall.SIGKILL, Crash))
		}
	}
	latency(b, samples)
}

// BenchmarkHangToEjected: SIGSTOP of a healthy backend to its
// ejected(hang) transition, with the default Config (Interval 250ms,
// Timeout 200ms, Fails 2). A second, healthy backend keeps the panic guard
// out of it.
func BenchmarkHangToEjected(b *testing.B) {
	var samples []time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < samplesPerOp; j++ {
			samples = append(samples, detect(b, syscall.SIGSTOP, Hang))
		}
	}
	latency(b, samples)
}

// detect starts a fresh child in a fresh pool, waits for it to be healthy,
// lets a random part of an interval pass (so that the signal lands at any
// point of the beat cycle, as a real failure does), sends sig and returns
// the time from the signal to the transition.
func detect(b *testing.B, sig syscall.Signal, want Reason) time.Duration {
	c := startChild(b)
	defer c.end()
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer other.Close()
	p := NewPool([]string{c.addr, other.Listener.Addr().String()}, Config{Path: "/health"}, nil)
	defer p.Close()
	rec := record(b, p)
	p.Start()
	rec.healthy(0)
	rec.healthy(1)
	time.Sleep(rand.N(p.Config().Interval)) // a random phase, not a wait for an event

	sent := time.Now()
	if err := syscall.Kill(c.pid(), sig); err != nil {
		b.Fatal(err)
	}
	tr := rec.ejected(0, want)
	return tr.At.Sub(sent)
}
