package main

// End-to-end tests: the real Caddy built from this package, a real Caddyfile,
// real example backends that are really killed and frozen.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

var caddyBin, backendBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "failover-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin, backendBin = filepath.Join(dir, "caddy"), filepath.Join(dir, "backend")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	var wg sync.WaitGroup
	var caddyErr error
	wg.Go(func() { caddyErr = chaos.BuildBinary(ctx, "./cmd/caddy", caddyBin) })
	backendErr := chaos.BuildBinary(ctx, "./examples/backend", backendBin)
	wg.Wait()
	cancel()
	if caddyErr != nil || backendErr != nil {
		fmt.Fprintln(os.Stderr, "building:", caddyErr, backendErr)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// rig is a pool of example backends behind a real Caddy: chaos.Rig, the
// one the demo uses, bound to a test. A rig made as a literal (over backends
// run by something else, say supervisord) gets its chaos.Rig on first use.
type rig struct {
	t        *testing.T
	dir      string
	records  string
	backends []*chaos.Backend
	addrs    []string
	caddy    *chaos.Caddy
	admin    string
	port     int
	client   *http.Client
	shared   *chaos.Rig
}

func newRig(t *testing.T, n int, backendArgs ...string) *rig {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs Caddy")
	}
	cr, err := chaos.NewRig(t.Context(), chaos.RigConfig{CaddyBin: caddyBin, BackendBin: backendBin, Dir: t.TempDir(), Backends: n, Args: backendArgs})
	require.NoError(t, err)
	t.Cleanup(func() { cr.Close() })
	return &rig{
		t: t, dir: cr.Dir(), records: cr.Records(), backends: cr.Backends(), addrs: cr.Addrs(),
		admin: cr.Admin(), port: cr.Port(), client: &http.Client{Timeout: 30 * time.Second}, shared: cr,
	}
}

// chaosRig is the shared rig; for a literal rig, one over r.addrs.
func (r *rig) chaosRig() *chaos.Rig {
	if r.shared == nil {
		cr, err := chaos.NewRig(r.t.Context(), chaos.RigConfig{
			CaddyBin: caddyBin, Dir: r.dir, External: r.addrs, Admin: r.admin, Port: r.port,
		})
		require.NoError(r.t, err)
		r.t.Cleanup(func() { cr.Close() })
		r.shared = cr
		r.admin, r.port = cr.Admin(), cr.Port()
	}
	return r.shared
}

// caddyfile is the whole Caddyfile for a site block; {{upstreams}} in it
// is the backends' addresses.
func (r *rig) caddyfile(block string) string {
	text, err := r.chaosRig().Caddyfile(block)
	require.NoError(r.t, err)
	return text
}

func (r *rig) start(block string) {
	c, err := r.chaosRig().StartCaddy(r.t.Context(), block)
	require.NoError(r.t, err)
	r.t.Cleanup(func() {
		c.Close()
		if r.t.Failed() {
			r.t.Logf("caddy log:\n%s", tail(c.Logs(), 6000))
		}
	})
	r.caddy = c
}

func (r *rig) url(path string) string { return r.chaosRig().URL(path) }

// pools reads the admin API.
func (r *rig) pools() []chaos.PoolStatus {
	out, err := r.chaosRig().Pools(r.t.Context())
	require.NoError(r.t, err)
	return out
}

// waitStates polls the admin API (bounded) until every backend is in the
// given state ("" matches any).
func (r *rig) waitStates(d time.Duration, want ...string) chaos.PoolStatus {
	ps, err := r.chaosRig().WaitStates(r.t.Context(), d, want...)
	require.NoError(r.t, err)
	return ps
}

func (r *rig) get(path string) (int, string, http.Header, error) {
	res, err := r.client.Get(r.url(path))
	if err != nil {
		return 0, "", nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), res.Header, err
}

func (r *rig) post(id string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodPost, r.url("/order"), strings.NewReader("item=1"))
	req.Header.Set("X-Request-Id", id)
	res, err := r.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// runChaos applies faults to r's backends under load: a stand-in
// supervisor restarts what exits, and a hung backend is SIGKILLed a second
// after its SIGSTOP. Every fault must have been applied. It returns the
// report and the restarts the supervisor made.
func (r *rig) runChaos(faults []chaos.Fault, load chaos.LoadConfig) (chaos.Report, int) {
	r.t.Helper()
	sup := r.chaosRig().StartSupervisor(chaos.SupervisorConfig{})
	defer sup.Stop()
	inj := &chaos.Injector{Backends: r.backends, HangFor: time.Second}
	ctx, cancel := context.WithTimeout(r.t.Context(), 30*time.Second)
	defer cancel()
	go inj.Run(ctx, faults)
	load.URL, load.Seed = r.url(""), 1
	res := chaos.RunLoad(ctx, load)
	inj.Wait()
	rep, err := chaos.Analyze(res, r.records)
	require.NoError(r.t, err)
	r.t.Logf("\n%s", rep)

	applied := 0
	for _, ev := range inj.Events() {
		if ev.Err == "" && ev.Action != "SIGKILL after hang" && ev.Action != "SIGCONT after pause" {
			applied++
		}
	}
	require.Equal(r.t, len(faults), applied, "every fault was applied: %v", inj.Events())
	return rep, len(sup.Restarts())
}

