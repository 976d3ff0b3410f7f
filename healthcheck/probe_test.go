package healthcheck

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// End-to-end tests of the prober against httptest servers.

func TestFirstGoodBeatAdmits(t *testing.T) {
	bk := newBackend(t)
	cfg := Config{Interval: 10 * time.Second, Passes: 3} // no second beat in this test
	p, rec := newPool(t, []string{bk.addr()}, cfg)
	ready := p.Ready()
	p.Start()
	tr := rec.healthy(0)
	assert.Equal(t, Unknown, tr.From)
	assert.Equal(t, bk.addr(), tr.Backend)
	within(t, wait, ready, "Ready closing")
	assert.True(t, p.Backends()[0].InService())
	assert.EqualValues(t, 1, p.Backends()[0].Gen())
	assert.EqualValues(t, 1, bk.hits.Load(), "one beat was enough")
}

// A backend that refuses before it was ever seen answering is a process
// not listening yet (spawned, or returned by an operator before it
// listens): it stays unknown, however many refusals, and is admitted by
// its first good beat once it listens.
func TestRefusedFromUnknown(t *testing.T) {
	addr := refusedAddr(t)
	p, rec := newPool(t, []string{addr}, Config{Interval: 50 * time.Millisecond, Fails: 1})
	chs := beats(p)
	ready := p.Ready()
	p.Start()
	for range 3 {
		bt := nextBeat(t, chs[0], "a refused beat")
		assert.Equal(t, Gone, bt.e)
		assert.Equal(t, Unknown, bt.state, "not ejected")
	}
	rec.flush()
	assert.Empty(t, rec.list(), "no transition")
	assert.False(t, closed(ready))

	ln, err := net.Listen("tcp", addr) // the process listens at last
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), ReadHeaderTimeout: wait}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	assert.Equal(t, Unknown, rec.healthy(0).From)
	within(t, wait, ready, "Ready closing")
}

func TestStatusRange(t *testing.T) {
	for _, c := range []struct {
		name   string
		cfg    Config
		status int
		ok     bool
	}{
		{"no path: 200", Config{}, 200, true},
		{"no path: 302", Config{}, 302, true},
		{"no path: 404", Config{}, 404, true},
		{"no path: 499", Config{}, 499, true},
		{"no path: 500", Config{}, 500, false},
		{"no path: 503", Config{}, 503, false},
		{"path: 200", Config{Path: "/health"}, 200, true},
		{"path: 204", Config{Path: "/health"}, 204, true},
		{"path: 301", Config{Path: "/health"}, 301, false},
		{"path: 404", Config{Path: "/health"}, 404, false},
		{"path: 500", Config{Path: "/health"}, 500, false},
		{"range 418: 418", Config{Path: "/health", StatusMin: 418, StatusMax: 418}, 418, true},
		{"range 418: 200", Config{Path: "/health", StatusMin: 418, StatusMax: 418}, 200, false},
		{"range 200-200 no path: 404", Config{StatusMin: 200, StatusMax: 200}, 404, false},
		{"range 200-599: 503", Config{StatusMin: 200, StatusMax: 599}, 503, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			bk := newBackend(t)
			bk.status.Store(int32(c.status))
			c.cfg.Interval, c.cfg.Timeout = 20*time.Millisecond, time.Second
			_, rec := startPool(t, []string{bk.addr()}, c.cfg)
			var tr Transition
			if c.ok {
				tr = rec.healthy(0)
			} else {
				tr = rec.ejected(0, BadStatus)
				assert.Contains(t, tr.Cause, "answered")
			}
			assert.Equal(t, Unknown, tr.From)
		})
	}
}

func TestTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes below are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	for name, tc := range map[string]*tls.Config{
		"verified":   {RootCAs: roots, MinVersion: tls.VersionTLS12},
		"unverified": {InsecureSkipVerify: true}, //nolint:gosec // test
	} {
		t.Run(name, func(t *testing.T) {
			_, rec := startPool(t, []string{srv.Listener.Addr().String()}, Config{Interval: time.Hour, TLS: tc})
			rec.healthy(0)
		})
	}
	t.Run("wrong CA", func(t *testing.T) {
		_, rec := startPool(t, []string{srv.Listener.Addr().String()},
			Config{Interval: 20 * time.Millisecond, TLS: &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}})
		rec.ejected(0, Hang) // a failed handshake proves nothing about the process
	})
}

