package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/caddymodule/cluster"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// countingSupervisor is what failover's http restarter talks to in the
// cluster tests: it counts the restart requests per backend and restarts
// the backend (SIGKILL, start again). With delay, it waits that long before
// restarting, and gives up if the requester goes away meanwhile (a killed
// Caddy): a slow restart whose holder can be caught holding its lease.
// With answerLate, it answers that long after the new process listens.
type countingSupervisor struct {
	backends map[string]*chaos.Backend
	delay    time.Duration

	mu         sync.Mutex
	requests   map[string]int       // received, by backend
	restarted  map[string]int       // carried out, by backend
	first      map[string]time.Time // the first request's arrival, by backend
	aborted    int
	pending    int
	answerLate time.Duration
	changed    chan struct{}
	url        string
}

func startCountingSupervisor(t *testing.T, backends []*chaos.Backend, delay time.Duration) *countingSupervisor {
	s := &countingSupervisor{backends: map[string]*chaos.Backend{}, delay: delay,
		requests: map[string]int{}, restarted: map[string]int{}, first: map[string]time.Time{}, changed: make(chan struct{})}
	for _, b := range backends {
		s.backends[b.Config().Addr] = b
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: s}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	s.url = "http://" + ln.Addr().String() + "/restart"
	return s
}

func (s *countingSupervisor) note(f func()) {
	s.mu.Lock()
	f()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *countingSupervisor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var target struct{ Backend string }
	if err := json.NewDecoder(r.Body).Decode(&target); err != nil || s.backends[target.Backend] == nil {
		http.Error(w, "unknown backend", http.StatusBadRequest)
		return
	}
	now := time.Now()
	s.note(func() {
		if s.requests[target.Backend]++; s.requests[target.Backend] == 1 {
			s.first[target.Backend] = now
		}
		s.pending++
	})
	defer s.note(func() { s.pending-- })
	if s.delay > 0 {
		t := time.NewTimer(s.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			s.note(func() { s.aborted++ })
			return
		}
	}
	if err := s.backends[target.Backend].Restart(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.note(func() { s.restarted[target.Backend]++ })
	s.mu.Lock()
	late := s.answerLate
	s.mu.Unlock()
	if late > 0 {
		t := time.NewTimer(late)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// wait polls cond, under the lock, at every change, until it holds.
func (s *countingSupervisor) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, changed := cond(), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("supervisor: never %s (requests %v, restarted %v, aborted %d, pending %d)", what, s.requests, s.restarted, s.aborted, s.pending)
		}
	}
}

func (s *countingSupervisor) counts() (requests, restarted map[string]int, aborted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.requests), maps.Clone(s.restarted), s.aborted
}

// clusterRig is n Caddy instances sharing one file_system storage, in front
// of the same three backends (one pool, named "shared"), restarted by a
// countingSupervisor through the http restarter.
type clusterRig struct {
	t        *testing.T
	backends []*chaos.Backend
	addrs    []string
	sup      *countingSupervisor
	caddys   []*chaos.Caddy
	storage  string
}

