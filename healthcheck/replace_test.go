package healthcheck

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A draining backend whose process is replaced comes back at the first
// pass of the replacement, on a new connection; the old process's answers
// on the connection it held do not count.
func TestReturnOnNewProcess(t *testing.T) {
	r := drainedReplacement(t)
	// the old process stops listening (a graceful stop) but holds its
	// connection: its answers there do not return it, and a beat on a new
	// connection finds no one
	require.NoError(t, r.ln.Close())
	r.p.ReturnOnNewProcess(r.b)
	beats := r.b.beats.Load()
	deadline := time.Now().Add(5 * time.Second)
	for r.b.beats.Load() < beats+5 {
		require.True(t, time.Now().Before(deadline), "no beats")
		time.Sleep(5 * time.Millisecond)
	}
	st, _, _ := r.b.State()
	assert.Equal(t, Draining, st, "the old process does not return it")

	r.replace(nil)
	assert.Equal(t, Unknown, <-r.states)
	assert.Equal(t, Healthy, <-r.states)
}

// The prober may already hold a connection to the replacement when
// ReturnOnNewProcess is called (the restarter answered after the new
// process listened, and a beat connected in between): that connection is
// made before the call, so its passes do not count, and the prober keeps
// it alive. The call renews it: the next beat connects anew, and the
// backend comes back. (It stayed draining for good, and an operator's
// restart failed with "not back in service after its replacement".)
func TestReturnOnNewProcessConnectedBeforeTheCall(t *testing.T) {
	r := drainedReplacement(t)
	answered := make(chan struct{}, 1)
	r.replace(func(http.ResponseWriter, *http.Request) {
		select {
		case answered <- struct{}{}:
		default:
		}
	})
	// a beat reaches the replacement, on a new connection, before the
	// restarter has returned
	select {
	case <-answered:
	case <-time.After(wait):
		t.Fatal("the replacement never got a heartbeat")
	}
	r.p.ReturnOnNewProcess(r.b)
	for _, want := range []State{Unknown, Healthy} {
		select {
		case got := <-r.states:
			require.Equal(t, want, got)
		case <-time.After(wait):
			st, _, _ := r.b.State()
			t.Fatalf("still %s: the replacement's passes on the connection made before the call never return it", st)
		}
	}
}

// replacement is a pool of one backend, drained, whose process (an HTTP
// server on ln) is about to be replaced; states has its transitions.
type replacement struct {
	t      *testing.T
	ln     net.Listener
	old    *http.Server
	p      *Pool
	b      *Backend
	states chan State
}

func drainedReplacement(t *testing.T) *replacement {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &replacement{t: t, ln: ln, states: make(chan State, 64),
		old: &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}}
	go r.old.Serve(ln)
	t.Cleanup(func() { r.old.Close() })
	r.p = NewPool([]string{ln.Addr().String()}, Config{Interval: 20 * time.Millisecond, Timeout: time.Second}, nil)
	r.p.OnTransition(func(t Transition) { r.states <- t.To })
	r.p.Start()
	t.Cleanup(r.p.Close)
	r.b = r.p.Backends()[0]
	require.Equal(t, Healthy, <-r.states)
	r.p.Drain(r.b)
	require.Equal(t, Draining, <-r.states)
	return r
}

// replace ends the old process and starts the replacement, answering with
// h (nil: 200), on the same address.
func (r *replacement) replace(h http.HandlerFunc) {
	r.old.Close()
	ln, err := net.Listen("tcp", r.b.Addr)
	require.NoError(r.t, err)
	if h == nil {
		h = func(http.ResponseWriter, *http.Request) {}
	}
	fresh := &http.Server{Handler: h}
	go fresh.Serve(ln)
	r.t.Cleanup(func() { fresh.Close() })
}
