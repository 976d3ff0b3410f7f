package healthcheck

import (
	"bytes"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cannedServer answers every request on every connection with a canned
// 200, allocating nothing per request. kill closes its listener and its
// connections at once, as the kernel does for a process killed by SIGKILL.
type cannedServer struct {
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newCannedServer(tb testing.TB) *cannedServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	s := &cannedServer{addr: ln.Addr().String(), ln: ln}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		s.kill()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			wg.Go(func() { serveCanned(c) })
		}
	})
	return s
}

var cannedAnswer = []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")

// serveCanned answers each request head read on c (heartbeats have no
// body) until c ends.
func serveCanned(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	n := 0
	for {
		k, err := c.Read(buf[n:])
		if err != nil {
			return
		}
		n += k
		for {
			i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
			if i < 0 {
				break
			}
			n = copy(buf, buf[i+4:n])
			if _, err := c.Write(cannedAnswer); err != nil {
				return
			}
		}
		if n == len(buf) {
			return
		}
	}
}

func (s *cannedServer) kill() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

// awaitBeats waits until b has sent n heartbeats (polling a counter: a
// beat has no event to wait on).
func awaitBeats(t *testing.T, b *Backend, n uint64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for b.beats.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d beats within %v, want %d", b.beats.Load(), wait, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A beat allocates nothing, end to end: the write, the answer read and
// judged, the state machine's pass, the next beat scheduled. Counted over
// a few hundred beats, the process's allocations (the test's polling and
// the runtime's own included) stay far below one a beat.
func TestBeatsDoNotAllocate(t *testing.T) {
	s := newCannedServer(t)
	p, rec := startPool(t, []string{s.addr}, Config{Interval: 2 * time.Millisecond, Timeout: time.Second})
	rec.healthy(0)
	b := p.Backends()[0]
	awaitBeats(t, b, 20) // the buffers made, the wheel and queues grown

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n0 := b.beats.Load()
	awaitBeats(t, b, n0+300)
	runtime.ReadMemStats(&after)
	beats := b.beats.Load() - n0
	perBeat := float64(after.Mallocs-before.Mallocs) / float64(beats)
	t.Logf("%d allocations over %d beats", after.Mallocs-before.Mallocs, beats)
	assert.Less(t, perBeat, 0.2, "allocations a beat")
	assert.Equal(t, 1, p.InService())
}

// Among many backends, each held connection is watched: one backend
// killed (its sockets closed by the kernel) is ejected for a crash by the
// crash watch alone (no beat is due for an hour), and no other moves.
func TestCrashWatchAmongMany(t *testing.T) {
	const n = 500
	servers := make([]*cannedServer, n)
	addrs := make([]string, n)
	for i := range servers {
		servers[i] = newCannedServer(t)
		addrs[i] = servers[i].addr
	}
	p, rec := startPool(t, addrs, Config{Interval: time.Hour, Timeout: time.Second})
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for p.InService() < n {
		select {
		case <-p.Ready():
		case <-deadline.C:
			t.Fatalf("%d of %d in service within %v", p.InService(), n, wait)
		}
	}

	for _, k := range []int{n / 2, 7} {
		servers[k].kill()
		tr := rec.ejected(k, Crash)
		assert.Equal(t, Healthy, tr.From)
	}
	assert.Equal(t, n-2, p.InService(), "the others stay in service")
	rec.flush()
	ejected := 0
	for _, tr := range rec.list() {
		if tr.To == Ejected {
			ejected++
		}
	}
	assert.Equal(t, 2, ejected, "no other backend was ejected:%s", rec)
}

// Beats wanted at once on a new connection: the first connectBurst at
// once, the rest one every connectEvery, at most ten intervals away, and
// the bucket refills as time passes. A lone crash is beaten at once.
// (BenchmarkProbeCPU -probe.reset shows it on 10 000 real connections.)
func TestReconnectsSpreadPastABurst(t *testing.T) {
	p := NewPool([]string{"a:1"}, Config{Interval: 100 * time.Millisecond}, nil)
	s := newScheduler(p)
	now := time.Now()
	for i := range connectBurst {
		require.Zero(t, s.reconnectDelay(now), "close %d of a burst", i)
	}
	assert.Equal(t, connectEvery, s.reconnectDelay(now))
	assert.Equal(t, 2*connectEvery, s.reconnectDelay(now))
	for range 10000 {
		s.reconnectDelay(now)
	}
	assert.Equal(t, time.Second, s.reconnectDelay(now), "ten intervals at most")
	// the debt is at most ten intervals: repaid in that time, then a
	// burst again
	later := now.Add(time.Second + time.Duration(connectBurst)*connectEvery)
	assert.Zero(t, s.reconnectDelay(later))
	assert.Zero(t, s.reconnectDelay(later.Add(time.Hour)), "a crash after a quiet hour is beaten at once")
}
