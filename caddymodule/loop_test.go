package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A request replayed after its attempt was refused, that then finds no
// backend until its hold runs out, is answered 503 at once: reverse_proxy
// retries after a dial error whatever the selector says, and used to spin
// through its retries (2^31) instead.
func TestRefusedThenHoldExpiresEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	h := startedHandler(t, `{"upstreams":`+upstreams(srv.Listener.Addr().String())+`,"hold":"50ms","health":{"interval":"1h"}}`)
	waitServing(t, h, 1)
	srv.Listener.Close() // new connections are refused; the held heartbeat connection stays

	type answer struct {
		w   *httptest.ResponseRecorder
		err error
	}
	done := make(chan answer, 1)
	go func() {
		w, err := do(t.Context(), h, http.MethodGet, nil, nil)
		done <- answer{w, err}
	}()
	select {
	case a := <-done:
		assert.Equal(t, http.StatusServiceUnavailable, statusOf(a.w, a.err))
		assert.NotEmpty(t, a.w.Header().Get("Retry-After"))
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the request did not end: reverse_proxy's loop spins")
	}
}
