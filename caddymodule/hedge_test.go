package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowBackend answers heartbeats at once and every request after delay
// (or when the test ends), and remembers the requests it saw and whether
// their context ended before it answered: a cancelled hedge loser's does.
type slowBackend struct {
	delay     time.Duration
	stop      chan struct{}
	mu        sync.Mutex
	methods   []string
	cancelled chan struct{} // closed when a request's context ends first
	once      sync.Once
}

func newSlowBackend(t *testing.T, delay time.Duration) (*slowBackend, string) {
	s := &slowBackend{delay: delay, stop: make(chan struct{}), cancelled: make(chan struct{})}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(s.stop) })
	return s, srv.Listener.Addr().String()
}

func (s *slowBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("User-Agent") == "caddy-failover-heartbeat" {
		return
	}
	s.mu.Lock()
	s.methods = append(s.methods, r.Method)
	s.mu.Unlock()
	select {
	case <-time.After(s.delay):
		io.WriteString(w, "slow")
	case <-r.Context().Done():
		s.once.Do(func() { close(s.cancelled) })
	case <-s.stop:
	}
}

func (s *slowBackend) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.methods = nil
}

func (s *slowBackend) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.methods...)
}

// fastBackend answers every request at once with the method and the body
// it got, and counts them.
type fastBackend struct{ requests atomic.Int64 }

func newFastBackend(t *testing.T) (*fastBackend, string) {
	f := new(fastBackend)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.Listener.Addr().String()
}

func (f *fastBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("User-Agent") == "caddy-failover-heartbeat" {
		return
	}
	f.requests.Add(1)
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Backend", "fast")
	fmt.Fprintf(w, "fast %s %s", r.Method, body)
}

