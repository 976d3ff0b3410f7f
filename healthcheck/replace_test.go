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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	old := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go old.Serve(ln)
	defer old.Close()

	p := NewPool([]string{addr}, Config{Interval: 20 * time.Millisecond, Timeout: time.Second}, nil)
	states := make(chan State, 64)
	p.OnTransition(func(t Transition) { states <- t.To })
	p.Start()
	defer p.Close()
	b := p.Backends()[0]
	require.Equal(t, Healthy, <-states)

	p.Drain(b)
	require.Equal(t, Draining, <-states)
	// the old process stops listening (a graceful stop) but holds its
	// connection: its answers there do not return it, and a beat on a new
	// connection finds no one
	require.NoError(t, ln.Close())
	p.ReturnOnNewProcess(b)
	beats := b.beats.Load()
	deadline := time.Now().Add(5 * time.Second)
	for b.beats.Load() < beats+5 {
		require.True(t, time.Now().Before(deadline), "no beats")
		time.Sleep(5 * time.Millisecond)
	}
	st, _, _ := b.State()
	assert.Equal(t, Draining, st, "the old process does not return it")

	// the old process exits; the replacement listens on the same address
	old.Close()
	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	fresh := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go fresh.Serve(ln2)
	defer fresh.Close()
	assert.Equal(t, Unknown, <-states)
	assert.Equal(t, Healthy, <-states)
}

// The prober may already hold a connection to the replacement when
// ReturnOnNewProcess is called (the restarter answered after the new
// process listened, and a beat connected in between): that connection is
// made before the call, so its passes do not count, and the prober keeps
// it alive. The call renews it: the next beat connects anew, and the
// backend comes back. (It stayed draining for good, and an operator's
// restart failed with "not back in service after its replacement".)
func TestReturnOnNewProcessConnectedBeforeTheCall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	old := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go old.Serve(ln)

	p := NewPool([]string{addr}, Config{Interval: 20 * time.Millisecond, Timeout: time.Second}, nil)
	states := make(chan State, 64)
	p.OnTransition(func(t Transition) { states <- t.To })
	p.Start()
	defer p.Close()
	b := p.Backends()[0]
	require.Equal(t, Healthy, <-states)
	p.Drain(b)
	require.Equal(t, Draining, <-states)

	// the old process exits; the replacement listens, and a beat reaches
	// it (on a new connection) before the restarter has returned
	old.Close()
	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	answered := make(chan struct{}, 1)
	fresh := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		select {
		case answered <- struct{}{}:
		default:
		}
	})}
	go fresh.Serve(ln2)
	defer fresh.Close()
	select {
	case <-answered:
	case <-time.After(wait):
		t.Fatal("the replacement never got a heartbeat")
	}
	p.ReturnOnNewProcess(b)
	for _, want := range []State{Unknown, Healthy} {
		select {
		case got := <-states:
			require.Equal(t, want, got)
		case <-time.After(wait):
			st, _, _ := b.State()
			t.Fatalf("still %s: the replacement's passes on the connection made before the call never return it", st)
		}
	}
}
