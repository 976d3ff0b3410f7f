//go:build unix

package healthcheck

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// child is a real backend process (this test binary re-executed with
// childEnv set), to be killed with SIGKILL and frozen with SIGSTOP.
type child struct {
	cmd    *exec.Cmd
	addr   string
	stdin  io.Closer
	output chan struct{} // closed when its stdout is drained
	once   sync.Once
}

func startChild(tb testing.TB) *child { return startChildAt(tb, "127.0.0.1:0") }

// startChildAt starts a child listening on addr, ended when the test ends.
func startChildAt(tb testing.TB, addr string) *child {
	tb.Helper()
	c := newChild(tb, addr)
	tb.Cleanup(c.end)
	return c
}

// newChild starts a child listening on addr; the caller ends it.
func newChild(tb testing.TB, addr string) *child {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // the child exits when this closes
	require.NoError(tb, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	c := &child{cmd: cmd, stdin: stdin, output: make(chan struct{})}

	line := make(chan string, 1)
	go func() {
		defer close(c.output)
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(l, "ready ")
		require.True(tb, ok, "child said %q", l)
		c.addr = addr
	case <-time.After(15 * time.Second):
		tb.Fatal("child not ready within 15s")
	}
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	require.NoError(tb, syscall.Kill(c.pid(), sig))
}

// end kills the child (stopped or not) and reaps it.
func (c *child) end() {
	c.once.Do(func() {
		_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
		_ = c.stdin.Close()
		<-c.output
		_ = c.cmd.Wait()
	})
}

func TestChildHealthy(t *testing.T) {
	c := startChild(t)
	_, rec := startPool(t, []string{c.addr}, Config{Path: "/health", Interval: time.Hour})
	assert.Equal(t, Unknown, rec.healthy(0).From)
}

func TestChildBadPath(t *testing.T) {
	c := startChild(t)
	_, rec := startPool(t, []string{c.addr}, Config{Path: "/bad", Interval: 20 * time.Millisecond})
	tr := rec.ejected(0, BadStatus)
	assert.Equal(t, Unknown, tr.From)
	assert.Contains(t, tr.Cause, "500")
}

// The crash watch: SIGKILL closes the held heartbeat connection (on the
// ring, its receive completes with the end), and the ejection follows at
// once, not at the next beat (ten seconds away). The backend is the last in
// service: proof of a crash ejects it all the same.
func TestChildKilledEjectedAtOnce(t *testing.T) {
	c := startChild(t)
	p, rec := startPool(t, []string{c.addr}, Config{Path: "/health", Interval: 10 * time.Second, Timeout: time.Second})
	rec.healthy(0)
	b := p.Backends()[0]
	requireWatched(t, p, b)
	beats := b.beats.Load()
	killed := time.Now()
	c.signal(t, syscall.SIGKILL)
	tr := rec.ejected(0, Crash)
	took := tr.At.Sub(killed)
	t.Logf("SIGKILL to ejected(crash): %v (%s)", took, tr.Cause)
	assert.Less(t, took, time.Second, "the crash watch, not a beat, saw it")
	assert.Equal(t, Healthy, tr.From)
	// the end of the held connection seen idle, then the beat it asked for
	// refused; or, if a beat went out on it meanwhile, that beat reset
	assert.Regexp(t, "connection refused|connection reset", tr.Cause)
	assert.Equal(t, beats+1, b.beats.Load(), "one beat, asked for by the watch: none was due")
	assert.Zero(t, p.InService())
}

// SIGSTOP: the process is alive to the kernel (connections are accepted)
// but answers nothing. Fails missed beats eject it for a hang; after
// SIGCONT, Passes good beats bring it back.
func TestChildStoppedThenContinued(t *testing.T) {
	c := startChild(t)
	other := newBackend(t) // the panic guard must not keep the stopped one in
	cfg := fast()
	cfg.Path, cfg.Fails, cfg.Passes = "/health", 3, 2
	p, rec := startPool(t, []string{c.addr, other.Listener.Addr().String()}, cfg)
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]
	requireWatched(t, p, b)

	stopped := time.Now()
	c.signal(t, syscall.SIGSTOP)
	tr := rec.ejected(0, Hang)
	took := tr.At.Sub(stopped)
	t.Logf("SIGSTOP to ejected(hang): %v (%s)", took, tr.Cause)
	assert.Equal(t, Healthy, tr.From)
	assert.Contains(t, tr.Cause, "timed out")
	// each miss waits out a full Timeout; the first may have begun before
	// the stop, the other Fails-1 cannot have
	assert.GreaterOrEqual(t, took, time.Duration(cfg.Fails-1)*cfg.Timeout)
	assert.Equal(t, 1, p.InService())

	c.signal(t, syscall.SIGCONT)
	tr = rec.healthy(0)
	assert.Equal(t, Ejected, tr.From)
	assert.EqualValues(t, 2, b.Gen())
	requireWatched(t, p, b)
	assert.Zero(t, rec.ejections(1))
}

