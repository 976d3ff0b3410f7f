package healthcheck

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// childEnv, when set, turns the test binary into a tiny HTTP backend
// listening on its value (see runChild); tests re-exec themselves with it.
const childEnv = "HC_CHILD_ADDR"

func TestMain(m *testing.M) {
	if addr := os.Getenv(childEnv); addr != "" {
		runChild(addr) // never returns
	}
	// this package's tests hold heartbeat connections on io_uring (opt-in
	// in Caddy, see heldRingEnv), unless told otherwise: the netpoller path
	// is what every Caddy the other packages' tests run uses
	if _, set := os.LookupEnv(heldRingEnv); !set {
		_ = os.Setenv(heldRingEnv, "1")
	}
	os.Exit(m.Run())
}

// runChild is the real child process: GET /health → 200, /bad → 500,
// /slow?ms=N → 200 after N milliseconds, anything else → 200. It prints "ready ADDR" once listening and exits when
// its stdin closes (the parent died or let go of it).
func runChild(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/bad", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("ready %s\n", ln.Addr())
	_ = http.Serve(ln, mux) //nolint:gosec // test backend
	os.Exit(3)
}

// wait is the failure guard of every wait on an event: generous, because
// the machine is noisy; a passing test never comes near it.
const wait = 5 * time.Second

// fast is a config for tests that want things to happen quickly.
func fast() Config {
	return Config{Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond}
}

// recorder collects every transition a pool publishes, in order.
type recorder struct {
	tb testing.TB
	p  *Pool

	mu   sync.Mutex
	all  []Transition
	more chan struct{} // closed and replaced on each new transition
	// next is, per backend index, where waitFor looks next; any is the
	// cursor of waits that may match any backend.
	next map[int]int
}

// anyBackend makes waitFor look at every backend's transitions.
const anyBackend = -1

func record(tb testing.TB, p *Pool) *recorder {
	tb.Helper()
	r := &recorder{tb: tb, p: p, more: make(chan struct{}), next: map[int]int{}}
	p.OnTransition(func(t Transition) {
		r.mu.Lock()
		r.all = append(r.all, t)
		close(r.more)
		r.more = make(chan struct{})
		r.mu.Unlock()
	})
	return r
}

// flush returns once every transition made so far has been received.
func (r *recorder) flush() { r.p.deliver(true) }

// list returns every transition received so far.
func (r *recorder) list() []Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.all)
}

func (r *recorder) String() string {
	var sb strings.Builder
	for _, t := range r.list() {
		fmt.Fprintf(&sb, "\n  #%d %s: %s → %s %s %s", t.Index, t.Backend, t.From, t.To, t.Reason, t.Cause)
	}
	return sb.String()
}

// waitFor returns the first transition of backend i (or of any backend,
// with anyBackend) that matches want and comes after the last one waitFor
// returned for i, failing after within.
func (r *recorder) waitFor(i int, within time.Duration, what string, want func(Transition) bool) Transition {
	r.tb.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		r.mu.Lock()
		for k := r.next[i]; k < len(r.all); k++ {
			t := r.all[k]
			if (i == anyBackend || t.Index == i) && want(t) {
				r.next[i] = k + 1
				if i == anyBackend && r.next[t.Index] <= k {
					r.next[t.Index] = k + 1
				}
				r.mu.Unlock()
				return t
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-timer.C:
			r.tb.Fatalf("no %s within %v; transitions so far:%s", what, within, r)
			return Transition{}
		}
	}
}

// anyReason makes to match a transition whatever its reason.
const anyReason Reason = 255

// to matches a transition of backend i into state s for reason rs.
func to(i int, s State, rs Reason) func(Transition) bool {
	return func(t Transition) bool { return t.Index == i && t.To == s && (rs == anyReason || t.Reason == rs) }
}

func (r *recorder) healthy(i int) Transition {
	r.tb.Helper()
	return r.waitFor(i, wait, fmt.Sprintf("backend %d healthy", i), to(i, Healthy, ReasonNone))
}

func (r *recorder) ejected(i int, rs Reason) Transition {
	r.tb.Helper()
	return r.waitFor(i, wait, fmt.Sprintf("backend %d ejected(%s)", i, rs), to(i, Ejected, rs))
}

// ejections counts ejections of backend i received so far.
func (r *recorder) ejections(i int) int {
	n := 0
	for _, t := range r.list() {
		if t.Index == i && t.To == Ejected {
			n++
		}
	}
	return n
}

// startPool makes and starts a pool whose every transition is recorded
// from the very first; both are closed when the test ends.
func startPool(tb testing.TB, addrs []string, cfg Config) (*Pool, *recorder) {
	tb.Helper()
	p, r := newPool(tb, addrs, cfg)
	p.Start()
	return p, r
}

