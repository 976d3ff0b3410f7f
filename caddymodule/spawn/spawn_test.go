//go:build linux

package spawn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/crashonly/caddy-failover/internal/freeport"
	"github.com/crashonly/caddy-failover/internal/procstat"
)

// backendBin is the example backend, built once by TestMain.
var backendBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "spawn-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	backendBin = filepath.Join(dir, "backend")
	build := exec.Command("go", "build", "-o", backendBin, "github.com/crashonly/caddy-failover/examples/backend")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the example backend:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePorts returns n distinct ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := freeport.Ports(n)
	require.NoError(t, err)
	return ports
}

func backendConfig(ports []int) Config {
	return Config{Command: []string{backendBin, "-addr", "{backend}"}, Ports: ports}
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

var client = &http.Client{Timeout: time.Second}

// pidAt returns the pid of the backend answering at addr, waiting up to
// 10s for it to answer.
func pidAt(t *testing.T, addr string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://" + addr + "/work")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			m := regexp.MustCompile(`pid=(\d+)`).FindSubmatch(body)
			if resp.StatusCode == http.StatusOK && m != nil {
				pid, _ := strconv.Atoi(string(m[1]))
				return pid
			}
			err = fmt.Errorf("status %d, body %q", resp.StatusCode, body)
		}
		last = err
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("backend %s did not answer within 10s: %v", addr, last)
	return 0
}

// waitFor polls cond every 10ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid is a live process: not gone, not a zombie
// waiting for its reaper.
func alive(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return false
	}
	return procstat.Alive(pid)
}

func acquire(t *testing.T, cfg Config, log *zap.Logger) *Group {
	t.Helper()
	g, err := Acquire(cfg, log)
	require.NoError(t, err)
	t.Cleanup(g.Release) // a failed test leaves no process behind
	changed, err := g.Start()
	require.NoError(t, err)
	require.Empty(t, changed)
	return g
}

func TestAcquireStartsOneProcessPerPort(t *testing.T) {
	log, logs := observed()
	ports := freePorts(t, 3)
	cfg := backendConfig(ports)
	g := acquire(t, cfg, log)

	assert.Equal(t, cfg.Addrs(), g.Addrs())
	pids := g.Pids()
	seen := map[int]bool{}
	for i, addr := range cfg.Addrs() {
		require.NotZero(t, pids[i], "backend %d has no process", i)
		assert.Equal(t, pids[i], pidAt(t, addr), "backend %d is answered by another process", i)
		assert.Equal(t, pids[i], g.Pid(i))
		seen[pids[i]] = true
	}
	assert.Len(t, seen, 3, "pids are distinct")

	// Each process is in a process group of its own.
	for _, pid := range pids {
		pgid, err := syscall.Getpgid(pid)
		require.NoError(t, err)
		assert.Equal(t, pid, pgid)
	}

	// The "listening" line reached the logger, with the backend's fields.
	addr := cfg.Addrs()[1]
	waitFor(t, 5*time.Second, "listening line logged", func() bool {
		return logs.FilterMessageSnippet("listening "+addr).Len() > 0
	})
	e := logs.FilterMessageSnippet("listening " + addr).All()[0]
	assert.Equal(t, zapcore.InfoLevel, e.Level)
	fields := e.ContextMap()
	assert.Equal(t, addr, fields["backend"])
	assert.EqualValues(t, 1, fields["index"])
	assert.EqualValues(t, pids[1], fields["pid"])
	assert.Equal(t, "stdout", fields["stream"])
}

type exitEvent struct {
	index int
	err   error
}

func TestKilledProcessIsRestarted(t *testing.T) {
	log, _ := observed()
	ports := freePorts(t, 2)
	cfg := backendConfig(ports)
	g := acquire(t, cfg, log)
	exits := make(chan exitEvent, 10)
	g.SetOnExit(func(i int, err error) { exits <- exitEvent{i, err} })

	addr := cfg.Addrs()[1]
	old := pidAt(t, addr)
	require.Equal(t, old, g.Pid(1))
	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))

	select {
	case e := <-exits:
		assert.Equal(t, 1, e.index)
		var ee *exec.ExitError
		require.ErrorAs(t, e.err, &ee)
		assert.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal())
		assert.NotErrorIs(t, e.err, ErrRestartRequested)
	case <-time.After(5 * time.Second):
		t.Fatal("OnExit was not called")
	}
	fresh := pidAt(t, addr)
	assert.NotEqual(t, old, fresh)
	assert.Equal(t, fresh, g.Pid(1))
	assert.Equal(t, pidAt(t, cfg.Addrs()[0]), g.Pid(0), "the other backend is untouched")
}