func TestChildStoppedFromUnknown(t *testing.T) {
	c := startChild(t)
	c.signal(t, syscall.SIGSTOP)
	_, rec := startPool(t, []string{c.addr}, fast())
	tr := rec.ejected(0, Hang) // unknown backends are not guarded
	assert.Equal(t, Unknown, tr.From)
	c.signal(t, syscall.SIGCONT)
	assert.Equal(t, Ejected, rec.healthy(0).From)
}

// In-flight rescue: requests in flight on a backend ejected for a hang are
// cancelled with ErrRescued at once, to be replayed elsewhere.
func TestChildStoppedRescuesFlights(t *testing.T) {
	c := startChild(t)
	other := newBackend(t)
	cfg := fast()
	cfg.Fails = 2
	p, rec := startPool(t, []string{c.addr, other.Listener.Addr().String()}, cfg)
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]

	type flight struct {
		f   *Flight
		ctx context.Context
	}
	var fs []flight
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancelCause(context.Background())
		t.Cleanup(func() { cancel(nil) })
		f := &Flight{Cancel: cancel, Replayable: true}
		b.Begin(f)
		fs = append(fs, flight{f, ctx})
	}
	done := &Flight{Cancel: func(error) { t.Error("an ended flight was cancelled") }, Replayable: true}
	b.Begin(done)
	require.NoError(t, b.End(done))

	c.signal(t, syscall.SIGSTOP)
	rec.ejected(0, Hang)
	for _, x := range fs {
		within(t, wait, x.ctx.Done(), "the rescue")
		assert.ErrorIs(t, context.Cause(x.ctx), ErrRescued)
		assert.ErrorIs(t, b.End(x.f), ErrRescued)
	}
	assert.Zero(t, b.InFlight())
}

// Beats never pile up: against a backend slower than Timeout, a new beat is
// sent only once the prober has given up the previous one (closed its
// connection), so the backend never has two heartbeats waiting on it.
func TestBeatsNeverPileUp(t *testing.T) {
	type connKey struct{}
	var (
		mu         sync.Mutex
		active     = map[net.Conn]bool{} // heartbeats being handled
		violations int
		running    atomic.Int32
		maxRunning atomic.Int32
		hits       atomic.Int32
		counted    = make(chan struct{})
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		conn := r.Context().Value(connKey{}).(net.Conn)
		mu.Lock()
		for other := range active {
			if peerWaiting(other) {
				violations++
			}
		}
		active[conn] = true
		mu.Unlock()
		if hits.Add(1) == 8 {
			close(counted)
		}
		n := running.Add(1)
		for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
		}
		time.Sleep(150 * time.Millisecond) // ignores cancellation: the worst case
		running.Add(-1)
		mu.Lock()
		delete(active, conn)
		mu.Unlock()
	}))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.Start()
	t.Cleanup(srv.Close)

	_, rec := startPool(t, []string{srv.Listener.Addr().String()}, Config{Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond})
	within(t, wait, counted, "8 heartbeats")
	rec.ejected(0, Hang)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("handlers running at once, counting abandoned ones: at most %d", maxRunning.Load())
	assert.Zero(t, violations, "a heartbeat arrived while an earlier one was still awaited")
}

// peerWaiting reports whether the client of conn still holds it open: a
// non-blocking peek finds no EOF. The prober closes a connection before it
// dials the next, so on loopback the FIN is queued before the next request.
func peerWaiting(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	waiting := false
	err = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		waiting = n > 0 || err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
	})
	return err == nil && waiting
}
