package healthcheck

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// received is what a backend saw of one heartbeat.
type received struct {
	method, uri, proto, host string
	header                   http.Header
	body                     string
	port                     string // the port it arrived on
}

// recordingBackend records every request it receives and answers 200 "ok"
// (for HEAD: the headers of that answer, Content-Length 2, no body).
func recordingBackend(t *testing.T, opts ...func(*httptest.Server)) (*httptest.Server, <-chan received) {
	t.Helper()
	got := make(chan received, 100)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, port, _ := net.SplitHostPort(r.Context().Value(http.LocalAddrContextKey).(net.Addr).String())
		select {
		case got <- received{r.Method, r.RequestURI, r.Proto, r.Host, r.Header.Clone(), string(body), port}:
		default:
		}
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	}))
	for _, o := range opts {
		o(srv)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, got
}

func firstReceived(t *testing.T, got <-chan received) received {
	t.Helper()
	select {
	case r := <-got:
		return r
	case <-timeout():
		t.Fatal("the backend received no heartbeat")
		return received{}
	}
}

// Each request option of the heartbeat, as a backend receives it.
func TestHeartbeatRequestOptions(t *testing.T) {
	srv, got := recordingBackend(t)
	addr := srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	for _, c := range []struct {
		name  string
		addr  string // default: the backend's
		cfg   Config
		check func(t *testing.T, r received)
	}{
		{"defaults", "", Config{}, func(t *testing.T, r received) {
			assert.Equal(t, "GET", r.method)
			assert.Equal(t, "/", r.uri)
			assert.Equal(t, "HTTP/1.1", r.proto)
			assert.Equal(t, addr, r.host)
			assert.Equal(t, []string{"caddy-failover-heartbeat"}, r.header["User-Agent"])
			assert.Equal(t, []string{"*/*"}, r.header["Accept"])
			assert.NotContains(t, r.header, "Content-Length")
			assert.Empty(t, r.body)
		}},
		{"path and Host header", "", Config{Path: "/hc?deep=1", Headers: http.Header{"host": {"svc.internal"}}}, func(t *testing.T, r received) {
			assert.Equal(t, "/hc?deep=1", r.uri)
			assert.Equal(t, "svc.internal", r.host)
		}},
		{"method HEAD", "", Config{Method: "HEAD"}, func(t *testing.T, r received) {
			assert.Equal(t, "HEAD", r.method)
		}},
		{"custom method", "", Config{Method: "PURGE"}, func(t *testing.T, r received) {
			assert.Equal(t, "PURGE", r.method)
		}},
		{"POST with a body", "", Config{Method: "POST", Body: `{"deep":true}`, Headers: http.Header{"Content-Type": {"application/json"}}},
			func(t *testing.T, r received) {
				assert.Equal(t, "POST", r.method)
				assert.Equal(t, `{"deep":true}`, r.body)
				assert.Equal(t, []string{"13"}, r.header["Content-Length"])
				assert.Equal(t, []string{"application/json"}, r.header["Content-Type"])
			}},
		{"POST without a body says so", "", Config{Method: "POST"}, func(t *testing.T, r received) {
			assert.Equal(t, []string{"0"}, r.header["Content-Length"])
			assert.Empty(t, r.body)
		}},
		{"headers, defaults replaced", "", Config{Headers: http.Header{
			"x-token": {"a", "b"}, "user-agent": {"probe/1"}, "Accept": {"text/plain"}, "X-Empty": {""},
		}}, func(t *testing.T, r received) {
			assert.Equal(t, []string{"a", "b"}, r.header["X-Token"])
			assert.Equal(t, []string{"probe/1"}, r.header["User-Agent"])
			assert.Equal(t, []string{"text/plain"}, r.header["Accept"])
			assert.Equal(t, []string{""}, r.header["X-Empty"])
		}},
		{"port", refusedAddr(t), Config{Port: mustAtoi(t, port)}, func(t *testing.T, r received) {
			assert.Equal(t, port, r.port, "probed on the health port, not the upstream's (where nothing listens)")
			assert.Equal(t, addr, r.host, "Host is the address probed")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := c.addr
			if a == "" {
				a = addr
			}
			c.cfg.Interval = time.Hour
			p, rec := startPool(t, []string{a}, c.cfg)
			rec.healthy(0)
			c.check(t, firstReceived(t, got))
			p.Close()
			for len(got) > 0 {
				<-got
			}
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// An answer to HEAD has no body, whatever its Content-Length says: the
// reader must know the method, or it waits for a body that never comes
// and every beat after the first on a connection is missed.
func TestHeadHeartbeatsShareAConnection(t *testing.T) {
	var conns atomic.Int64
	srv, _ := recordingBackend(t, func(s *httptest.Server) {
		s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}
	})
	p, rec := newPool(t, []string{srv.Listener.Addr().String()}, Config{Method: "HEAD", Interval: 20 * time.Millisecond, Timeout: time.Second})
	chs := beats(p)
	p.Start()
	rec.healthy(0)
	for range 5 {
		assert.Equal(t, Pass, nextBeat(t, chs[0], "a HEAD beat").e)
	}
	assert.EqualValues(t, 1, conns.Load(), "every beat on one kept-alive connection")
}

// The request bytes are built once per prober, the same for the same
// config (headers in a stable order).
func TestHeartbeatRequestBytes(t *testing.T) {
	cfg := Config{Method: "PUT", Path: "/hc", Body: "hi", Headers: http.Header{"X-B": {"2"}, "x-a": {"1", "3"}, "HOST": {"h:1"}}}.WithDefaults()
	want := "PUT /hc HTTP/1.1\r\nHost: h:1\r\nUser-Agent: caddy-failover-heartbeat\r\nAccept: */*\r\n" +
		"X-A: 1\r\nX-A: 3\r\nX-B: 2\r\nContent-Length: 2\r\n\r\nhi"
	for range 10 { // map order varies from run to run; the bytes do not
		require.Equal(t, want, string(heartbeatRequest(cfg, "ignored:80")))
	}
	assert.Equal(t, "GET / HTTP/1.1\r\nHost: a:80\r\nUser-Agent: caddy-failover-heartbeat\r\nAccept: */*\r\n\r\n",
		string(heartbeatRequest(Config{}.WithDefaults(), "a:80")))
	empty := Config{Headers: http.Header{"Host": {}, "X-None": {}}}.WithDefaults()
	require.NoError(t, empty.Validate())
	assert.Equal(t, "GET / HTTP/1.1\r\nHost: a:80\r\nUser-Agent: caddy-failover-heartbeat\r\nAccept: */*\r\n\r\n",
		string(heartbeatRequest(empty, "a:80")), "a header without values is not sent")
}