func TestHealthyToBadStatusAndBack(t *testing.T) {
	bk0, bk1 := newBackend(t), newBackend(t)
	p, rec := startPool(t, []string{bk0.addr(), bk1.addr()}, fast())
	rec.healthy(0)
	rec.healthy(1)

	bk0.status.Store(http.StatusInternalServerError)
	tr := rec.ejected(0, BadStatus)
	assert.Equal(t, Healthy, tr.From)
	assert.Contains(t, tr.Cause, "500")
	assert.Equal(t, 1, p.InService())

	bk0.status.Store(http.StatusOK)
	assert.Equal(t, Ejected, rec.healthy(0).From)
	assert.EqualValues(t, 2, p.Backends()[0].Gen())
	assert.EqualValues(t, 1, p.Backends()[1].Gen())
	assert.Zero(t, rec.ejections(1))
}

// With Passes=2 an ejected backend comes back on its second good beat, not
// its first: the admission is later than the second good answer.
func TestPassesNeededToReadmit(t *testing.T) {
	var (
		good atomic.Bool
		mu   sync.Mutex
		oks  []time.Time
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !good.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		oks = append(oks, time.Now())
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	cfg := fast()
	cfg.Passes = 2
	_, rec := startPool(t, []string{srv.Listener.Addr().String()}, cfg)
	rec.ejected(0, BadStatus)

	good.Store(true)
	tr := rec.healthy(0)
	assert.Equal(t, Ejected, tr.From)
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, len(oks), 2)
	assert.True(t, tr.At.After(oks[1]), "admitted at %v, before the second good beat at %v (first %v)", tr.At, oks[1], oks[0])
}

// A backend that closes connections it considers idle, or after every
// answer, is alive: the crash watch must learn that on a new connection,
// never eject it.
func TestConnectionClosingBackendsStay(t *testing.T) {
	big := strings.Repeat("x", 100<<10)
	for _, c := range []struct {
		name     string
		interval time.Duration
		handler  http.HandlerFunc
		setup    func(*http.Server)
	}{
		{name: "connection close", interval: 20 * time.Millisecond,
			handler: func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("Connection", "close") }},
		{name: "short idle timeout", interval: 200 * time.Millisecond,
			setup: func(s *http.Server) { s.IdleTimeout = 20 * time.Millisecond }},
		{name: "no keep-alive", interval: 20 * time.Millisecond,
			setup: func(s *http.Server) { s.SetKeepAlivesEnabled(false) }},
		{name: "body too long to read", interval: 20 * time.Millisecond,
			handler: func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(big)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var conns atomic.Int64
			bk := newBackendFunc(t, c.handler, func(s *httptest.Server) {
				if c.setup != nil {
					c.setup(s.Config)
				}
				s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
					if st == http.StateNew {
						conns.Add(1)
					}
				}
			})
			other := newBackend(t) // so that the panic guard is not what keeps it in
			cfg := Config{Interval: c.interval, Timeout: time.Second}
			p, rec := startPool(t, []string{bk.addr(), other.addr()}, cfg)
			rec.healthy(0)
			rec.healthy(1)
			const beats = 20
			bk.awaitHits(t, beats)
			b := p.Backends()[0]
			requireState(t, b, Healthy, ReasonNone)
			assert.EqualValues(t, 1, b.Gen(), "never ejected and readmitted")
			assert.Zero(t, rec.ejections(0), "transitions:%s", rec)
			assert.GreaterOrEqual(t, conns.Load(), int64(beats-1), "each beat needed a new connection")
		})
	}
}

func TestPanicGuardHeartbeats(t *testing.T) {
	bk0, bk1 := newBackend(t), newBackend(t)
	p, rec := startPool(t, []string{bk0.addr(), bk1.addr()}, Config{Interval: 20 * time.Millisecond, Timeout: time.Second})
	rec.healthy(0)
	rec.healthy(1)

	// a wrong health path, say: every beat of every backend fails
	bk0.status.Store(http.StatusNotFound + 100)
	bk1.status.Store(http.StatusNotFound + 100)
	first := rec.waitFor(anyBackend, wait, "an ejection", func(tr Transition) bool { return tr.To == Ejected })
	assert.Equal(t, BadStatus, first.Reason)
	last := 1 - first.Index
	lastBk := []*backend{bk0, bk1}[last]
	lastBk.awaitHits(t, lastBk.hits.Load()+10) // ten more failed beats
	b := p.Backends()[last]
	requireState(t, b, Healthy, ReasonNone)
	assert.Equal(t, 1, p.InService())
	assert.Zero(t, rec.ejections(last), "transitions:%s", rec)

	// evidence that the process is gone ejects even the last one
	lastBk.Close()
	tr := rec.ejected(last, Crash)
	assert.Equal(t, Healthy, tr.From)
	assert.Zero(t, p.InService())
}

