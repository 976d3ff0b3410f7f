package restart

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type seenRequest struct {
	method, path, query, host string
	header                    http.Header
	body                      map[string]any
}

// recorder is a restart endpoint that records what it gets and answers
// with status and body.
func recorder(t *testing.T, status int, answer string) (*httptest.Server, chan seenRequest) {
	t.Helper()
	seen := make(chan seenRequest, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(b, &body)
		seen <- seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Header.Clone(), body}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func TestHTTPRestart(t *testing.T) {
	srv, seen := recorder(t, http.StatusAccepted, "ok")
	r := mustLoad(t, mustJSON(t, map[string]any{
		"restarter": "http",
		"url":       srv.URL + "/restart/{port}?backend={backend}&i={index}",
		"method":    "put",
		"headers": map[string][]string{
			"X-Backend":     {"{host}:{port}"},
			"X-Idx-{index}": {"yes"},
			"Authorization": {"Bearer t0ken"},
		},
	}))
	since := time.Date(2025, 1, 2, 15, 4, 5, 123e6, time.FixedZone("x", 3600))
	err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001", Index: 2, Reason: "hang", Since: since})
	require.NoError(t, err)

	got := <-seen
	assert.Equal(t, http.MethodPut, got.method)
	assert.Equal(t, "/restart/9001", got.path)
	assert.Equal(t, "backend=127.0.0.1:9001&i=2", got.query)
	assert.Equal(t, "127.0.0.1:9001", got.header.Get("X-Backend"))
	assert.Equal(t, "yes", got.header.Get("X-Idx-2"))
	assert.Equal(t, "Bearer t0ken", got.header.Get("Authorization"))
	assert.Equal(t, "application/json", got.header.Get("Content-Type"))
	assert.Equal(t, map[string]any{
		"backend": "127.0.0.1:9001",
		"index":   float64(2),
		"reason":  "hang",
		"since":   "2025-01-02T14:04:05.123Z",
	}, got.body)
	assert.False(t, r.(ExitWatcher).RestartsOnExit())
}

func TestHTTPDefaults(t *testing.T) {
	srv, seen := recorder(t, http.StatusOK, "")
	r := mustLoad(t, `{"restarter": "http", "url": "`+srv.URL+`", "headers": {"Host": ["svc-{index}.internal"]}}`)
	require.NoError(t, r.Restart(context.Background(), Target{Backend: "10.0.0.7:80", Index: 0, Reason: "crash"}))
	got := <-seen
	assert.Equal(t, http.MethodPost, got.method)
	assert.Equal(t, "svc-0.internal", got.host)
	assert.Equal(t, map[string]any{"backend": "10.0.0.7:80", "index": float64(0), "reason": "crash"}, got.body,
		"a zero Since is left out")
	assert.Equal(t, defaultHTTPTimeout, restartTimeout(r.(*HTTP).Timeout, defaultHTTPTimeout))
}

func TestHTTPNon2xxFails(t *testing.T) {
	long := "busy: " + strings.Repeat("x", 10000)
	srv, _ := recorder(t, http.StatusServiceUnavailable, long)
	r := mustLoad(t, `{"restarter": "http", "url": "`+srv.URL+`/r"}`)
	err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001", Reason: "hang"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "503 Service Unavailable")
	assert.Contains(t, err.Error(), "busy: xxx")
	assert.Contains(t, err.Error(), "127.0.0.1:9001")
	assert.Less(t, len(err.Error()), 600, "the body in the error is bounded")

	srv3, _ := recorder(t, http.StatusFound, "")
	r = mustLoad(t, `{"restarter": "http", "url": "`+srv3.URL+`"}`)
	err = r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001"})
	require.Error(t, err, "a redirect without Location is not a 2xx")
	assert.Contains(t, err.Error(), "302")
}

func TestHTTPTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	r := mustLoad(t, `{"restarter": "http", "url": "`+srv.URL+`", "timeout": "150ms"}`)
	start := time.Now()
	err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no answer within 150ms")
	assert.Less(t, time.Since(start), 3*time.Second)

	// the caller's context counts too
	r = mustLoad(t, `{"restarter": "http", "url": "`+srv.URL+`"}`)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { cancel() }()
	err = r.Restart(ctx, Target{Backend: "127.0.0.1:9001"})
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
}

// A restart endpoint that redirects is not followed: the restart failed,
// the error and the log say where it pointed, and the target of the
// redirect never sees the request (nor its secret header). Both the 302
// (which a client would turn into a bodiless GET) and the 307 (which keeps
// method and headers) are refused.
func TestHTTPRedirectNotFollowed(t *testing.T) {
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			elsewhere, hits := recorder(t, http.StatusOK, "restarted")
			seen := make(chan seenRequest, 10)
			redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- seenRequest{method: r.Method, path: r.URL.Path, header: r.Header.Clone()}
				http.Redirect(w, r, elsewhere.URL+"/steal", status)
			}))
			t.Cleanup(redirector.Close)
			r := mustLoad(t, mustJSON(t, map[string]any{
				"restarter": "http",
				"url":       redirector.URL + "/restart",
				"headers":   map[string][]string{"X-Secret": {"s3cret"}},
			}))
			core, logs := observer.New(zapcore.DebugLevel)
			r.(*HTTP).logger = zap.New(core)

			err := r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001", Reason: "hang"})
			require.Error(t, err, "a redirect is a failed restart")
			assert.Contains(t, err.Error(), strconv.Itoa(status))
			assert.Contains(t, err.Error(), elsewhere.URL+"/steal", "the error says where it pointed")
			assert.Contains(t, err.Error(), "not followed")

			got := <-seen
			assert.Equal(t, http.MethodPost, got.method)
			assert.Equal(t, "s3cret", got.header.Get("X-Secret"))
			select {
			case h := <-hits:
				t.Fatalf("the redirect was followed: %s %s with X-Secret %q", h.method, h.path, h.header.Get("X-Secret"))
			default:
			}

			entries := logs.FilterMessageSnippet("redirect").All()
			require.Len(t, entries, 1, "one log line for the call")
			f := entries[0].ContextMap()
			assert.Equal(t, redirector.URL+"/restart", f["url"])
			assert.EqualValues(t, status, f["status"])
			assert.Equal(t, elsewhere.URL+"/steal", f["location"])
		})
	}
}

// Each call is logged with the URL and the status it got.
func TestHTTPRestartLogged(t *testing.T) {
	srv, seen := recorder(t, http.StatusServiceUnavailable, "busy")
	r := mustLoad(t, `{"restarter": "http", "url": "`+srv.URL+`/r/{port}"}`)
	core, logs := observer.New(zapcore.InfoLevel)
	r.(*HTTP).logger = zap.New(core)
	require.Error(t, r.Restart(context.Background(), Target{Backend: "127.0.0.1:9001"}))
	<-seen
	entries := logs.FilterMessage("restart request answered").All()
	require.Len(t, entries, 1)
	f := entries[0].ContextMap()
	assert.Equal(t, srv.URL+"/r/9001", f["url"])
	assert.EqualValues(t, http.StatusServiceUnavailable, f["status"])
	assert.Equal(t, "127.0.0.1:9001", f["backend"])
}