func TestRestartKillsStoppedProcess(t *testing.T) {
	log, _ := observed()
	ports := freePorts(t, 1)
	cfg := backendConfig(ports)
	g := acquire(t, cfg, log)
	exits := make(chan exitEvent, 10)
	g.SetOnExit(func(i int, err error) { exits <- exitEvent{i, err} })

	addr := cfg.Addrs()[0]
	old := pidAt(t, addr)
	require.NoError(t, syscall.Kill(old, syscall.SIGSTOP)) // hung

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, g.Restart(ctx, 0))
	assert.NotEqual(t, old, g.Pid(0))
	assert.NotZero(t, g.Pid(0))
	assert.False(t, alive(old), "the stopped process is gone")
	assert.ErrorIs(t, syscall.Kill(old, 0), syscall.ESRCH, "and reaped")

	fresh := pidAt(t, addr)
	assert.Equal(t, g.Pid(0), fresh)
	select {
	case e := <-exits:
		assert.Equal(t, 0, e.index)
		assert.ErrorIs(t, e.err, ErrRestartRequested)
		var ee *exec.ExitError
		assert.ErrorAs(t, e.err, &ee, "the exit status is kept")
	case <-time.After(5 * time.Second):
		t.Fatal("OnExit was not called")
	}

	// A restart of a backend that is running fine works the same way.
	require.NoError(t, g.Restart(ctx, 0))
	assert.NotEqual(t, fresh, pidAt(t, addr))

	err := g.Restart(ctx, 1)
	assert.ErrorContains(t, err, "no backend with index 1")
}

func TestReloadKeepsProcessesLastReleaseStopsThem(t *testing.T) {
	log, logs := observed()
	ports := freePorts(t, 2)
	// Each backend leaves a child in its process group.
	cfg := Config{
		Command: []string{"sh", "-c", `sleep 300 & echo "grandchild=$!"; exec "$0" -addr "$1"`, backendBin, "127.0.0.1:{port}"},
		Ports:   ports,
	}
	g := acquire(t, cfg, log)
	pids := g.Pids()
	for i, addr := range cfg.Addrs() {
		require.Equal(t, pids[i], pidAt(t, addr))
	}
	var grandchildren []int
	waitFor(t, 5*time.Second, "grandchildren logged", func() bool {
		return logs.FilterMessageSnippet("grandchild=").Len() == 2
	})
	for _, e := range logs.FilterMessageSnippet("grandchild=").All() {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Message, "grandchild="))
		require.NoError(t, err)
		require.True(t, alive(pid))
		grandchildren = append(grandchildren, pid)
	}

	// caddy reload: the new config is provisioned before the old one is
	// cleaned up.
	log2, logs2 := observed()
	g2, err := Acquire(cfg, log2)
	require.NoError(t, err)
	changed, err := g2.Start()
	require.NoError(t, err)
	assert.Empty(t, changed, "same command: nothing to replace")
	assert.Equal(t, pids, g2.Pids())
	g.Release()
	for i, addr := range cfg.Addrs() {
		assert.Equal(t, pids[i], pidAt(t, addr), "same process after the reload")
	}

	// The newest config's logger is used from now on.
	g = g2
	require.NoError(t, g.Restart(context.Background(), 0))
	assert.Equal(t, 1, logs2.FilterMessage("backend process killed for a restart").Len())
	assert.Equal(t, 1, logs2.FilterMessage("backend process started").Len())
	assert.NotEqual(t, pids[0], g.Pid(0))
	pids = g.Pids()
	waitFor(t, 5*time.Second, "new grandchild logged", func() bool {
		return logs2.FilterMessageSnippet("grandchild=").Len() == 1
	})
	pid, err := strconv.Atoi(strings.TrimPrefix(logs2.FilterMessageSnippet("grandchild=").All()[0].Message, "grandchild="))
	require.NoError(t, err)
	grandchildren = append(grandchildren, pid)
	var exits atomic.Int32
	g.SetOnExit(func(int, error) { exits.Add(1) })

	// caddy stop
	start := time.Now()
	g.Release()
	assert.Less(t, time.Since(start), 2*time.Second, "the backends and their children stop on SIGTERM, well before the timeout (zombies do not count)")
	for i, pid := range pids {
		assert.False(t, alive(pid), "backend %d (pid %d) is gone", i, pid)
		assert.Zero(t, g.Pid(i))
	}
	for _, pid := range grandchildren {
		// its reaper (init) may take a moment
		waitFor(t, 2*time.Second, fmt.Sprintf("grandchild %d gone", pid), func() bool { return !alive(pid) })
	}
	_, ok := slots.References(cfg.Addrs()[0])
	assert.False(t, ok, "the slot left the pool")
	assert.Zero(t, exits.Load(), "a stop is not reported as exits")
	assert.ErrorIs(t, g.Restart(context.Background(), 0), ErrStopped)

	// A new Acquire starts new processes.
	g3 := acquire(t, cfg, log)
	assert.NotSame(t, g, g3)
	assert.NotEqual(t, pids[0], pidAt(t, cfg.Addrs()[0]))
}