func TestReportGoneThenBeatReadmits(t *testing.T) {
	bk := newBackend(t)
	p, rec := startPool(t, []string{bk.addr()}, Config{Interval: 300 * time.Millisecond})
	rec.healthy(0)
	b := p.Backends()[0]
	b.Report(Gone, errors.New("connection reset by peer"))
	assert.False(t, b.InService(), "out at once, though it was the last")
	assert.Equal(t, Healthy, rec.ejected(0, Crash).From)
	// it was a false alarm: the prober's next beat brings it back
	assert.Equal(t, Ejected, rec.healthy(0).From)
}

func TestReportTimeoutTriggersBeat(t *testing.T) {
	bk0, bk1 := newBackend(t), newBackend(t)
	cfg := Config{Interval: 30 * time.Second} // no scheduled beat during this test
	p, rec := startPool(t, []string{bk0.addr(), bk1.addr()}, cfg)
	rec.healthy(0)
	rec.healthy(1)
	bk0.awaitHits(t, 1)
	b := p.Backends()[0]

	ctx, cancel := context.WithCancelCause(context.Background())
	f := &Flight{Cancel: cancel, Replayable: true}
	b.Begin(f)
	b.Report(Timeout, context.DeadlineExceeded)
	assert.Equal(t, Healthy, rec.ejected(0, Hang).From)
	assert.ErrorIs(t, context.Cause(ctx), ErrRescued)
	assert.ErrorIs(t, b.End(f), ErrRescued)
	start := time.Now()
	tr := rec.healthy(0) // the kicked beat, long before the next scheduled one
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, Ejected, tr.From)
	bk0.awaitHits(t, 2)
}

func TestReadyWakesWaiter(t *testing.T) {
	bk := newBackend(t)
	p, rec := newPool(t, []string{refusedAddr(t), bk.addr()}, fast())
	ready := p.Ready()
	woke := make(chan struct{})
	go func() {
		<-ready
		close(woke)
	}()
	p.Start()
	within(t, wait, woke, "the waiter's wake-up")
	rec.healthy(1)
	assert.Equal(t, 1, p.InService())
}

// Beats are not in lockstep: the wait after a good beat is the interval
// spread evenly over ±10%, drawn from each prober's own source, so two
// probers never keep step. Seeded: the draws are the same on every run.
func TestBeatsNotInLockstep(t *testing.T) {
	const iv = time.Second
	p := NewPool([]string{"a:1", "b:1"}, Config{Interval: iv}, nil)
	a, b := newProber(p, p.Backends()[0]), newProber(p, p.Backends()[1])
	a.rnd.Seed(1, 2)
	b.rnd.Seed(3, 4)
	const n = 10000
	var tenths [10]int // how many waits fall in each tenth of ±10%
	same := 0
	for range n {
		wa, wb := a.after(Pass), b.after(Pass)
		require.GreaterOrEqual(t, wa, iv*9/10)
		require.Less(t, wa, iv*11/10)
		tenths[(wa-iv*9/10)*10/(iv/5)]++
		if wa == wb {
			same++
		}
	}
	for i, k := range tenths {
		assert.InDelta(t, n/10, k, n/50, "waits in tenth %d of the jitter range: %v", i, tenths)
	}
	assert.Zero(t, same, "two probers drew the same wait")
}

// On the wire, beats come at the interval on average.
func TestBeatIntervalOnTheWire(t *testing.T) {
	const n = 16
	var (
		mu    sync.Mutex
		times []time.Time
		done  = make(chan struct{})
	)
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == n {
			close(done)
		}
	}))
	t.Cleanup(srv.Close)
	interval := 50 * time.Millisecond
	startPool(t, []string{srv.Listener.Addr().String()}, Config{Interval: interval, Timeout: time.Second})
	within(t, wait, done, "16 beats")
	mu.Lock()
	defer mu.Unlock()
	lo, hi, sum := time.Hour, time.Duration(0), time.Duration(0)
	for i := 1; i < n; i++ {
		d := times[i].Sub(times[i-1])
		lo, hi, sum = min(lo, d), max(hi, d), sum+d
	}
	mean := sum / (n - 1)
	t.Logf("inter-beat: min %v max %v mean %v", lo, hi, mean)
	assert.InDelta(t, float64(interval), float64(mean), 0.3*float64(interval), "mean interval %v", mean)
}

// stacks counts goroutines whose stack mentions any of fns.
func stacks(fns ...string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, fn := range fns {
			if strings.Contains(g, fn) {
				count++
				break
			}
		}
	}
	return count
}

var engineGoroutines = []string{
	"healthcheck.(*prober)", "healthcheck.(*scheduler)", "healthcheck.(*Pool).Start",
}

