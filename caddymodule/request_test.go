package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// In-process tests of the request path: a failover handler provisioned in
// this process, started as its app starts it, in front of real TCP
// backends (httptest servers) that really close connections and ports.

// testContext is a Caddy context for provisioning modules in a test.
func testContext(t testing.TB) caddy.Context {
	t.Helper()
	var cfg caddy.Config
	raw := fmt.Sprintf(`{"storage":{"module":"file_system","root":%q},"logging":{"logs":{"default":{"level":"ERROR"}}}}`, t.TempDir())
	require.NoError(t, json.Unmarshal([]byte(raw), &cfg))
	root, err := caddy.ProvisionContext(&cfg)
	require.NoError(t, err)
	ctx, cancel := caddy.NewContext(root)
	t.Cleanup(cancel)
	return ctx
}

// startedHandler provisions a handler from its JSON and starts it as the
// failover app does once a config has started.
func startedHandler(t testing.TB, raw string) *Handler {
	t.Helper()
	ctx := testContext(t)
	h := new(Handler)
	require.NoError(t, json.Unmarshal([]byte(raw), h))
	require.NoError(t, h.Provision(ctx))
	t.Cleanup(func() { _ = h.Cleanup() })
	startApp(t, ctx)
	return h
}

// startApp does what Caddy's "started" event does to the failover app.
func startApp(t testing.TB, ctx caddy.Context) {
	app, err := ctx.App("failover")
	require.NoError(t, err)
	app.(*App).commit()
}

// waitServing waits until n of h's backends are in service.
func waitServing(t testing.TB, h *Handler, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for h.pool.InService() < n {
		ready := h.pool.Ready()
		if h.pool.InService() >= n {
			return
		}
		select {
		case <-ready:
		case <-deadline:
			t.Fatalf("%d backends in service after 10s, want %d", h.pool.InService(), n)
		}
	}
}

// do runs one request through h as Caddy's server hands it over, and
// returns the recorded response and the handler's error.
func do(ctx context.Context, h *Handler, method string, body []byte, hdr http.Header) (*httptest.ResponseRecorder, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req := httptest.NewRequestWithContext(ctx, method, "http://example.com/work", rd)
	for k, v := range hdr {
		req.Header[k] = v
	}
	w := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
	err := h.ServeHTTP(w, req, nopNext)
	return w, err
}

// statusOf is the status a handler's answer has: its error's, or the
// written one.
// hungPair starts a handler (pool name, if not empty) in front of two
// hangable backends, the first of which is returned, both in service.
func hungPair(t *testing.T, name string) (*hangable, *Handler) {
	hung := &hangable{stop: make(chan struct{})}
	a, b := httptest.NewServer(hung), httptest.NewServer(&hangable{stop: make(chan struct{})})
	t.Cleanup(b.Close)
	t.Cleanup(a.Close)
	t.Cleanup(func() { close(hung.stop) })
	named := ""
	if name != "" {
		named = `"name":"` + name + `",`
	}
	h := startedHandler(t, `{`+named+`"upstreams":`+upstreams(a.Listener.Addr().String(), b.Listener.Addr().String())+
		`,"health":{"interval":"50ms","timeout":"50ms"}}`)
	waitServing(t, h, 2)
	return hung, h
}

// doTwice sends two requests at once and returns their statuses.
func doTwice(t *testing.T, h *Handler, method string, body []byte) []int {
	statuses := make(chan int, 2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			w, err := do(t.Context(), h, method, body, nil)
			statuses <- statusOf(w, err)
		})
	}
	wg.Wait()
	close(statuses)
	var got []int
	for s := range statuses {
		got = append(got, s)
	}
	return got
}

func statusOf(w *httptest.ResponseRecorder, err error) int {
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
		return he.StatusCode
	}
	if err != nil {
		return -1
	}
	return w.Code
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// upstreams is the JSON of an upstream list.
func upstreams(addrs ...string) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = fmt.Sprintf(`{"dial":%q}`, a)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// A hold that runs out is answered 503 with a Retry-After.
func TestHoldExpiresWith503(t *testing.T) {
	h := startedHandler(t, `{"upstreams":`+upstreams(deadAddr(t))+`,"hold":"200ms"}`)
	w, err := do(t.Context(), h, http.MethodGet, nil, nil)
	assert.Equal(t, http.StatusServiceUnavailable, statusOf(w, err))
	assert.Equal(t, "1", w.Header().Get("Retry-After"))
}

