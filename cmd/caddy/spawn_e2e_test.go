package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/caddymodule"
	"github.com/crashonly/caddy-failover/cmd/internal/chaos"
	"github.com/crashonly/caddy-failover/internal/procstat"
)

// poolsAt reads failover's admin API.
func poolsAt(tb testing.TB, admin string) []caddymodule.PoolStatus {
	res, err := http.Get("http://" + admin + "/failover/pools")
	require.NoError(tb, err)
	defer res.Body.Close()
	var out []caddymodule.PoolStatus
	require.NoError(tb, json.NewDecoder(res.Body).Decode(&out))
	return out
}

// waitPool polls (bounded) until cond holds for the only pool.
func waitPool(tb testing.TB, admin, what string, cond func(caddymodule.PoolStatus) bool) caddymodule.PoolStatus {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ps := poolsAt(tb, admin)
		if len(ps) == 1 && cond(ps[0]) {
			return ps[0]
		}
		if time.Now().After(deadline) {
			tb.Fatalf("never %s; pools: %+v", what, ps)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func allState(state string) func(caddymodule.PoolStatus) bool {
	return func(p caddymodule.PoolStatus) bool {
		for _, b := range p.Backends {
			if b.State.String() != state {
				return false
			}
		}
		return true
	}
}

func pidsOf(t *testing.T, addrs []string) []int {
	pids := make([]int, len(addrs))
	for i, a := range addrs {
		pids[i] = waitAnswers(t, a, 10*time.Second)
	}
	return pids
}

// alive reports whether pid is a process that has not exited (a zombie is
// dead, just not reaped yet).
func alive(pid int) bool { return procstat.Alive(pid) }

// The built-in supervisor: Caddy runs the pool, restarts what is killed or
// frozen, keeps the processes across a reload of an unchanged config, and
// leaves nothing behind when it stops.
func TestSpawnSupervisesThePool(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ports, err := chaos.FreePorts(5)
	require.NoError(t, err)
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	var addrs []string
	for _, p := range ports[2:] {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	block := fmt.Sprintf("header X-Generation %%d\nfailover {\n\thealth_uri /health\n\tspawn %s -addr {backend} -id b{index} {\n\t\tto %s\n\t}\n}", backendBin, strings.Join(addrs, " "))
	dir := t.TempDir()
	c, err := chaos.StartCaddy(t.Context(), caddyBin, chaos.Caddyfile(admin, ports[1], fmt.Sprintf(block, 0)), filepath.Join(dir, "caddy"))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("caddy log:\n%s", tail(c.Logs(), 6000))
		}
	})
	waitPool(t, admin, "all healthy", allState("healthy"))
	pids := pidsOf(t, addrs)

	// SIGKILL: restarted on exit, with a new pid
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	deadline := time.Now().Add(10 * time.Second)
	for backendPid(addrs[0]) == pids[0] || backendPid(addrs[0]) == 0 {
		require.True(t, time.Now().Before(deadline), "killed backend never came back")
		time.Sleep(10 * time.Millisecond)
	}

	// SIGSTOP: a hang; the supervisor kills and restarts it
	require.NoError(t, syscall.Kill(pids[1], syscall.SIGSTOP))
	waitPool(t, admin, "restarting", func(p caddymodule.PoolStatus) bool { return p.Backends[1].State.String() == "restarting" })
	waitPool(t, admin, "all healthy again", allState("healthy"))
	assert.False(t, alive(pids[1]), "the frozen process was killed")
	assert.NotEqual(t, pids[1], backendPid(addrs[1]))

	// reload, config unchanged but for another directive: same processes
	before := pidsOf(t, addrs)
	for gen := 1; gen <= 3; gen++ {
		require.NoError(t, c.Reload(chaos.Caddyfile(admin, ports[1], fmt.Sprintf(block, gen))))
	}
	assert.Equal(t, before, pidsOf(t, addrs), "reload restarted no backend")

	// stop: no process of the group is left
	require.NoError(t, c.Stop())
	for _, pid := range before {
		assert.False(t, alive(pid), "pid %d outlived caddy stop", pid)
	}
}