func TestCloseStopsGoroutines(t *testing.T) {
	good := newBackend(t)
	slow := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	settle(t, 0) // earlier tests' watch readers end just after their Close
	base := runtime.NumGoroutine()

	addrs := []string{good.addr(), refusedAddr(t), slow.Listener.Addr().String()}
	p := NewPool(addrs, Config{Interval: 20 * time.Millisecond, Timeout: 50 * time.Millisecond}, nil)
	rec := record(t, p)
	chs := beats(p)
	p.Start()
	p.Start() // a second Start starts nothing
	assert.Equal(t, 3, stacks("created by github.com/crashonly/caddy-failover/healthcheck.(*Pool).Start"), "the scheduler, the restart supervisor and the watchdog")
	assert.Equal(t, len(addrs), stacks("created by github.com/crashonly/caddy-failover/healthcheck.(*scheduler).start"), "one prober per backend")
	rec.healthy(0)
	for nextBeat(t, chs[1], "a refused beat").e != Gone {
	}
	rec.ejected(2, Hang)
	good.awaitHits(t, good.hits.Load()+3)

	p.Close()
	p.Start() // a closed pool never starts again
	settle(t, base)
}

// settle waits until no engine goroutine is left and, if base > 0, the
// process has no more goroutines than base. Polling a count: there is no
// event to wait on.
func settle(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for stacks(engineGoroutines...) > 0 || base > 0 && runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d engine goroutines, %d in all (%d before)",
				stacks(engineGoroutines...), runtime.NumGoroutine(), base)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSnapshotCountsBeatsAndFlights(t *testing.T) {
	bk := newBackend(t)
	p, rec := startPool(t, []string{bk.addr()}, Config{Interval: 20 * time.Millisecond, Timeout: time.Second})
	rec.healthy(0)
	bk.awaitHits(t, 5)
	f := &Flight{Cancel: func(error) {}, Replayable: true}
	p.Backends()[0].Begin(f)
	s := p.Snapshot()[0]
	assert.GreaterOrEqual(t, s.Beats, uint64(5), "every beat is counted")
	assert.Equal(t, 1, s.InFlight)
	assert.Equal(t, Healthy, s.State)
	p.Backends()[0].End(f)
	assert.Zero(t, p.Snapshot()[0].InFlight)

	q := NewPool(nil, Config{}, nil)
	assert.NotEqual(t, p.ID(), q.ID(), "pool IDs are unique")
}

// oneShotBackend answers the first request on each connection, keeps the
// connection open, and drops it when a second request arrives on it (with
// a FIN, or with a reset when rst): the race of a backend closing an idle
// connection just as a beat is written on it.
func oneShotBackend(t *testing.T, rst bool) (string, *backend) {
	bk := &backend{} // for its counting only
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
			return
		}
		bk.hit()
		if _, err := http.ReadRequest(br); err == nil && rst {
			_ = c.(*net.TCPConn).SetLinger(0)
		}
	})
	return addr, bk
}

func TestHeldConnectionDroppedUnderABeat(t *testing.T) {
	for name, rst := range map[string]bool{"fin": false, "reset": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr, bk := oneShotBackend(t, rst)
			other := newBackend(t)
			// Fails=1: a single beat judged missed would eject
			cfg := Config{Interval: 20 * time.Millisecond, Timeout: time.Second, Fails: 1}
			p, rec := startPool(t, []string{addr, other.addr()}, cfg)
			rec.healthy(0)
			rec.healthy(1)
			bk.awaitHits(t, 10)
			requireState(t, p.Backends()[0], Healthy, ReasonNone)
			assert.Zero(t, rec.ejections(0), "transitions:%s", rec)
		})
	}
}

// Informational (1xx) answers come before the real one and must be skipped
// (RFC 9110 §15.2), not judged as the heartbeat's status.
func TestInformationalResponsesSkipped(t *testing.T) {
	bk := newBackendFunc(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusOK)
	})
	other := newBackend(t)
	cfg := Config{Path: "/health", Interval: 20 * time.Millisecond, Timeout: time.Second, Fails: 1}
	p, rec := startPool(t, []string{bk.addr(), other.addr()}, cfg)
	assert.Equal(t, Unknown, rec.healthy(0).From)
	bk.awaitHits(t, 10)
	requireState(t, p.Backends()[0], Healthy, ReasonNone)
	assert.Zero(t, rec.ejections(0), "transitions:%s", rec)
}