func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	log, logs := observed()
	ports := freePorts(t, 1)
	cfg := Config{
		// the ignored SIGTERM survives exec
		Command:     []string{"sh", "-c", `trap "" TERM; echo ready; exec sleep 300`},
		Ports:       ports,
		StopTimeout: caddy.Duration(300 * time.Millisecond),
	}
	g := acquire(t, cfg, log)
	pid := g.Pid(0)
	waitFor(t, 5*time.Second, "ready", func() bool { return logs.FilterMessage("ready").Len() > 0 })

	start := time.Now()
	g.Release()
	took := time.Since(start)
	assert.GreaterOrEqual(t, took, 300*time.Millisecond, "SIGTERM was ignored, SIGKILL came after the timeout")
	assert.Less(t, took, 3*time.Second)
	assert.False(t, alive(pid))
	assert.Equal(t, 1, logs.FilterMessageSnippet("did not stop in time").Len())
}

func TestStopReachesStoppedProcess(t *testing.T) {
	log, _ := observed()
	ports := freePorts(t, 1)
	cfg := backendConfig(ports)
	g := acquire(t, cfg, log)
	pid := pidAt(t, cfg.Addrs()[0])
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	start := time.Now()
	g.Release()
	assert.Less(t, time.Since(start), 3*time.Second, "SIGCONT lets the stopped process act on SIGTERM")
	assert.False(t, alive(pid))
	assert.Zero(t, g.Pid(0))
}

func TestCrashLoopBacksOff(t *testing.T) {
	log, logs := observed()
	ports := freePorts(t, 1)
	cfg := Config{Command: []string{backendBin, "-no-such-flag"}, Ports: ports} // exits 2 at once
	g := acquire(t, cfg, log)
	var mu sync.Mutex
	var calls int
	g.SetOnExit(func(int, error) {
		mu.Lock()
		calls++
		mu.Unlock()
	})

	// Exits at about 0, then starts after 0, 100ms, 200ms, 400ms, 800ms,
	// 1.6s: within 2s of the first exit, 6 exits (at most 6, since the
	// waits are at least that long).
	const window = 2 * time.Second
	time.Sleep(window + 200*time.Millisecond)
	mu.Lock()
	assert.GreaterOrEqual(t, calls, 3, "OnExit is called for crash-loop exits too")
	mu.Unlock()

	var got []time.Time
	for _, e := range logs.FilterMessage("backend process exited").All() {
		got = append(got, e.Time)
	}
	require.NotEmpty(t, got)
	var inWindow int
	for _, ts := range got {
		if ts.Sub(got[0]) <= window {
			inWindow++
		}
	}
	assert.GreaterOrEqual(t, inWindow, 4, "it is restarted: %v", got)
	assert.LessOrEqual(t, inWindow, 6, "restarts back off: %v", got)
	// The i-th exit (from 1) is followed by a wait of backoffDelay(i).
	for i := 2; i < len(got); i++ {
		assert.GreaterOrEqual(t, got[i].Sub(got[i-1]), backoffDelay(i), "gap before exit %d", i+1)
	}
	crash := logs.FilterMessageSnippet("crash loop: backend " + cfg.Addrs()[0] + " exited")
	require.Positive(t, crash.Len())
	e := crash.All()[crash.Len()-1]
	assert.Equal(t, zapcore.WarnLevel, e.Level)
	assert.Regexp(t, `^crash loop: backend \S+ exited \d+ times in \S+; next start in \S+$`, e.Message)
	assert.EqualValues(t, len(got), e.ContextMap()["exits"])

	// Stopping during a backoff wait is immediate.
	start := time.Now()
	g.Release()
	assert.Less(t, time.Since(start), time.Second)
}

func TestAcquireFailsToStart(t *testing.T) {
	ports := freePorts(t, 2)
	cfg := Config{Command: []string{"/nonexistent/backend"}, Ports: ports}
	g, err := Acquire(cfg, nil)
	require.NoError(t, err, "Acquire starts nothing, so it cannot fail to")
	assert.Zero(t, g.Pids()[0])
	_, err = g.Start()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/nonexistent/backend")
	assert.Contains(t, err.Error(), cfg.Addrs()[0])
	g.Release()
	_, ok := slots.References(cfg.Addrs()[0])
	assert.False(t, ok, "released: nothing left in the pool")

	_, err = Acquire(Config{Command: []string{backendBin}}, nil)
	assert.ErrorContains(t, err, "no backends")
}