// newPool is startPool without the Start.
func newPool(tb testing.TB, addrs []string, cfg Config) (*Pool, *recorder) {
	tb.Helper()
	var log *zap.Logger
	if t, ok := tb.(*testing.T); ok {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	p := NewPool(addrs, cfg, log)
	tb.Cleanup(p.Close)
	return p, record(tb, p)
}

// backend is an httptest server whose health answer can be switched and
// whose requests are counted.
type backend struct {
	*httptest.Server
	status atomic.Int32
	hits   atomic.Int64

	mu      sync.Mutex
	waiters []hitWaiter
}

type hitWaiter struct {
	n  int64
	ch chan struct{}
}

func newBackend(tb testing.TB, opts ...func(*httptest.Server)) *backend {
	tb.Helper()
	return newBackendFunc(tb, nil, opts...)
}

// newBackendFunc is a backend that answers with h instead of its status.
func newBackendFunc(tb testing.TB, h http.HandlerFunc, opts ...func(*httptest.Server)) *backend {
	tb.Helper()
	b := &backend{}
	b.status.Store(http.StatusOK)
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h != nil {
			h(w, r)
		} else {
			w.WriteHeader(int(b.status.Load()))
		}
		b.hit()
	}))
	for _, o := range opts {
		o(b.Server)
	}
	b.Start()
	tb.Cleanup(b.Close)
	return b
}

func (b *backend) addr() string { return b.Listener.Addr().String() }

func (b *backend) hit() {
	n := b.hits.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if n >= w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
}

// awaitHits waits until the backend has answered n requests in all.
func (b *backend) awaitHits(tb testing.TB, n int64) {
	tb.Helper()
	ch := make(chan struct{})
	b.mu.Lock()
	if b.hits.Load() >= n {
		b.mu.Unlock()
		return
	}
	b.waiters = append(b.waiters, hitWaiter{n: n, ch: ch})
	b.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(wait):
		tb.Fatalf("backend saw %d requests, want %d within %v", b.hits.Load(), n, wait)
	}
}

// rawServer listens on loopback and runs handle on each connection it
// accepts, closing it after; all ends when the test does. It returns the
// address.
func rawServer(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// refusedAddr is an address where nothing listens.
func refusedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	addr := ln.Addr().String()
	require.NoError(tb, ln.Close())
	return addr
}

// closed reports whether ch is closed, without waiting.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// within fails the test unless ch closes within d.
func within(tb testing.TB, d time.Duration, ch <-chan struct{}, what string) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		tb.Fatalf("%s did not happen within %v", what, d)
	}
}

// timeout is the failure guard of a select.
func timeout() <-chan time.Time { return time.After(wait) }

// freeAddr returns a loopback address free now, below the kernel's range of
// ports for outgoing connections, so that a restarted child can bind it
// again without racing some connection's source port.
func freeAddr(tb testing.TB) string {
	for range 1000 {
		port := 20000 + rand.IntN(12000) // 20000-31999, under 32768
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			addr := ln.Addr().String()
			ln.Close()
			return addr
		}
	}
	tb.Fatal("no free port")
	return ""
}

// fakeProc is a backend on a fixed address that the test switches between
// down (connections refused), hung (accepts, never answers) and answering
// a status: a process as a supervisor sees it, without a process.
type fakeProc struct {
	tb     testing.TB
	addr   string
	status atomic.Int32 // 0: hung
	hits   atomic.Int64 // answers given
	mu     sync.Mutex
	srv    *http.Server
	wg     sync.WaitGroup
}

func newFakeProc(tb testing.TB) *fakeProc {
	f := &fakeProc{tb: tb, addr: freeAddr(tb)}
	tb.Cleanup(func() {
		f.down()
		f.wg.Wait()
	})
	return f
}

// up makes f answer status (0: hang), listening again if it was down.
func (f *fakeProc) up(status int) {
	f.status.Store(int32(status))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		return
	}
	ln, err := net.Listen("tcp", f.addr)
	require.NoError(f.tb, err)
	f.srv = &http.Server{ReadHeaderTimeout: wait, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := int(f.status.Load())
		if st == 0 {
			<-r.Context().Done() // the prober gave up, or f went down
			return
		}
		w.WriteHeader(st)
		f.hits.Add(1)
	})}
	srv := f.srv
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_ = srv.Serve(ln)
	}()
}

// down closes f's listener and connections: a crash.
func (f *fakeProc) down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		_ = f.srv.Close()
		f.srv = nil
	}
}

// restarterFunc is a Restarter.
type restarterFunc func(ctx context.Context, b *Backend, reason Reason, lastGood time.Time) error

func (f restarterFunc) Restart(ctx context.Context, b *Backend, reason Reason, lastGood time.Time) error {
	return f(ctx, b, reason, lastGood)
}
