package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// Hot-path benchmarks: selection, in-flight registration, the transport
// wrapper, and the whole handler against stock reverse_proxy, with and
// without request bodies. Allocations are reported for every one.
//
//	go test -run XXX -bench . -benchmem ./caddymodule
//
// Nothing here touches the network except the handler benchmarks (an
// httptest backend on loopback) and the set-up of the selection benchmarks,
// which drive real probers against local listeners until the backends are
// in the wanted states and then stop them, so that no probe runs while the
// timer does.

// BenchmarkSelect is one attempt's selection, (*selector).Select, over n
// backends: all in service; half ejected, every other one (the scan finds
// one in at most two steps); half ejected in one contiguous block (a pick
// that lands in the block walks through it); and all but one ejected (the
// worst case: a scan of n/2 on average).
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		for _, layout := range []struct {
			name string
			in   func(i int) bool
		}{
			{"healthy", func(int) bool { return true }},
			{"half-ejected-interleaved", func(i int) bool { return i%2 == 0 }},
			{"half-ejected-block", func(i int) bool { return i >= n/2 }},
			{"one-in-service", func(i int) bool { return i == n-1 }},
		} {
			b.Run(fmt.Sprintf("n=%d/%s", n, layout.name), func(b *testing.B) {
				h, upstreams := selectionHandler(b, n, layout.in)
				s := &selector{h: h}
				st := getRequestState()
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req = req.WithContext(context.WithValue(req.Context(), stateKey{}, st))
				b.ReportAllocs()
				for b.Loop() {
					// a fresh request's state, as getRequestState leaves it
					*st = requestState{}
					st.tried = st.triedBuf[:0]
					if s.Select(upstreams, req, nil) == nil {
						b.Fatal("no backend selected")
					}
				}
			})
		}
	}
}

// BenchmarkSelectParallel is BenchmarkSelect's healthy and block layouts
// with every P selecting at once from one selector (its round-robin counter
// is shared).
func BenchmarkSelectParallel(b *testing.B) {
	for _, n := range []int{3, 1000} {
		for _, layout := range []struct {
			name string
			in   func(i int) bool
		}{
			{"healthy", func(int) bool { return true }},
			{"half-ejected-block", func(i int) bool { return i >= n/2 }},
		} {
			b.Run(fmt.Sprintf("n=%d/%s", n, layout.name), func(b *testing.B) {
				h, upstreams := selectionHandler(b, n, layout.in)
				s := &selector{h: h}
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					st := getRequestState()
					req := httptest.NewRequest(http.MethodGet, "/", nil)
					req = req.WithContext(context.WithValue(req.Context(), stateKey{}, st))
					for pb.Next() {
						*st = requestState{}
						st.tried = st.triedBuf[:0]
						if s.Select(upstreams, req, nil) == nil {
							b.Error("no backend selected")
							return
						}
					}
				})
			})
		}
	}
}

// selectionHandler returns a Handler with just what the selector reads, over
// n backends of which those with in(i) are in service and the others
// ejected. The states are reached by real heartbeats to two local servers
// (one answers /health 200, the other 500); the pool is then closed, which
// stops its probers and leaves every state as it is.
func selectionHandler(b *testing.B, n int, in func(i int) bool) (*Handler, reverseproxy.UpstreamPool) {
	b.Helper()
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer bad.Close()
	addrs := make([]string, n)
	upstreams := make(reverseproxy.UpstreamPool, n)
	for i := range n {
		addrs[i] = bad.Listener.Addr().String()
		if in(i) {
			addrs[i] = ok.Listener.Addr().String()
		}
		upstreams[i] = &reverseproxy.Upstream{Dial: addrs[i]}
	}
	// a short interval so that a beat lost to a busy start-up is soon
	// made up for; a generous timeout for the same reason
	p := healthcheck.NewPool(addrs, healthcheck.Config{
		Path: "/health", Interval: 100 * time.Millisecond, Timeout: time.Second,
	}, nil)
	p.Start()
	deadline := time.Now().Add(30 * time.Second)
	for !inStates(p, in) {
		if time.Now().After(deadline) {
			p.Close()
			b.Fatalf("backends not in the wanted states after 30s: %d in service", p.InService())
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.Close() // freezes the states
	if !inStates(p, in) {
		b.Fatal("a state changed while the pool closed")
	}
	h := &Handler{
		pool:    p,
		members: new(atomic.Pointer[members]),
		retries: n - 1,
		hold:    DefaultHold,
		maxHeld: DefaultMaxHeld,
	}
	h.members.Store(&members{backends: p.Backends(), upstreams: upstreams})
	return h, upstreams
}

func inStates(p *healthcheck.Pool, in func(i int) bool) bool {
	for i, be := range p.Backends() {
		if in(i) != be.InService() {
			return false
		}
		if s, _, _ := be.State(); !in(i) && s != healthcheck.Ejected {
			return false
		}
	}
	return true
}

// BenchmarkInFlight is the registration of a replayable attempt: Begin and
// End on one backend, from one goroutine, from every P on one backend (its
// lock is contended), and from every P on backends of their own.
func BenchmarkInFlight(b *testing.B) {
	noCancel := func(error) {}
	b.Run("single", func(b *testing.B) {
		be := idleBackends(b, 1)[0]
		f := &healthcheck.Flight{Cancel: noCancel, Replayable: true}
		b.ReportAllocs()
		for b.Loop() {
			be.Begin(f)
			if be.End(f) != nil {
				b.Fatal("rescued")
			}
		}
	})
	b.Run("single-100-others-in-flight", func(b *testing.B) {
		be := idleBackends(b, 1)[0]
		others := make([]healthcheck.Flight, 100)
		for i := range others {
			others[i].Cancel = noCancel
			be.Begin(&others[i])
		}
		f := &healthcheck.Flight{Cancel: noCancel, Replayable: true}
		b.ReportAllocs()
		for b.Loop() {
			be.Begin(f)
			be.End(f)
		}
	})
	b.Run("parallel-one-backend", func(b *testing.B) {
		be := idleBackends(b, 1)[0]
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			f := &healthcheck.Flight{Cancel: noCancel, Replayable: true}
			for pb.Next() {
				be.Begin(f)
				be.End(f)
			}
		})
	})
	b.Run("parallel-own-backend", func(b *testing.B) {
		backends := idleBackends(b, 256)
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			be := backends[int(next.Add(1)-1)%len(backends)]
			f := &healthcheck.Flight{Cancel: noCancel, Replayable: true}
			for pb.Next() {
				be.Begin(f)
				be.End(f)
			}
		})
	})
}

