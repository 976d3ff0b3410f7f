package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Two handlers of one config that share a pool must agree on what it does
// for them; otherwise which one wins would depend on the config's order.
func TestHandlersSharingAPoolMustAgree(t *testing.T) {
	config := func(a, b string) []byte {
		return []byte(`{"apps":{"http":{"servers":{"srv0":{"listen":["127.0.0.1:0"],"routes":[` +
			`{"match":[{"path":["/a"]}],"handle":[` + a + `]},{"handle":[` + b + `]}]}}}}}`)
	}
	h := func(extra string) string {
		return `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"},{"dial":"127.0.0.1:2"}]` + extra + `}`
	}
	require.NoError(t, validateJSON(t, config(h(`,"slow_start":"1s"`), h(`,"slow_start":"1s"`))), "same settings: one shared pool")
	require.NoError(t, validateJSON(t, config(h(`,"slow_start":"1s"`), h(`,"slow_start":"2s","health":{"interval":"1s"}`))),
		"other heartbeats: two pools")
	err := validateJSON(t, config(h(`,"slow_start":"1s"`), h(`,"slow_start":"2s"`)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "two failover handlers front the same upstreams")

	spawn := func(env string) string {
		return `{"handler":"failover","spawn":{"command":["sleep","300"],"ports":[1],"env":{"A":"` + env + `"}}}`
	}
	err = validateJSON(t, config(spawn("1"), spawn("2")+`,{"handler":"failover","upstreams":[{"dial":"127.0.0.1:9"}]}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "different restart, spawn or slow_start settings")
}

// An action on a backend that is in several pools acts in all of them,
// and the answer names them.
func TestAdminActsInEveryPool(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	addr := up.Listener.Addr().String()
	a := startedHandler(t, `{"name":"a","upstreams":`+upstreams(addr)+`}`)
	b := startedHandler(t, `{"name":"b","upstreams":`+upstreams(addr)+`,"health":{"interval":"100ms"}}`)
	waitServing(t, a, 1)
	waitServing(t, b, 1)

	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/failover/backends/"+addr+"/drain?wait=1s", nil)
	require.NoError(t, serveBackend(w, req))
	assert.Equal(t, http.StatusOK, w.Code)
	var out BackendAction
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &out))
	assert.ElementsMatch(t, []string{"a", "b"}, out.Pools)
	for _, h := range []*Handler{a, b} {
		st, _, _ := h.pool.Backends()[0].State()
		assert.Equal(t, "draining", st.String())
	}
}