// Past max_held, a request is answered 503 at once; a held request whose
// client leaves ends with 499.
func TestMaxHeldAnd499(t *testing.T) {
	h := startedHandler(t, `{"upstreams":`+upstreams(deadAddr(t))+`,"hold":"1m","max_held":2}`)
	ctx, cancel := context.WithCancel(t.Context())
	results := make(chan int, 2)
	for range 2 {
		go func() {
			w, err := do(ctx, h, http.MethodGet, nil, nil)
			results <- statusOf(w, err)
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.held.Load() < 2 {
		require.True(t, time.Now().Before(deadline), "two requests never held")
		time.Sleep(time.Millisecond)
	}
	w, err := do(t.Context(), h, http.MethodGet, nil, nil)
	assert.Equal(t, http.StatusServiceUnavailable, statusOf(w, err), "a third is refused at once")
	cancel()
	for range 2 {
		assert.Equal(t, 499, <-results, "the client left while held")
	}
	assert.Zero(t, h.held.Load())
}

// crashOnce is a pair of backends sharing one state: the first request
// with a given body (or key) is read whole and then its connection is
// dropped without an answer, as by a process that dies; any later one is
// answered 200 with what it received.
type crashOnce struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *crashOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/" && r.Method == http.MethodGet && r.Header.Get("User-Agent") == "caddy-failover-heartbeat" {
		return
	}
	body, _ := io.ReadAll(r.Body)
	key := r.Method + " " + string(body)
	c.mu.Lock()
	c.seen[key]++
	n := c.seen[key]
	c.mu.Unlock()
	if n == 1 {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	fmt.Fprintf(w, "got %d bytes", len(body))
}

func (c *crashOnce) times(method string, body []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[method+" "+string(body)]
}

func crashOncePair(t *testing.T) (*crashOnce, []string) {
	c := &crashOnce{seen: map[string]int{}}
	a, b := httptest.NewServer(c), httptest.NewServer(c)
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	return c, []string{a.Listener.Addr().String(), b.Listener.Addr().String()}
}

// A POST is replayed after a failure that may have reached the backend only
// when the route opts in to Idempotency-Key and the request carries one.
func TestIdempotencyKey(t *testing.T) {
	c, addrs := crashOncePair(t)
	h := startedHandler(t, `{"upstreams":`+upstreams(addrs...)+`,"idempotency_key":true}`)
	waitServing(t, h, 2)

	keyed := []byte("order=1")
	w, err := do(t.Context(), h, http.MethodPost, keyed, http.Header{"Idempotency-Key": {"k1"}})
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Equal(t, "got 7 bytes", w.Body.String(), "the replay carried the whole body")
	assert.Equal(t, 2, c.times(http.MethodPost, keyed))

	waitServing(t, h, 2)
	plain := []byte("order=2")
	w, err = do(t.Context(), h, http.MethodPost, plain, nil)
	assert.Equal(t, http.StatusBadGateway, statusOf(w, err), "no key: not replayed")
	assert.Equal(t, 1, c.times(http.MethodPost, plain))
}

// A body is replayable only when reverse_proxy kept it whole: shorter than
// request_buffers.
func TestRequestBuffersBoundary(t *testing.T) {
	const size = 1024
	for _, tc := range []struct {
		n      int
		replay bool
	}{{size - 1, true}, {size, false}, {size + 1, false}} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			c, addrs := crashOncePair(t)
			h := startedHandler(t, fmt.Sprintf(`{"upstreams":%s,"request_buffers":%d}`, upstreams(addrs...), size))
			waitServing(t, h, 2)
			body := bytes.Repeat([]byte("x"), tc.n)
			w, err := do(t.Context(), h, http.MethodPut, body, nil)
			if tc.replay {
				require.NoError(t, err)
				assert.Equal(t, fmt.Sprintf("got %d bytes", tc.n), w.Body.String())
				assert.Equal(t, 2, c.times(http.MethodPut, body))
			} else {
				assert.Equal(t, http.StatusBadGateway, statusOf(w, err))
				assert.Equal(t, 1, c.times(http.MethodPut, body))
			}
		})
	}
}

// hangable answers until hung; then every request, heartbeats included,
// waits until the test ends, as a frozen process would make it.
type hangable struct {
	hung, served atomic.Bool
	stop         chan struct{}
}