// idleBackends are backends of a pool that is never started: in-flight
// registration does not depend on their state.
func idleBackends(b *testing.B, n int) []*healthcheck.Backend {
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", 1+i)
	}
	p := healthcheck.NewPool(addrs, healthcheck.Config{}, nil)
	b.Cleanup(p.Close)
	return p.Backends()
}

// stubRoundTripper answers every request at once with one canned response:
// what is measured around it is the wrapper alone.
type stubRoundTripper struct{ res *http.Response }

func (s stubRoundTripper) RoundTrip(*http.Request) (*http.Response, error) { return s.res, nil }

// BenchmarkTransport is the wrapper's RoundTrip overhead: the inner
// transport called directly, then through the wrapper for a request that
// did not come through our handler (no state: passed through), a request
// that cannot be replayed (POST: in-flight registration, so that the
// watchdog sees it wait) and a replayable one (GET: a cancellable context
// and in-flight registration).
func BenchmarkTransport(b *testing.B) {
	inner := stubRoundTripper{res: &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Header: http.Header{}}}
	h := &Handler{}
	h.RequestBuffers = DefaultRequestBuffers
	h.provisionRetryRules()
	t := &transport{inner: inner, h: h}
	be := idleBackends(b, 1)[0]

	request := func(method string, st *requestState) *http.Request {
		req := httptest.NewRequest(method, "http://127.0.0.1:1/", nil)
		if st != nil {
			req = req.WithContext(context.WithValue(req.Context(), stateKey{}, st))
		}
		return req
	}
	run := func(b *testing.B, rt http.RoundTripper, req *http.Request, st *requestState) {
		b.ReportAllocs()
		for b.Loop() {
			if st != nil {
				st.current = be
			}
			res, err := rt.RoundTrip(req)
			if err != nil || res.StatusCode != http.StatusOK {
				b.Fatal(res, err)
			}
		}
	}
	b.Run("inner-direct", func(b *testing.B) {
		run(b, inner, request(http.MethodGet, nil), nil)
	})
	b.Run("wrapper-no-state", func(b *testing.B) {
		run(b, t, request(http.MethodGet, nil), nil)
	})
	b.Run("wrapper-POST-not-replayable", func(b *testing.B) {
		st := getRequestState()
		run(b, t, request(http.MethodPost, st), st)
	})
	b.Run("wrapper-GET-replayable", func(b *testing.B) {
		st := getRequestState()
		st.replayable = true // as the selector finds it
		run(b, t, request(http.MethodGet, st), st)
	})
	// hedge on, never firing: the hedger's timer armed and stopped
	hh := *h
	hh.hedging, hh.hedgeAfter = true, 10*time.Millisecond
	b.Run("wrapper-GET-replayable-hedge", func(b *testing.B) {
		st := getRequestState()
		st.replayable = true // as the selector finds it
		run(b, &transport{inner: inner, h: &hh}, request(http.MethodGet, st), st)
	})
}

