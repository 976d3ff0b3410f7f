//go:build unix

package caddymodule

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// Upstreams on unix sockets, as reverse_proxy accepts them, in the
// Caddyfile and in JSON; other non-TCP networks are refused.
func TestUnixUpstreamsAccepted(t *testing.T) {
	out, _, err := adaptCaddyfile(t, ":8080 {\n\tfailover unix//run/app.sock {\n\t\tto unix//run/app2.sock\n\t}\n}\n")
	require.NoError(t, err)
	assert.Contains(t, string(out), `"upstreams":[{"dial":"unix//run/app.sock"},{"dial":"unix//run/app2.sock"}]`)
	require.NoError(t, validateJSON(t, out), "the adapted JSON loads")

	require.NoError(t, validateJSON(t, jsonConfig(`"upstreams":[{"dial":"unix//run/app.sock"},{"dial":"127.0.0.1:9001"}]`)))

	for dial, want := range map[string][]string{
		"unixgram//run/app.sock":   {"unixgram", "only TCP and unix socket upstreams", "unix//path"},
		"unixpacket//run/app.sock": {"unixpacket", "only TCP and unix socket upstreams"},
		"udp/127.0.0.1:9001":       {"udp", "only TCP and unix socket upstreams"},
		"unix/":                    {"without a path", "unix//path"},
	} {
		err := validateJSON(t, jsonConfig(`"upstreams":[{"dial":"`+dial+`"}]`))
		if assert.Error(t, err, dial) {
			for _, w := range want {
				assert.Contains(t, err.Error(), w, dial)
			}
		}
	}

	// a unix socket has no port for health_port to replace
	err = validateJSON(t, jsonConfig(`"upstreams":[{"dial":"unix//run/app.sock"}],"health":{"port":8081}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unix//run/app.sock")
	assert.Contains(t, err.Error(), "health_port")
	_, _, err = adaptCaddyfile(t, ":8080 {\n\tfailover 127.0.0.1:9001 {\n\t\tto unix//run/app.sock\n\t\thealth_port 8081\n\t}\n}\n")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unix//run/app.sock")
	assert.Contains(t, err.Error(), "health_port")
	assert.Contains(t, err.Error(), "Caddyfile:2")
}

// A failed dial of a unix socket upstream, its file gone or its process
// gone, is refused: it never reached a backend, and the backend is gone.
func TestRefusedUnixDial(t *testing.T) {
	dir := t.TempDir()
	_, missing := net.Dial("unix", filepath.Join(dir, "none.sock"))
	require.Error(t, missing)
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	_, left := net.Dial("unix", stale)
	require.Error(t, left)

	for name, err := range map[string]error{"no socket file": missing, "no listener": left} {
		assert.True(t, refused(err), name)
		assert.True(t, refused(reverseproxy.NewDialError(err)), "%s, through a DialError", name)
		assert.True(t, refused(reverseproxy.NewDialError(errors.New(err.Error()))), "%s, by its text", name)
	}
	assert.False(t, refused(errors.New("i/o timeout")))
}

// A request through a failover handler to a unix socket upstream is
// served; when its process is gone, the backend is ejected for a crash and
// the request held, then answered 503.
func TestUnixUpstreamServes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "over the socket")
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	stop := func() {
		srv.Close()
		<-done
		_ = os.Remove(path)
	}
	t.Cleanup(stop)

	h := startedHandler(t, `{"upstreams":[{"dial":"unix/`+path+`"}],"hold":"100ms"}`)
	waitServing(t, h, 1)
	w, err := do(t.Context(), h, http.MethodGet, nil, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Equal(t, "over the socket", w.Body.String())

	stop()
	w, err = do(t.Context(), h, http.MethodGet, nil, nil)
	assert.Equal(t, http.StatusServiceUnavailable, statusOf(w, err))
	s := h.pool.Snapshot()[0]
	assert.Equal(t, healthcheck.Ejected, s.State)
	assert.Equal(t, healthcheck.Crash, s.Reason)
}