func hedges(name, result string) float64 {
	return counterValue(mHedges.WithLabelValues(name, result))
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// toSlow sends requests until one has reached the slow backend (round
// robin: within two), and returns the answers.
func toSlow(t *testing.T, h *Handler, slow *slowBackend, method string, body []byte) []*httptest.ResponseRecorder {
	t.Helper()
	var out []*httptest.ResponseRecorder
	for len(slow.seen()) == 0 {
		require.Less(t, len(out), 2, "round robin sent two requests past the slow backend")
		w, err := do(t.Context(), h, method, body, nil)
		require.NoError(t, err)
		out = append(out, w)
	}
	return out
}

// A GET on a slow backend is answered by its peer once the threshold has
// passed; the slow backend's attempt is cancelled (it sees its request's
// context end), and that is no evidence against it. A PUT's body is sent
// whole to both.
func TestHedgeAnswersFromPeer(t *testing.T) {
	slow, a := newSlowBackend(t, time.Hour)
	fast, b := newFastBackend(t)
	h := startedHandler(t, `{"name":"hedge-peer","upstreams":`+upstreams(a, b)+`,"hedge":"20ms"}`)
	waitServing(t, h, 2)

	for _, w := range toSlow(t, h, slow, http.MethodGet, nil) {
		assert.Equal(t, http.StatusOK, w.Code)
		assert.Equal(t, "fast GET ", w.Body.String())
		assert.Equal(t, "fast", w.Header().Get("X-Backend"), "the winner's headers go to the client")
	}
	select {
	case <-slow.cancelled:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the slow backend's attempt was never cancelled")
	}
	assert.Equal(t, 1.0, hedges("hedge-peer", "won"))
	assert.Equal(t, 0.0, hedges("hedge-peer", "lost"))

	slow.forget()
	before := fast.requests.Load()
	answers := toSlow(t, h, slow, http.MethodPut, []byte("payload"))
	for _, w := range answers {
		assert.Equal(t, "fast PUT payload", w.Body.String())
	}
	assert.Equal(t, 2.0, hedges("hedge-peer", "won"))
	assert.EqualValues(t, len(answers), fast.requests.Load()-before, "the peer got its own request and the hedge, once")

	assert.True(t, h.pool.Backends()[0].InService(), "a cancelled loser is no evidence against its backend")
	for _, b := range h.pool.Backends() {
		assert.Zero(t, h.obs.of(b.Index).replays.Load(), "nothing was replayed")
	}
	assert.Zero(t, h.pool.Backends()[0].Active()+h.pool.Backends()[1].Active(), "every attempt has ended")
}

// A plain POST is never hedged: it waits for its backend, however slow,
// and its peer never sees it.
func TestHedgeNeverPOST(t *testing.T) {
	slow, a := newSlowBackend(t, 100*time.Millisecond)
	fast, b := newFastBackend(t)
	h := startedHandler(t, `{"name":"hedge-post","upstreams":`+upstreams(a, b)+`,"hedge":"5ms"}`)
	waitServing(t, h, 2)

	answers := toSlow(t, h, slow, http.MethodPost, []byte("order"))
	assert.Equal(t, "slow", answers[len(answers)-1].Body.String())
	assert.EqualValues(t, len(answers)-1, fast.requests.Load(), "the peer saw only the POST sent to it")
	for _, r := range []string{"won", "lost", "denied"} {
		assert.Zero(t, hedges("hedge-post", r), r)
	}
}

// Past the retry budget, a hedge is refused: the request waits for its
// first attempt.
func TestHedgeBudgetDenies(t *testing.T) {
	slow, a := newSlowBackend(t, 500*time.Millisecond)
	_, b := newFastBackend(t)
	h := startedHandler(t, `{"name":"hedge-budget","upstreams":`+upstreams(a, b)+`,"hedge":"5ms"}`)
	waitServing(t, h, 2)
	h.budget = newBudgetOf(0, 0.1, budgetTTL, time.Now) // one extra attempt per 10s

	answers := toSlow(t, h, slow, http.MethodGet, nil)
	assert.Equal(t, "fast GET ", answers[len(answers)-1].Body.String(), "the first hedge fits the budget")
	slow.forget()
	answers = toSlow(t, h, slow, http.MethodGet, nil)
	assert.Equal(t, "slow", answers[len(answers)-1].Body.String(), "the second is refused")
	assert.Equal(t, 1.0, hedges("hedge-budget", "won"))
	assert.Equal(t, 1.0, hedges("hedge-budget", "denied"))
}

// Past the retry budget, a request in flight on a hung backend is not
// rescued: it waits on, is abandoned (502) when the backend is ejected for
// the hang, and the refusal is counted once.
func TestRescueBudgetDenies(t *testing.T) {
	hung, h := hungPair(t, "rescue-budget")
	h.budget.mu.Lock() // no extra attempt at all
	h.budget.ratio, h.budget.reserve = 0, 0
	h.budget.mu.Unlock()
	hung.hung.Store(true)
	// round robin: one of two requests at once goes to the hung backend
	assert.ElementsMatch(t, []int{http.StatusOK, http.StatusBadGateway}, doTwice(t, h, http.MethodGet, nil))
	assert.True(t, hung.served.Load())
	assert.Equal(t, 1.0, counterValue(mRescuesDenied.WithLabelValues("rescue-budget")))
	assert.Equal(t, 0.0, counterValue(mRescued.WithLabelValues("rescue-budget")))
	assert.Equal(t, 1.0, counterValue(mAbandoned.WithLabelValues("rescue-budget")))
}

// The budget allows extra attempts up to its ratio of the requests of its
// window plus its reserve, and forgets both after its ttl.
func TestBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBudgetOf(0.2, 0, 10*time.Second, func() time.Time { return now })
	assert.False(t, b.allow(), "no requests, no reserve: nothing")
	for range 100 {
		b.record()
	}
	for i := range 20 {
		require.True(t, b.allow(), "extra attempt %d of 20", i+1)
	}
	assert.False(t, b.allow(), "the 21st is past 20%")
	for range 5 {
		b.record()
	}
	assert.True(t, b.allow(), "5 more requests, one more")
	assert.False(t, b.allow())
	assert.Equal(t, BudgetStatus{Requests: 105, Extra: 21, Allowed: 21, Denied: 3}, b.status())

	now = now.Add(11 * time.Second)
	assert.False(t, b.allow(), "the window has passed: its requests no longer count")
	assert.Equal(t, uint64(0), b.status().Requests)

	r := newBudgetOf(0.2, 10, 10*time.Second, func() time.Time { return now })
	n := 0
	for r.allow() {
		n++
	}
	assert.Equal(t, 100, n, "the reserve: 10/s over 10s")
	now = now.Add(5 * time.Second)
	assert.False(t, r.allow(), "spent within the window")
	now = now.Add(6 * time.Second)
	assert.True(t, r.allow(), "back once the window has passed")
}

// The auto threshold follows the pool's recent answer latencies: the 95th
// percentile, at least the floor, and none before enough answers.
func TestHedgeAutoAdapts(t *testing.T) {
	l := new(latencies)
	for range hedgeMinSamples - 1 {
		l.record(time.Millisecond)
	}
	assert.Zero(t, l.after(), "too few answers")
	l.record(time.Millisecond)
	assert.Equal(t, hedgeFloor, l.after(), "fast answers: the floor")

	for range 2000 {
		l.record(40 * time.Millisecond)
	}
	assert.GreaterOrEqual(t, l.after(), 40*time.Millisecond)
	assert.LessOrEqual(t, l.after(), 48*time.Millisecond, "within a bucket (19%)")

	for i := range 4000 {
		d := 2 * time.Millisecond
		if i%100 < 3 { // 3% slow: above the 95th percentile
			d = time.Second
		}
		l.record(d)
	}
	assert.Equal(t, hedgeFloor, l.after(), "back to fast answers, the slow 3% are what it hedges")

	for i := range 4000 {
		d := 20 * time.Millisecond
		if i%100 < 10 { // 10% slow: the 95th percentile is slow
			d = 300 * time.Millisecond
		}
		l.record(d)
	}
	assert.GreaterOrEqual(t, l.after(), 300*time.Millisecond)
}

