package main

// Operating failover: the admin API's actions, rolling restarts under
// load, and /metrics, with the real Caddy and real processes.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
)

// adminDo sends a request to Caddy's admin endpoint and decodes the JSON
// answer into out (unless nil); it returns the status and the body.
func adminDo(t *testing.T, admin, method, path string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+admin+path, nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if out != nil && res.StatusCode < 300 {
		require.NoError(t, json.Unmarshal(b, out), "%s", b)
	}
	var apiErr struct{ Error string }
	if res.StatusCode >= 400 && json.Unmarshal(b, &apiErr) == nil {
		return res.StatusCode, apiErr.Error
	}
	return res.StatusCode, string(b)
}

// A rolling restart through the admin API under GET and POST load, with
// the built-in supervisor: every process replaced, one at a time, with no
// failed request and no POST executed twice.
func TestRollingRestartUnderLoad(t *testing.T) {
	records := filepath.Join(t.TempDir(), "orders.log")
	_, admin, port, addrs := startSpawnCaddy(t, 3, func(a []string) string {
		return fmt.Sprintf("failover {\n\tname shop\n\thealth_uri /health\n\tspawn %s -addr {backend} -id b{index} -records %s {\n\t\tto %s\n\t}\n}",
			backendBin, records, strings.Join(a, " "))
	})
	old := pidsOf(t, addrs)

	var rr caddymodule.RollingRestart
	rep := deployUnderLoad(t, fmt.Sprintf("http://127.0.0.1:%d", port), records, func(context.Context) error {
		code, body := adminDo(t, admin, http.MethodPost, "/failover/pools/shop/rolling-restart", &rr)
		require.Equal(t, http.StatusAccepted, code, body)
		assert.Equal(t, "running", rr.State)
		code, body = adminDo(t, admin, http.MethodPost, "/failover/pools/shop/rolling-restart", nil)
		assert.Equal(t, http.StatusConflict, code, "a second one is refused while one runs: %s", body)
		assert.Contains(t, body, "already running")
		waitFor(t, time.Minute, "the rolling restart ends", func() bool {
			adminDo(t, admin, http.MethodGet, "/failover/pools/shop/rolling-restart", &rr)
			return rr.State != "running"
		})
		return nil
	})
	require.Equal(t, "done", rr.State, "error: %s", rr.Error)
	assert.Equal(t, addrs, rr.Done)
	assert.Zero(t, rep.Failed, "failed requests: %v", rep.FailuresByKind)
	assert.Zero(t, rep.ExecutedTwice, "POSTs executed twice: %v", rep.ExecutedTwiceIDs)
	fresh := pidsOf(t, addrs)
	for i := range addrs {
		assert.NotEqual(t, old[i], fresh[i], "backend %d was restarted", i)
		assert.False(t, alive(old[i]))
	}
}

// The admin API's actions on a backend, and its errors on bad input.
func TestAdminAPIActions(t *testing.T) {
	r := newRig(t, 2)
	r.start("failover {{upstreams}} {\n\tname api\n\thealth_uri /health\n}")
	r.waitStates(10*time.Second, "healthy", "healthy")
	a := r.addrs[0]

	var out caddymodule.BackendAction
	code, body := adminDo(t, r.admin, http.MethodPost, "/failover/backends/"+a+"/drain?wait=5s", &out)
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, []string{"api"}, out.Pools)
	r.waitStates(5*time.Second, "draining", "healthy")
	for range 6 { // no request reaches a draining backend
		_, b, _, err := r.get("/work")
		require.NoError(t, err)
		assert.NotContains(t, b, "backend=b1")
	}

	code, body = adminDo(t, r.admin, http.MethodPost, "/failover/backends/"+a+"/maint", &out)
	require.Equal(t, http.StatusOK, code, body)
	r.waitStates(5*time.Second, "maint", "healthy")
	require.NoError(t, r.backends[0].Kill()) // maintenance: its exit is no crash
	beats := r.pools()[0].Backends[0].Beats
	waitFor(t, 5*time.Second, "three more heartbeats", func() bool { return r.pools()[0].Backends[0].Beats >= beats+3 })
	r.waitStates(time.Second, "maint", "healthy")
	require.NoError(t, r.backends[0].Restart(t.Context()))
	code, body = adminDo(t, r.admin, http.MethodPost, "/failover/backends/"+a+"/ready", &out)
	require.Equal(t, http.StatusOK, code, body)
	r.waitStates(5*time.Second, "healthy", "healthy")

	var ps []caddymodule.PoolStatus
	adminDo(t, r.admin, http.MethodGet, "/failover/pools", &ps)
	require.Len(t, ps, 1)
	assert.Equal(t, "api", ps[0].Name)
	assert.Zero(t, ps[0].Backends[0].Ejections["crash"], "the exit in maintenance was not a crash")

	for _, tc := range []struct {
		method, path string
		status       int
		want         string
	}{
		{"POST", "/failover/backends/127.0.0.1:1/drain", 404, "no failover pool has backend"},
		{"POST", "/failover/backends/" + a + "/explode", 404, `unknown action "explode"`},
		{"POST", "/failover/backends/" + a + "/drain?wait=forever", 400, `wait "forever"`},
		{"GET", "/failover/backends/" + a + "/drain", 405, "POST"},
		{"POST", "/failover/pools/nope/rolling-restart", 404, `no failover pool named "nope"`},
		{"POST", "/failover/pools/api/rolling-restart", 409, "no restarter"},
		{"POST", "/failover/backends/" + a + "/restart", 409, "no restarter"},
		{"GET", "/failover/pools/api/whatever", 404, "expected /failover/pools/<name>/rolling-restart"},
	} {
		code, body := adminDo(t, r.admin, tc.method, tc.path, nil)
		assert.Equal(t, tc.status, code, "%s %s: %s", tc.method, tc.path, body)
		assert.Contains(t, body, tc.want, "%s %s", tc.method, tc.path)
	}
}