func TestRestartHonoursContext(t *testing.T) {
	ports := freePorts(t, 1)
	cfg := backendConfig(ports)
	g := acquire(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Restart(ctx, 0)
	// either the request got through before the check, or the context won
	if err != nil {
		assert.ErrorIs(t, err, context.Canceled)
	}
}

func TestPlaceholdersAndEnv(t *testing.T) {
	log, logs := observed()
	dir := t.TempDir()
	ports := freePorts(t, 2)
	cfg := Config{
		Command: []string{"sh", "-c", `echo "args=$0,$1,$2 env=$PORT_ENV,$IDX dir=$(pwd)"; exec sleep 300`, "{port}", "{index}", "{backend}"},
		Ports:   ports,
		Env:     map[string]string{"PORT_ENV": "{port}", "IDX": "i{index}"},
		Dir:     dir,
	}
	require.NoError(t, cfg.Validate())
	acquire(t, cfg, log)
	for i, addr := range cfg.Addrs() {
		want := fmt.Sprintf("args=%d,%d,%s env=%d,i%d dir=%s", ports[i], i, addr, ports[i], i, dir)
		waitFor(t, 5*time.Second, want, func() bool { return logs.FilterMessage(want).Len() == 1 })
	}
}

func TestOutputLines(t *testing.T) {
	log, logs := observed()
	ports := freePorts(t, 1)
	long := strings.Repeat("x", maxLine+100)
	cfg := Config{
		Command: []string{"sh", "-c", `echo out; echo err >&2; echo; printf '%s\n' "$0"; echo after; exec sleep 300`, long},
		Ports:   ports,
	}
	acquire(t, cfg, log)
	waitFor(t, 5*time.Second, "output", func() bool { return logs.FilterMessage("after").Len() == 1 })
	out := logs.FilterMessage("out").All()
	require.Len(t, out, 1)
	assert.Equal(t, "stdout", out[0].ContextMap()["stream"])
	assert.Equal(t, OutputLogger, out[0].LoggerName, "output has a logger of its own, to filter")
	assert.Equal(t, zapcore.InfoLevel, out[0].Level)
	errs := logs.FilterMessage("err").All()
	require.Len(t, errs, 1)
	assert.Equal(t, "stderr", errs[0].ContextMap()["stream"])
	trunc := logs.FilterField(zap.Bool("truncated", true)).All()
	require.Len(t, trunc, 1)
	assert.Len(t, trunc[0].Message, maxLine)
	assert.Zero(t, logs.FilterMessage("").Len(), "blank lines are skipped")
}

// BenchmarkKillToServing measures SIGKILL of a backend → OnExit called
// (exit-µs/op) and → the new process answers /health (ns/op, which includes
// the backend's own start time; compare with BenchmarkColdStart). Each
// iteration uses a fresh group: a backend killed again within 10s is in a
// crash loop and backs off.
func BenchmarkKillToServing(b *testing.B) {
	ports := freePorts(b, 1)
	cfg := backendConfig(ports)
	addr := cfg.Addrs()[0]
	var exitLatency time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		g, err := Acquire(cfg, nil)
		require.NoError(b, err)
		_, err = g.Start()
		require.NoError(b, err)
		exits := make(chan time.Time, 1)
		g.SetOnExit(func(int, error) { exits <- time.Now() })
		waitHealthy(b, addr)
		pid := g.Pid(0)
		b.StartTimer()

		start := time.Now()
		require.NoError(b, syscall.Kill(pid, syscall.SIGKILL))
		waitHealthy(b, addr)
		exitLatency += (<-exits).Sub(start)

		b.StopTimer()
		g.Release()
		b.StartTimer()
	}
	b.ReportMetric(float64(exitLatency.Microseconds())/float64(b.N), "exit-µs/op")
}

// BenchmarkColdStart measures starting the backend by hand until it
// answers /health: the backend's own start time.
func BenchmarkColdStart(b *testing.B) {
	ports := freePorts(b, 1)
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(backendBin, "-addr", addr)
		require.NoError(b, cmd.Start())
		waitHealthy(b, addr)
		b.StopTimer()
		cmd.Process.Kill()
		cmd.Wait()
		b.StartTimer()
	}
}

// waitHealthy polls GET /health every 500µs until it answers 200.
func waitHealthy(b *testing.B, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://" + addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	b.Fatalf("%s did not answer", addr)
}