// Latency buckets: every duration is at most its bucket's upper bound and
// above the one before, within 25%.
func TestLatencyBuckets(t *testing.T) {
	for d := time.Microsecond; d < 200*time.Second; d = d*9/8 + 1 {
		i := latencyBucket(d)
		if i == latencyBuckets-1 {
			continue
		}
		assert.Less(t, d, latencyUpper(i), d)
		if i > 0 {
			assert.GreaterOrEqual(t, d, latencyUpper(i-1), d)
			assert.LessOrEqual(t, float64(latencyUpper(i)), 1.25*float64(latencyUpper(i-1)), d)
		}
	}
}

// hedge auto learns before it hedges: the first answers only teach it.
func TestHedgeAutoLearns(t *testing.T) {
	_, a := newFastBackend(t)
	_, b := newFastBackend(t)
	h := startedHandler(t, `{"name":"hedge-auto","upstreams":`+upstreams(a, b)+`,"hedge":"auto"}`)
	waitServing(t, h, 2)
	h.lat = new(latencies)
	for range hedgeMinSamples {
		assert.Zero(t, h.hedgeThreshold())
		w, err := do(t.Context(), h, http.MethodGet, nil, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, w.Code)
	}
	assert.GreaterOrEqual(t, h.hedgeThreshold(), hedgeFloor, "learnt, never below the floor")
}

// sometimesSlow answers at once, but every every-th request (heartbeats
// aside) after delay: a backend with an occasional slow answer (a GC
// pause, a cold cache).
func sometimesSlow(b *testing.B, every int64, delay time.Duration) string {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != "caddy-failover-heartbeat" && every > 0 && n.Add(1)%every == 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "ok")
	}))
	b.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// benchHandlers are stock reverse_proxy, failover, and failover hedging
// after 10ms and auto, in front of the same two backends.
func benchHandlers(b *testing.B, addrs ...string) []struct {
	name string
	h    caddyhttp.MiddlewareHandler
} {
	ctx := benchCaddyContext(b)
	stock := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: addrs[0]}, {Dial: addrs[1]}}}
	require.NoError(b, stock.Provision(ctx))
	b.Cleanup(func() { _ = stock.Cleanup() })
	out := []struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{{"reverse_proxy", stock}}
	for _, c := range []struct{ name, hedge string }{{"failover", ""}, {"failover-hedge-10ms", "10ms"}, {"failover-hedge-auto", "auto"}} {
		h := startedHandler(b, fmt.Sprintf(`{"name":%q,"upstreams":%s,"hedge":%q,"health":{"uri":"/health"}}`, "bench-"+c.name, upstreams(addrs...), c.hedge))
		waitServing(b, h, 2)
		out = append(out, struct {
			name string
			h    caddyhttp.MiddlewareHandler
		}{c.name, h})
	}
	return out
}

// BenchmarkHedgeTail: one of two backends answers every 50th request after
// 100ms (1% of all requests); sequential GETs through each handler. It
// reports the latency quantiles: hedging cuts the tail to about the
// threshold. Run with a fixed count, e.g. -benchtime=3000x.
func BenchmarkHedgeTail(b *testing.B) {
	addrs := []string{sometimesSlow(b, 50, 100*time.Millisecond), sometimesSlow(b, 0, 0)}
	for _, c := range benchHandlers(b, addrs...) {
		b.Run(c.name, func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			for range 100 { // warm the connections, and auto's latencies
				serve(b, c.h, w, http.MethodGet, nil)
			}
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				serve(b, c.h, w, http.MethodGet, nil)
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			q := func(f float64) float64 { return float64(took[int(f*float64(len(took)-1))].Microseconds()) }
			b.ReportMetric(q(0.5), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
			b.ReportMetric(q(0.999), "p99.9-µs")
			b.ReportMetric(q(1), "max-µs")
		})
	}
}

// BenchmarkHedgeNoFault: GETs through each handler to two backends that
// always answer at once: what hedging costs when it never fires (one
// timer reset and stop per request).
func BenchmarkHedgeNoFault(b *testing.B) {
	addrs := []string{sometimesSlow(b, 0, 0), sometimesSlow(b, 0, 0)}
	for _, c := range benchHandlers(b, addrs...) {
		b.Run(c.name, func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			for range 100 {
				serve(b, c.h, w, http.MethodGet, nil)
			}
			b.ReportAllocs()
			for b.Loop() {
				serve(b, c.h, w, http.MethodGet, nil)
			}
		})
	}
}