func (s *hangable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.hung.Load() {
		if r.URL.Path == "/work" {
			s.served.Store(true)
		}
		select {
		case <-s.stop:
		case <-r.Context().Done():
		}
		return
	}
	io.WriteString(w, "ok")
}

// A GET in flight on a backend that hangs is rescued: the backend is
// suspected (or ejected) for the hang and the GET replayed on its peer at
// once.
func TestRescueFromAHungBackend(t *testing.T) {
	hung, h := hungPair(t, "")
	hung.hung.Store(true)
	// round robin: of two requests in a row, one goes to the hung backend
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			w, err := do(t.Context(), h, http.MethodGet, nil, nil)
			assert.NoError(t, err)
			assert.Equal(t, http.StatusOK, w.Code)
		})
	}
	wg.Wait()
	assert.True(t, hung.served.Load(), "a request reached the hung backend and was rescued")
	// rescued at the suspicion; the next missed beat confirms it
	require.Eventually(t, func() bool {
		st, reason, _ := h.pool.Backends()[0].State()
		return st == healthcheck.Ejected && reason == healthcheck.Hang
	}, 5*time.Second, 5*time.Millisecond, "ejected(hang)")
}

// A POST in flight on a backend that hangs cannot be replayed: it waits
// through the suspicion, and once the backend is ejected for the hang it is
// answered 502 at once rather than left to wait for the restart (here the
// hung backend never lets go by itself).
func TestPOSTOnAHungBackendIsAbandoned(t *testing.T) {
	hung, h := hungPair(t, "abandon")
	hung.hung.Store(true)
	// round robin: one of two requests at once goes to the hung backend
	assert.ElementsMatch(t, []int{http.StatusOK, http.StatusBadGateway}, doTwice(t, h, http.MethodPost, []byte("order")))
	assert.True(t, hung.served.Load(), "a POST reached the hung backend")
	st, reason, _ := h.pool.Backends()[0].State()
	assert.Equal(t, healthcheck.Ejected, st, "abandoned at the ejection")
	assert.Equal(t, healthcheck.Hang, reason)
	assert.Equal(t, 1.0, counterValue(mAbandoned.WithLabelValues("abandon")))
	assert.Equal(t, 0.0, counterValue(mRescued.WithLabelValues("abandon")))
}

// A request that may not be replayed passes over a backend that is
// hushed (a request waits on it, nothing heard from it lately: maybe
// frozen a moment ago), while another will do; once it answers, it gets
// them again.
func TestPOSTsPassOverAHushedBackend(t *testing.T) {
	named := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
		t.Cleanup(s.Close)
		return s
	}
	a, b := named("a"), named("b")
	h := startedHandler(t, `{"upstreams":`+upstreams(a.Listener.Addr().String(), b.Listener.Addr().String())+`}`)
	waitServing(t, h, 2)
	first := h.pool.Backends()[0]
	f := &healthcheck.Flight{} // a request that waits on a and gets no answer
	first.Begin(f)
	require.Eventually(t, func() bool { return first.Hushed(time.Now()) }, 10*time.Second, time.Millisecond)
	for range 6 {
		w, err := do(t.Context(), h, http.MethodPost, []byte("order"), nil)
		require.NoError(t, err)
		assert.Equal(t, "b", w.Body.String(), "a POST went to the hushed backend")
	}
	require.NoError(t, first.End(f))
	got := map[string]int{}
	for range 6 {
		w, err := do(t.Context(), h, http.MethodPost, []byte("order"), nil)
		require.NoError(t, err)
		got[w.Body.String()]++
	}
	assert.Equal(t, map[string]int{"a": 3, "b": 3}, got, "round robin again")
}

// One backend that crashes mid-request and comes back: the GET is held
// and served by its next life, whatever the pool size.
func TestOneBackendCrashIsHeld(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	var restarted atomic.Bool
	var srv *http.Server
	srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/work" && !restarted.Load() {
			// die: drop the connection and the port, then come back
			srv.Close()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			go func() {
				time.Sleep(200 * time.Millisecond) // the supervisor's restart delay
				ln2, err := net.Listen("tcp", addr)
				if err != nil {
					return
				}
				restarted.Store(true)
				next := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "back") })}
				t.Cleanup(func() { next.Close() })
				go next.Serve(ln2)
			}()
			return
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	h := startedHandler(t, `{"upstreams":`+upstreams(addr)+`}`)
	waitServing(t, h, 1)
	w, err := do(t.Context(), h, http.MethodGet, nil, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Equal(t, "back", w.Body.String())
}