// Under concurrent GET and POST load, backends are SIGKILLed and SIGSTOPped
// (and restarted by a supervisor): no GET fails and no POST runs twice.
func TestChaosNoFailedGETsNoDoublePOSTs(t *testing.T) {
	r := newRig(t, 3)
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n}")
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")

	rep, restarts := r.runChaos([]chaos.Fault{
		{At: 500 * time.Millisecond, Kind: chaos.FaultCrash, Backend: 0},
		{At: 1500 * time.Millisecond, Kind: chaos.FaultHang, Backend: 1},
		{At: 3000 * time.Millisecond, Kind: chaos.FaultCrash, Backend: 2},
		{At: 4000 * time.Millisecond, Kind: chaos.FaultHang, Backend: 0},
		{At: 5500 * time.Millisecond, Kind: chaos.FaultOutage, Backend: -1},
		{At: 7000 * time.Millisecond, Kind: chaos.FaultCrash, Backend: 1},
	}, chaos.LoadConfig{Concurrency: 8, Duration: 8500 * time.Millisecond, MaxRequests: 200000, PostRatio: 0.3, WorkMs: 2})
	require.GreaterOrEqual(t, restarts, 6, "the supervisor restarted the killed backends")
	require.Greater(t, rep.Total, 1000, "the load ran")
	assert.Zero(t, rep.FailuresByMethod["GET"], "failed GETs")
	assert.Zero(t, rep.ExecutedTwice, "POSTs executed twice: %v", rep.ExecutedTwiceIDs)
	assert.Zero(t, rep.OKButNotRecorded, "POSTs acknowledged but never executed")
}

// Hangs and a 100ms stop-the-world pause among legitimately slow GETs (2%
// take 1.5s): a frozen backend is suspected and its GETs rescued, but no
// slow GET is ever cut off, no GET fails and no POST runs twice.
func TestHangsAmongSlowGETs(t *testing.T) {
	r := newRig(t, 3)
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n}")
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")

	rep, _ := r.runChaos([]chaos.Fault{
		{At: 500 * time.Millisecond, Kind: chaos.FaultHang, Backend: 0},
		{At: 1500 * time.Millisecond, Kind: chaos.FaultPause, Backend: 1},
		{At: 2500 * time.Millisecond, Kind: chaos.FaultHang, Backend: 2},
	}, chaos.LoadConfig{Concurrency: 8, Duration: 4 * time.Second, MaxRequests: 100000, PostRatio: 0.1, SlowRatio: 0.02, SlowMs: 1500, WorkMs: 2})
	require.Positive(t, rep.SlowGets, "the load sent slow GETs")
	assert.Zero(t, rep.FailuresByMethod["GET"], "failed GETs")
	assert.Zero(t, rep.SlowGetsFailed, "slow GETs failed")
	assert.Zero(t, rep.ExecutedTwice, "POSTs executed twice: %v", rep.ExecutedTwiceIDs)
	assert.Zero(t, rep.OKButNotRecorded, "POSTs acknowledged but never executed")
}

// A POST whose connection is refused never reached a backend: it is replayed
// on a peer and served, once.
func TestRefusedPOSTIsServedOnce(t *testing.T) {
	r := newRig(t, 2)
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n}")
	r.waitStates(10*time.Second, "healthy", "healthy")

	// b1 refuses new connections but still answers heartbeats on the
	// connection the proxy holds: it looks alive until a request is refused.
	res, err := http.Post("http://"+r.addrs[0]+"/close-listener", "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()

	for i := range 6 {
		code, body, err := r.post(fmt.Sprintf("refused-%d", i))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, "ok b2\n", body, "served by the backend that accepts connections")
	}
	ps := r.waitStates(5*time.Second, "ejected", "healthy")
	assert.Equal(t, "crash", ps.Backends[0].Reason.String(), "a refused connection is proof of a crash")

	records, err := os.ReadFile(r.records)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(records)), "\n")
	assert.Len(t, lines, 6, "each POST executed exactly once: %q", lines)
}