// newClusterRig starts the instances, with fast heartbeats, restarts after
// 300ms, a lease of restartTimeout, and extra lines in the failover block.
func newClusterRig(t *testing.T, n int, delay, restartTimeout time.Duration, extra string) *clusterRig {
	r := &clusterRig{t: t}
	rig := newRig(t, 3) // skips with -short
	r.backends, r.addrs = rig.backends, rig.addrs
	r.sup = startCountingSupervisor(t, r.backends, delay)
	r.storage = filepath.Join(t.TempDir(), "storage")
	ports, err := chaos.FreePorts(2 * n)
	require.NoError(t, err)
	block := fmt.Sprintf(`failover %s {
	name shared
	health_uri /health
	health_interval 100ms
	health_timeout 100ms
	restart_after 300ms
	restart_timeout %s
	restart http %s {
		timeout 30s
	}
%s}`, strings.Join(r.addrs, " "), restartTimeout, r.sup.url, extra)
	if strings.Contains(extra, "health_interval") {
		block = strings.Replace(block, "\thealth_interval 100ms\n", "", 1)
	}
	for i := range n {
		admin := fmt.Sprintf("127.0.0.1:%d", ports[2*i])
		cf := chaos.CaddyfileWithGlobals(admin, ports[2*i+1], "storage file_system "+r.storage, block)
		c, err := chaos.StartCaddy(t.Context(), caddyBin, cf, filepath.Join(t.TempDir(), fmt.Sprint("caddy", i)))
		require.NoError(t, err)
		t.Cleanup(func() {
			c.Close()
			if t.Failed() {
				t.Logf("caddy %d log:\n%s", i, tail(c.Logs(), 4000))
			}
		})
		r.caddys = append(r.caddys, c)
	}
	for _, c := range r.caddys {
		waitPool(t, c.Admin(), "all healthy", allState("healthy"))
	}
	return r
}

// eachHealthy waits until every live instance has every backend healthy.
func (r *clusterRig) eachHealthy(skip ...*chaos.Caddy) {
	for _, c := range r.caddys {
		if !containsCaddy(skip, c) {
			waitPool(r.t, c.Admin(), "all healthy", allState("healthy"))
		}
	}
}

func containsCaddy(cs []*chaos.Caddy, c *chaos.Caddy) bool {
	for _, o := range cs {
		if o == c {
			return true
		}
	}
	return false
}

// load sends GETs through every instance until stop, and returns the ones
// that failed.
func (r *clusterRig) load(ctx context.Context) func() []chaos.Request {
	ctx, cancel := context.WithCancel(ctx)
	results := make([]*chaos.Results, len(r.caddys))
	var wg sync.WaitGroup
	for i, c := range r.caddys {
		wg.Go(func() {
			results[i] = chaos.RunLoad(ctx, chaos.LoadConfig{URL: c.URL(), Concurrency: 2, Duration: time.Minute, MaxRequests: 200000, Seed: int64(i + 1)})
		})
	}
	return func() []chaos.Request {
		cancel()
		wg.Wait()
		var failed []chaos.Request
		for _, res := range results {
			for _, q := range res.Requests {
				if !q.OK() && q.Err != chaos.ErrCanceled {
					failed = append(failed, q)
				}
			}
		}
		return failed
	}
}

// Three instances, three backends frozen one after another under load:
// exactly one restart request per hang, and no GET fails.
func TestClusterOneRestartPerHang(t *testing.T) {
	r := newClusterRig(t, 3, 0, 5*time.Second, "")
	stop := r.load(t.Context())
	for i, b := range r.backends {
		t0 := time.Now()
		require.NoError(t, b.Stop())
		addr := r.addrs[i]
		r.sup.wait(t, "restarted "+addr, func() bool { return r.sup.restarted[addr] == 1 })
		t1 := time.Now()
		r.eachHealthy()
		t.Logf("hang %d: restarted after %v, healthy everywhere after %v", i, t1.Sub(t0), time.Since(t0))
	}
	failed := stop()
	require.Empty(t, failed, "failed GETs")
	requests, restarted, _ := r.sup.counts()
	for _, a := range r.addrs {
		require.Equal(t, 1, requests[a], "restart requests for %s: %v", a, requests)
		require.Equal(t, 1, restarted[a], "restarts of %s", a)
	}
}