var metricRE = regexp.MustCompile(`(?m)^(caddy_failover_[a-z_]+)\{([^}]*)\} ([0-9.e+-]+)$`)

// metricsAt scrapes Caddy's /metrics on the admin endpoint and sums the
// series of name whose labels contain every one of want.
func metricsAt(t *testing.T, admin, name string, want ...string) float64 {
	_, body := adminDo(t, admin, http.MethodGet, "/metrics", nil)
	sum := 0.0
	for _, m := range metricRE.FindAllStringSubmatch(body, -1) {
		if m[1] != name {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(m[2], w)
		}
		if ok {
			v, err := strconv.ParseFloat(m[3], 64)
			require.NoError(t, err)
			sum += v
		}
	}
	return sum
}

// /metrics during a fault run agrees with the admin API and with what the
// test did: ejections, restarts, held requests, states.
func TestMetricsMatchWhatHappened(t *testing.T) {
	_, admin, port, addrs := startSpawnCaddy(t, 2, func(a []string) string {
		return fmt.Sprintf("failover {\n\tname m\n\thealth_uri /health\n\tspawn %s -addr {backend} {\n\t\tto %s\n\t}\n}",
			backendBin, strings.Join(a, " "))
	})
	pids := pidsOf(t, addrs)
	assert.Equal(t, 1.0, metricsAt(t, admin, "caddy_failover_backend_state", `pool="m"`, `state="healthy"`, `backend="`+addrs[0]+`"`))

	// a crash and a hang: two ejections, one restart asked for (the hang)
	crashes := metricsAt(t, admin, "caddy_failover_ejections_total", `backend="`+addrs[0]+`"`, `reason="crash"`)
	require.NoError(t, killPid(pids[0]))
	waitPool(t, admin, "back after the crash", func(p caddymodule.PoolStatus) bool {
		return p.Backends[0].State.String() == "healthy" && spawnedPidAt(addrs[0]) != pids[0]
	})
	require.NoError(t, stopPid(pids[1]))
	waitPool(t, admin, "back after the hang", func(p caddymodule.PoolStatus) bool {
		return p.Backends[1].State.String() == "healthy" && spawnedPidAt(addrs[1]) != pids[1] && spawnedPidAt(addrs[1]) != 0
	})

	var ps []caddymodule.PoolStatus
	adminDo(t, admin, http.MethodGet, "/failover/pools", &ps)
	require.Len(t, ps, 1)
	for i, b := range ps[0].Backends {
		for reason, n := range b.Ejections {
			assert.Equal(t, float64(n), metricsAt(t, admin, "caddy_failover_ejections_total", `pool="m"`, `backend="`+addrs[i]+`"`, `reason="`+reason+`"`), "backend %d %s", i, reason)
		}
	}
	assert.Equal(t, crashes+1, metricsAt(t, admin, "caddy_failover_ejections_total", `backend="`+addrs[0]+`"`, `reason="crash"`))
	assert.Equal(t, 1.0, metricsAt(t, admin, "caddy_failover_ejections_total", `backend="`+addrs[1]+`"`, `reason="hang"`))
	assert.Equal(t, float64(ps[0].Backends[1].Restarts), metricsAt(t, admin, "caddy_failover_restarts_total", `pool="m"`, `restarter="spawn"`, `result="ok"`))
	assert.Equal(t, 1.0, metricsAt(t, admin, "caddy_failover_restarts_total", `pool="m"`, `result="ok"`), "one restart: the hang's")
	assert.Equal(t, 1.0, metricsAt(t, admin, "caddy_failover_restart_duration_seconds_count", `pool="m"`))

	// an outage: a held request shows in the held gauge, then in hold_seconds
	require.NoError(t, maintAll(t, admin, addrs))
	got := make(chan int, 1)
	go func() {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/work", port))
		if err != nil {
			got <- -1
			return
		}
		res.Body.Close()
		got <- res.StatusCode
	}()
	waitFor(t, 5*time.Second, "one request held", func() bool { return metricsAt(t, admin, "caddy_failover_held", `pool="m"`) == 1 })
	for _, a := range addrs {
		adminDo(t, admin, http.MethodPost, "/failover/backends/"+a+"/ready", nil)
	}
	assert.Equal(t, http.StatusOK, <-got)
	assert.Equal(t, 0.0, metricsAt(t, admin, "caddy_failover_held", `pool="m"`))
	assert.GreaterOrEqual(t, metricsAt(t, admin, "caddy_failover_hold_seconds_count", `pool="m"`), 1.0)
	assert.Positive(t, metricsAt(t, admin, "caddy_failover_heartbeats_total", `pool="m"`, `result="pass"`))
}