// Every backend dies; they come back about a second later. GETs sent in
// between are held, not failed, and succeed once a backend is back.
func TestTotalOutageHoldsRequests(t *testing.T) {
	r := newRig(t, 3)
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n}")
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")

	for _, b := range r.backends {
		require.NoError(t, b.Kill())
	}
	r.waitStates(5*time.Second, "ejected", "ejected", "ejected")

	type result struct {
		code    int
		err     error
		latency time.Duration
	}
	results := make(chan result, 20)
	for range 20 {
		go func() {
			start := time.Now()
			code, _, _, err := r.get("/work")
			results <- result{code, err, time.Since(start)}
		}()
	}
	time.AfterFunc(time.Second, func() {
		for _, b := range r.backends {
			_ = b.Restart(context.Background())
		}
	})
	for range 20 {
		select {
		case res := <-results:
			require.NoError(t, res.err)
			assert.Equal(t, http.StatusOK, res.code)
			assert.Greater(t, res.latency, 500*time.Millisecond, "held until a backend was back")
		case <-time.After(20 * time.Second):
			t.Fatal("held requests never finished")
		}
	}
}

// When nothing comes back within hold, the client gets 503 with Retry-After.
func TestHoldExpiresWith503(t *testing.T) {
	r := newRig(t, 1)
	r.start("failover {{upstreams}} {\n\thealth_uri /health\n\thold 300ms\n}")
	r.waitStates(10*time.Second, "healthy")
	require.NoError(t, r.backends[0].Kill())
	r.waitStates(5*time.Second, "ejected")

	start := time.Now()
	code, _, hdr, err := r.get("/work")
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "held for hold")
	ra, err := strconv.Atoi(hdr.Get("Retry-After"))
	require.NoError(t, err, "Retry-After is delay-seconds")
	assert.GreaterOrEqual(t, ra, 1)
}

var goroutinesRE = regexp.MustCompile(`goroutine profile: total (\d+)`)

func (r *rig) goroutines() int {
	res, err := http.Get("http://" + r.admin + "/debug/pprof/goroutine?debug=1")
	require.NoError(r.t, err)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := goroutinesRE.FindSubmatch(b)
	require.NotNil(r.t, m, "goroutine profile")
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// caddy reload with an unchanged pool keeps every backend's health, starts
// no second prober and leaks no goroutines.
func TestReloadKeepsHealth(t *testing.T) {
	r := newRig(t, 3)
	block := "header X-Generation %d\nfailover {{upstreams}} {\n\thealth_uri /health\n}"
	r.start(fmt.Sprintf(block, 0))
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")
	require.NoError(t, r.backends[2].Kill()) // no supervisor: stays dead
	before := r.waitStates(5*time.Second, "healthy", "healthy", "ejected")
	baseline := r.goroutines()

	for gen := 1; gen <= 5; gen++ {
		require.NoError(t, r.caddy.Reload(r.caddyfile(fmt.Sprintf(block, gen))))
		code, _, hdr, err := r.get("/work")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, strconv.Itoa(gen), hdr.Get("X-Generation"), "the new config is live")
	}
	after := r.pools()
	require.Len(t, after, 1, "one pool, so one prober per backend")
	assert.Equal(t, before.ID, after[0].ID, "the same pool survived the reloads")
	for i := range before.Backends {
		assert.Equal(t, before.Backends[i].State, after[0].Backends[i].State)
		assert.True(t, before.Backends[i].Since.Equal(after[0].Backends[i].Since),
			"backend %d: no transition across reloads", i)
	}
	// Goroutines settle back (an idle connection or two may come and go).
	deadline := time.Now().Add(5 * time.Second)
	for n := r.goroutines(); n > baseline+4; n = r.goroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines grew from %d to %d over 5 reloads", baseline, n)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The dead backend is still out after the reloads: no request is sent
	// to it. A listener on its address records every request that reaches
	// it and closes the connection unanswered (so heartbeats keep failing
	// and it stays ejected). A request sent there would still succeed, on a
	// peer, so only the recorder can tell.
	paths := recordRequests(t, r.addrs[2])
	select {
	case p := <-paths:
		require.Equal(t, "/health", p, "the first request at the dead backend's address is a heartbeat")
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat reached the recorder on the dead backend's address within 10s")
	}
	for range 9 {
		code, _, _, err := r.get("/work")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
	}
	// a request that reached the recorder was recorded before its
	// connection closed, so before the proxy could replay it and answer
	for {
		select {
		case p := <-paths:
			require.Equal(t, "/health", p, "a client request was sent to the ejected backend")
			continue
		default:
		}
		break
	}
}

// recordRequests listens on addr and sends the path of every request that
// reaches it to the returned channel, closing each connection unanswered.
// It stops when the test ends.
func recordRequests(t *testing.T, addr string) <-chan string {
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	paths := make(chan string, 4096)
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err == nil {
					paths <- req.URL.Path // never full: a few heartbeats a second
				}
			}()
		}
	}()
	return paths
}