// The instance that holds a restart's lease is SIGKILLed while its (slow)
// restart is under way: its request dies with it, the lease runs out, and
// one of the others takes it over; the backend is restarted once.
func TestClusterLeaseHolderKilled(t *testing.T) {
	r := newClusterRig(t, 3, time.Second, 3*time.Second, "")
	addr := r.addrs[0]
	require.NoError(t, r.backends[0].Stop())
	r.sup.wait(t, "a pending request", func() bool { return r.sup.pending == 1 })
	holder := leaseHolder(t, r.storage, addr)
	var victim *chaos.Caddy
	for _, c := range r.caddys {
		if strings.Contains(holder, fmt.Sprintf("/%d/", c.Pid())) {
			victim = c
		}
	}
	require.NotNil(t, victim, "the lease's holder %q is one of the instances", holder)
	require.NoError(t, victim.Close()) // SIGKILL
	r.sup.wait(t, "restarted after the takeover", func() bool { return r.sup.restarted[addr] == 1 })
	r.eachHealthy(victim)
	requests, restarted, aborted := r.sup.counts()
	require.Equal(t, 1, aborted, "the killed holder's request")
	require.Equal(t, 2, requests[addr], "the holder's and the one that took over")
	require.Equal(t, 1, restarted[addr])
	require.NotEqual(t, holder, leaseHolder(t, r.storage, addr), "another instance took the lease")
}

// leaseHolder reads the pool's record in the shared file_system storage.
func leaseHolder(t *testing.T, dir, addr string) string {
	b, err := os.ReadFile(filepath.Join(dir, cluster.Store{Pool: "shared"}.Key()))
	require.NoError(t, err)
	var rec cluster.Record
	require.NoError(t, json.Unmarshal(b, &rec))
	return rec.Restarts[addr].Holder
}

// A rolling restart asked of two instances at once runs once: one accepts
// it, the other refuses (409), and each backend is restarted once.
func TestClusterRollingRestartRunsOnce(t *testing.T) {
	r := newClusterRig(t, 2, 0, 5*time.Second, "")
	codes := make([]int, 2)
	var wg sync.WaitGroup
	for i, c := range r.caddys {
		wg.Go(func() {
			codes[i], _ = adminDo(t, c.Admin(), http.MethodPost, "/failover/pools/shared/rolling-restart", nil)
		})
	}
	wg.Wait()
	require.ElementsMatch(t, []int{http.StatusAccepted, http.StatusConflict}, codes)
	runner := r.caddys[0]
	if codes[1] == http.StatusAccepted {
		runner = r.caddys[1]
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var rr caddymodule.RollingRestart
		code, body := adminDo(t, runner.Admin(), http.MethodGet, "/failover/pools/shared/rolling-restart", &rr)
		require.Equal(t, http.StatusOK, code, body)
		if rr.State != "running" {
			require.Equal(t, "done", rr.State, rr.Error)
			break
		}
		require.True(t, time.Now().Before(deadline), "rolling restart still running: %+v", rr)
		time.Sleep(20 * time.Millisecond)
	}
	r.eachHealthy()
	requests, _, _ := r.sup.counts()
	for _, a := range r.addrs {
		require.Equal(t, 1, requests[a], "restart requests for %s: %v", a, requests)
	}
}

// An operator's restart whose restarter answers after the new process
// listens: the heartbeats reach the replacement before the restart is
// over, on a connection the engine must not keep waiting on (see
// healthcheck.ReturnOnNewProcess). The restart succeeds, and the backend
// is in service again, on this instance and its peer.
func TestClusterOperatorRestartAnsweredLate(t *testing.T) {
	r := newClusterRig(t, 2, 0, 5*time.Second, "")
	r.sup.mu.Lock()
	r.sup.answerLate = 500 * time.Millisecond // five heartbeat intervals
	r.sup.mu.Unlock()
	addr := r.addrs[0]
	code, body := adminDo(t, r.caddys[0].Admin(), http.MethodPost, "/failover/backends/"+addr+"/restart", nil)
	require.Equal(t, http.StatusOK, code, body)
	r.eachHealthy()
	requests, restarted, _ := r.sup.counts()
	require.Equal(t, 1, requests[addr], "restart requests: %v", requests)
	require.Equal(t, 1, restarted[addr], "restarts: %v", restarted)
}

