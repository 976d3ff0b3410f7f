package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventRecorder is an events handler module for this test: what an events
// handler such as caddy-events-exec (not in this module graph) receives,
// with its placeholders.
type eventRecorder struct{}

var recorded = make(chan string, 64)

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.failover_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

func (eventRecorder) Handle(ctx context.Context, e caddy.Event) error {
	repl := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	recorded <- repl.ReplaceAll("{event.name} {event.data.pool} {event.data.backend} {event.data.reason}", "")
	return nil
}

func init() { caddy.RegisterModule(eventRecorder{}) }

// A running config with an events subscription gets failover's events,
// with the pool, backend and reason in their data, as placeholders.
func TestEventsReachCaddysEventsApp(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	addr := up.Listener.Addr().String()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true},
		"logging": {"logs": {"default": {"level": "ERROR"}}},
		"storage": {"module": "file_system", "root": %q},
		"apps": {
			"events": {"subscriptions": [{"events": ["failover.ejected", "failover.readmitted", "failover.pool_empty"],
				"handlers": [{"handler": "failover_test_recorder"}]}]},
			"http": {"servers": {"srv0": {"listen": [%q], "routes": [{"handle": [
				{"handler": "failover", "name": "ev", "upstreams": [{"dial": %q}]}]}]}}}
		}
	}`, t.TempDir(), listen, addr)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() { _ = caddy.Stop() })

	next := func(want string) {
		t.Helper()
		select {
		case got := <-recorded:
			assert.Equal(t, want, got)
		case <-time.After(10 * time.Second):
			t.Fatalf("no event; want %q", want)
		}
	}
	next("failover.readmitted ev " + addr + " ")
	up.Close() // the process is gone: refused
	next("failover.ejected ev " + addr + " crash")
	next("failover.pool_empty ev " + addr + " crash")
}
