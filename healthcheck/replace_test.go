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
	p.ReturnOnNewProcess(b)
	// the old process goes on answering on its connection: no return
	beats := b.beats.Load()
	deadline := time.Now().Add(5 * time.Second)
	for b.beats.Load() < beats+5 {
		require.True(t, time.Now().Before(deadline), "no beats")
		time.Sleep(5 * time.Millisecond)
	}
	st, _, _ := b.State()
	assert.Equal(t, Draining, st, "the old process's answers do not return it")

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