// TestClusterFigures measures, for the closing note (only with
// FAILOVER_CLUSTER_FIGURES=1): restart requests per hang with 1, 2 and 3
// instances, cluster on and off; and how long after one instance's restart
// request the other instances take the backend out of service, with shared
// facts and without, for a hang (SIGSTOP) and an operator's restart.
func TestClusterFigures(t *testing.T) {
	if os.Getenv("FAILOVER_CLUSTER_FIGURES") == "" {
		t.Skip("figures: set FAILOVER_CLUSTER_FIGURES=1")
	}
	for _, mode := range []string{"on", "off"} {
		for n := 1; n <= 3; n++ {
			r := newClusterRig(t, n, 0, 5*time.Second, "\tcluster "+mode+"\n")
			for i, b := range r.backends {
				require.NoError(t, b.Stop())
				addr := r.addrs[i]
				r.sup.wait(t, "restarted "+addr, func() bool { return r.sup.restarted[addr] >= 1 })
				r.eachHealthy()
			}
			requests, _, _ := r.sup.counts()
			total := 0
			for _, v := range requests {
				total += v
			}
			t.Logf("FIGURE cluster %s, %d instances: %.2f restart requests per hang (%v)", mode, n, float64(total)/3, requests)
			for _, c := range r.caddys {
				c.Close()
			}
		}
	}
	for _, mode := range []string{"on", "off"} {
		for _, fault := range []string{"hang", "operator restart", "hang seen first by a live request"} {
			extra, delay := "\tcluster "+mode+"\n", time.Duration(0)
			if fault == "hang seen first by a live request" {
				// instance 0 alone has traffic: its live request times
				// out at the first missed beat, the others need 3 misses;
				// the supervisor takes a second to kill
				extra += "\thealth_interval 500ms\n\thealth_fails 3\n"
				delay = time.Second
			}
			r := newClusterRig(t, 3, delay, 5*time.Second, extra)
			var stop func() []chaos.Request
			if fault == "hang seen first by a live request" {
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan struct{})
				go func() {
					defer close(done)
					chaos.RunLoad(ctx, chaos.LoadConfig{URL: r.caddys[0].URL(), Concurrency: 2, Duration: time.Minute, MaxRequests: 200000})
				}()
				stop = func() []chaos.Request { cancel(); <-done; return nil }
			}
			var deltas []time.Duration
			for i, b := range r.backends {
				addr := r.addrs[i]
				outs := make([]time.Time, 2)
				var wg sync.WaitGroup
				for j, c := range r.caddys[1:] {
					wg.Go(func() { outs[j] = waitOut(t, c.Admin(), addr) })
				}
				if fault == "hang" {
					require.NoError(t, b.Stop())
				} else {
					code, body := adminDo(t, r.caddys[0].Admin(), http.MethodPost, "/failover/backends/"+addr+"/restart", nil)
					require.Less(t, code, 300, body)
				}
				wg.Wait()
				r.sup.wait(t, "restarted "+addr, func() bool { return r.sup.restarted[addr] >= 1 })
				r.sup.mu.Lock()
				t0 := r.sup.first[addr]
				r.sup.mu.Unlock()
				for _, o := range outs {
					deltas = append(deltas, o.Sub(t0))
				}
				r.eachHealthy()
			}
			if stop != nil {
				stop()
			}
			t.Logf("FIGURE cluster %s, %s: the other instances took the backend out of service %v after the restart request", mode, fault, deltas)
			for _, c := range r.caddys {
				c.Close()
			}
		}
	}
}

// waitOut polls an instance until addr is out of service there, and says
// when it saw it.
func waitOut(t *testing.T, admin, addr string) time.Time {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range poolsAt(t, admin) {
			for _, b := range p.Backends {
				if b.Addr == addr && !b.State.InService() {
					return time.Now()
				}
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Errorf("%s never out of service at %s", addr, admin)
	return time.Time{}
}