// A backend that closes idle connections sooner than the interval must not
// be beaten at its idle timeout: a closed watch connection brings a beat
// forward at most once an interval.
func TestShortIdleTimeoutDoesNotSpeedUpBeats(t *testing.T) {
	bk := newBackend(t, func(s *httptest.Server) { s.Config.IdleTimeout = 5 * time.Millisecond })
	other := newBackend(t)
	const interval = 100 * time.Millisecond
	_, rec := startPool(t, []string{bk.addr(), other.addr()}, Config{Interval: interval, Timeout: time.Second})
	rec.healthy(0)
	start := time.Now()
	const beats = 10
	bk.awaitHits(t, beats)
	// at most two beats an interval (one on the timer, one brought forward),
	// less the ±10% jitter; without the limit ten beats take ~50ms
	assert.GreaterOrEqual(t, time.Since(start), 4*interval, "beats came faster than twice an interval")
}

// A backend that answers live requests needs fewer heartbeats: at most one
// in maxSkipped+1 while traffic flows; when the traffic stops answering (a
// hang answers none), the beats come back at the interval.
func TestLiveTrafficSavesBeats(t *testing.T) {
	bk := newBackend(t)
	other := newBackend(t)
	const interval = 40 * time.Millisecond
	p, rec := startPool(t, []string{bk.addr(), other.addr()}, Config{Interval: interval, Timeout: time.Second})
	rec.healthy(0)
	b := p.Backends()[0]

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // live traffic: an answer every 5ms
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				b.Answered()
			}
		}
	}()
	// while traffic flows, the other backend's beats are the clock: in the
	// time it takes 16 beats, the busy one takes about 16/(maxSkipped+1)
	bk.awaitHits(t, bk.hits.Load()+1) // in step with the traffic
	from, otherFrom := bk.hits.Load(), other.hits.Load()
	other.awaitHits(t, otherFrom+16)
	saved := bk.hits.Load() - from
	close(stop)
	<-done
	assert.LessOrEqual(t, saved, int64(16/(maxSkipped+1)+2), "beats while traffic flowed")
	assert.GreaterOrEqual(t, saved, int64(2), "every fourth beat still goes out")

	// no more answers: the beats resume at the interval
	from, otherFrom = bk.hits.Load(), other.hits.Load()
	other.awaitHits(t, otherFrom+8)
	assert.GreaterOrEqual(t, bk.hits.Load()-from, int64(6), "beats resumed")
}

// The wait after each beat, by its verdict: a refusing backend is looked
// for at Interval/5, doubling up to Interval (never later, so a restarted
// process is seen within one), and any other verdict resets that.
func TestBeatSchedule(t *testing.T) {
	const iv = 100 * time.Millisecond
	p := NewPool([]string{"a:1"}, Config{Interval: iv}, nil)
	pr := newProber(p, p.Backends()[0])
	near := func(want time.Duration, e Evidence) {
		t.Helper()
		got := pr.after(e)
		assert.InDelta(t, float64(want), float64(got), float64(want)/10, "after %s", e)
		if e == Gone {
			assert.LessOrEqual(t, got, iv, "after %s", e)
		}
	}
	for range 3 {
		for _, want := range []time.Duration{iv / 5, 2 * iv / 5, 4 * iv / 5, iv, iv, iv} {
			near(want, Gone)
		}
		near(iv, Pass)
	}
	near(iv/5, Gone)
	assert.Zero(t, pr.after(Miss), "a first miss: again at once")
	near(iv, Miss)
	near(iv/5, Gone)
	near(2*iv/5, Gone)
	assert.Zero(t, pr.after(WrongStatus))
	near(iv/5, Gone)
}

// End to end: a backend that refuses is beaten less and less often, yet
// seen within an interval once it listens again.
func TestRefusingBackendBackoff(t *testing.T) {
	f := newFakeProc(t)
	f.up(http.StatusOK)
	other := newBackend(t) // its beats are the clock
	const interval = 50 * time.Millisecond
	p, rec := startPool(t, []string{f.addr, other.addr()}, Config{Interval: interval, Timeout: time.Second})
	rec.healthy(0)
	rec.healthy(1)
	b := p.Backends()[0]

	f.down()
	rec.ejected(0, Crash)
	beats, from := b.beats.Load(), other.hits.Load()
	other.awaitHits(t, from+20) // twenty intervals
	n := b.beats.Load() - beats
	t.Logf("%d beats of the refusing backend in 20 of the other's", n)
	// at Interval/5 it would take ~100; backing off to Interval, ~22 (the
	// cap of an Interval is checked exactly by TestBeatSchedule)
	assert.LessOrEqual(t, n, uint64(40), "backs off")

	f.up(http.StatusOK)
	assert.Equal(t, Ejected, rec.healthy(0).From)
}