func maintAll(t *testing.T, admin string, addrs []string) error {
	for _, a := range addrs {
		if code, body := adminDo(t, admin, http.MethodPost, "/failover/backends/"+a+"/maint", nil); code != http.StatusOK {
			return fmt.Errorf("maint %s: %d %s", a, code, body)
		}
	}
	return nil
}

func spawnedPidAt(addr string) int { return backendPid(addr) }

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
func stopPid(pid int) error { return syscall.Kill(pid, syscall.SIGSTOP) }

// deployUnderLoad runs GET+POST load on url while deploy runs, and returns
// the load's report, with the backends' order records.
func deployUnderLoad(t *testing.T, url, records string, deploy func(ctx context.Context) error) chaos.Report {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var res *chaos.Results
	var wg sync.WaitGroup
	wg.Go(func() {
		res = chaos.RunLoad(ctx, chaos.LoadConfig{
			URL: url, Concurrency: 8, Duration: time.Minute, MaxRequests: 200000,
			PostRatio: 0.2, Seed: 2, WorkMs: 2,
		})
	})
	err := deploy(ctx)
	cancel()
	wg.Wait()
	require.NoError(t, err)
	rep, err := chaos.Analyze(res, records)
	require.NoError(t, err)
	t.Logf("\n%s", rep)
	require.Greater(t, rep.Total, 100, "the load ran")
	return rep
}

// A rolling deploy by SIGTERM alone, under any supervisor: each backend
// announces its drain on its heartbeat, finishes its requests and exits;
// its supervisor starts it again. No request fails, and failover asks for
// no restart: a graceful exit is not a crash.
func TestDeployBySIGTERMWithAnnouncedDrain(t *testing.T) {
	r := newRig(t, 3)
	asked := filepath.Join(t.TempDir(), "restarts")
	r.start(fmt.Sprintf("failover {{upstreams}} {\n\thealth_uri /health\n\trestart_crashed on\n\trestart exec sh -c \"echo {backend} {reason} >> %s\"\n}", asked))
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")
	sup := r.chaosRig().StartSupervisor(chaos.SupervisorConfig{RestartSec: 300 * time.Millisecond})
	defer sup.Stop()
	old := []int{r.backends[0].Pid(), r.backends[1].Pid(), r.backends[2].Pid()}

	inj := &chaos.Injector{Backends: r.backends}
	rep := deployUnderLoad(t, r.url(""), r.records, func(ctx context.Context) error {
		inj.Apply(ctx, chaos.Fault{Kind: chaos.FaultDeploy, Backend: -1})
		if ev := inj.Events(); ev[0].Err != "" {
			return fmt.Errorf("deploy: %s", ev[0].Err)
		}
		return nil
	})
	assert.Zero(t, rep.Failed, "failed requests: %v", rep.FailuresByKind)
	assert.Zero(t, rep.ExecutedTwice, "POSTs executed twice: %v", rep.ExecutedTwiceIDs)
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")
	for i, b := range r.backends {
		assert.NotEqual(t, old[i], b.Pid(), "backend %d was redeployed", i)
	}
	assert.NoFileExists(t, asked, "failover asked for no restart (restart_crashed is on: a crash would have been)")
	assert.Len(t, sup.Restarts(), 3)
}

// A rolling restart through the admin API with an external supervisor: the
// signal restarter SIGTERMs each backend by its pidfile, the supervisor
// starts it again.
func TestRollingRestartExternalSupervisor(t *testing.T) {
	pidDir := t.TempDir()
	r := newRig(t, 3, "-pidfile-dir", pidDir)
	r.start(fmt.Sprintf("failover {{upstreams}} {\n\tname ext\n\thealth_uri /health\n\trestart signal %s/{port}.pid TERM\n}", pidDir))
	r.waitStates(10*time.Second, "healthy", "healthy", "healthy")
	sup := r.chaosRig().StartSupervisor(chaos.SupervisorConfig{RestartSec: 300 * time.Millisecond})
	defer sup.Stop()
	old := []int{r.backends[0].Pid(), r.backends[1].Pid(), r.backends[2].Pid()}

	rep := deployUnderLoad(t, r.url(""), r.records, func(ctx context.Context) error { return chaos.RollingRestart(ctx, r.admin) })
	assert.Zero(t, rep.Failed, "failed requests: %v", rep.FailuresByKind)
	assert.Zero(t, rep.ExecutedTwice, "POSTs executed twice: %v", rep.ExecutedTwiceIDs)
	for i, b := range r.backends {
		assert.NotEqual(t, old[i], b.Pid(), "backend %d was restarted", i)
	}
	assert.Len(t, sup.Restarts(), 3, "one restart each, by the supervisor")
}