// benchCaddyContext is a Caddy context with a config (reverse_proxy's
// Provision needs the events app) whose storage is a temp dir and whose
// logs are errors only. Everything provisioned in it is cleaned up when the
// benchmark ends.
func benchCaddyContext(b *testing.B) caddy.Context {
	b.Helper()
	var cfg caddy.Config
	raw := fmt.Sprintf(`{"storage":{"module":"file_system","root":%q},"logging":{"logs":{"default":{"level":"ERROR"}}}}`, b.TempDir())
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		b.Fatal(err)
	}
	root, err := caddy.ProvisionContext(&cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(root)
	b.Cleanup(cancel)
	return ctx
}

// benchBackend answers /health with 200 and every other request, once its
// body is read, with a short body.
func benchBackend(b *testing.B) string {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	b.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// failoverHandler is a provisioned failover handler in front of addr, with
// POSTs made replayable by an Idempotency-Key, waiting until addr is in
// service.
func benchFailover(b *testing.B, ctx caddy.Context, addr string) *Handler {
	b.Helper()
	h := &Handler{
		Handler:        reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: addr}}},
		Health:         &HealthConfig{URI: "/health"},
		IdempotencyKey: KeysHonor,
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	startApp(b, ctx)
	deadline := time.Now().Add(10 * time.Second)
	for h.pool.InService() < 1 {
		ready := h.pool.Ready()
		if h.pool.InService() >= 1 {
			break
		}
		select {
		case <-ready:
		case <-time.After(time.Until(deadline)):
			b.Fatal("backend not in service after 10s")
		}
	}
	return h
}

// benchStock is a provisioned stock reverse_proxy in front of addr.
func benchStock(b *testing.B, ctx caddy.Context, addr string, requestBuffers int64) *reverseproxy.Handler {
	b.Helper()
	h := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: addr}}, RequestBuffers: requestBuffers}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// discardWriter is a response writer that keeps nothing but its header map
// (reused); a flusher, as reverse_proxy may flush.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) Flush()                      {}

var nopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// serve runs one request through h as Caddy's server would hand it over:
// a fresh request, prepared with a replacer and a server in its context.
// What it costs outside h (the request, its preparation) is the same for
// every handler measured.
func serve(b *testing.B, h caddyhttp.MiddlewareHandler, w *discardWriter, method string, body []byte) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://example.com/work", rd)
	if body != nil {
		req.Header.Set("Idempotency-Key", "k")
	}
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, benchServer)
	clear(w.h)
	w.status = 0
	if err := h.ServeHTTP(w, req, nopNext); err != nil {
		b.Fatal(err)
	}
	if w.status != http.StatusOK {
		b.Fatalf("status %d", w.status)
	}
}

var benchServer = &caddyhttp.Server{}

// BenchmarkServeHTTP is a whole GET through the failover handler and
// through stock reverse_proxy, side by side, against one httptest backend
// over loopback (the backend's and the loopback's costs are in both).
func BenchmarkServeHTTP(b *testing.B) {
	ctx := benchCaddyContext(b)
	addr := benchBackend(b)
	for _, c := range []struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{
		{"failover", benchFailover(b, ctx, addr)},
		{"reverse_proxy", benchStock(b, ctx, addr, 0)},
	} {
		b.Run(c.name+"/GET", func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			for range 100 { // warm the connection pool
				serve(b, c.h, w, http.MethodGet, nil)
			}
			b.ReportAllocs()
			for b.Loop() {
				serve(b, c.h, w, http.MethodGet, nil)
			}
		})
	}
}

// BenchmarkBodyBuffering is a POST with a body through the failover
// handler (with an Idempotency-Key it opts in to: bodies under
// request_buffers, 64 KiB by default, are buffered and replayable, larger
// ones streamed), beside stock reverse_proxy without buffering and with the
// same request_buffers.
func BenchmarkBodyBuffering(b *testing.B) {
	ctx := benchCaddyContext(b)
	addr := benchBackend(b)
	handlers := []struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{
		{"failover", benchFailover(b, ctx, addr)},
		{"reverse_proxy", benchStock(b, ctx, addr, 0)},
		{"reverse_proxy-buffers-64k", benchStock(b, ctx, addr, DefaultRequestBuffers)},
	}
	for _, size := range []struct {
		name string
		n    int
	}{{"1KiB-replayable", 1 << 10}, {"32KiB-replayable", 32 << 10}, {"128KiB-streamed", 128 << 10}} {
		body := bytes.Repeat([]byte("x"), size.n)
		for _, c := range handlers {
			b.Run(size.name+"/"+c.name, func(b *testing.B) {
				w := &discardWriter{h: http.Header{}}
				for range 20 {
					serve(b, c.h, w, http.MethodPost, body)
				}
				b.SetBytes(int64(size.n))
				b.ReportAllocs()
				for b.Loop() {
					serve(b, c.h, w, http.MethodPost, body)
				}
			})
		}
	}
}
