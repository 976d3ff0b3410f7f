package caddymodule

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// The heartbeat request options, from the Caddyfile to the JSON, and the
// JSON loads.
func TestCaddyfileHealthRequest(t *testing.T) {
	lines := []string{
		"health_method post",
		"health_headers {",
		"\tHost svc.internal",
		"\tX-Token a b",
		"\tX-Empty",
		"}",
		`health_request_body "{\"deep\":true}"`,
		"health_port 8081",
	}
	out, err := adaptFailoverBlock(t, lines...)
	require.NoError(t, err)
	h := failoverHandler(t, lines...)
	health := h["health"].(map[string]any)
	assert.Equal(t, "POST", health["method"], "upper-cased, as retry_methods")
	assert.Equal(t, map[string]any{"Host": []any{"svc.internal"}, "X-Token": []any{"a", "b"}, "X-Empty": []any{""}}, health["headers"])
	assert.Equal(t, `{"deep":true}`, health["body"])
	assert.EqualValues(t, 8081, health["port"])
	require.NoError(t, validateJSON(t, out), "the adapted JSON loads")

	// the engine gets them
	raw, err := json.Marshal(health)
	require.NoError(t, err)
	var hc HealthConfig
	require.NoError(t, json.Unmarshal(raw, &hc))
	cfg, err := hc.engineConfig()
	require.NoError(t, err)
	assert.Equal(t, "POST", cfg.Method)
	assert.Equal(t, http.Header{"Host": {"svc.internal"}, "X-Token": {"a", "b"}, "X-Empty": {""}}, cfg.Headers)
	assert.Equal(t, `{"deep":true}`, cfg.Body)
	assert.Equal(t, 8081, cfg.Port)

	// and the defaults: GET, no extra header, no body, the upstream's port
	cfg, err = (*HealthConfig)(nil).engineConfig()
	require.NoError(t, err)
	assert.Equal(t, "GET", cfg.Method)
	assert.Nil(t, cfg.Headers)
	assert.Empty(t, cfg.Body)
	assert.Zero(t, cfg.Port)
}

// Good values load from JSON too, at the bounds.
func TestHealthRequestJSONLoads(t *testing.T) {
	for _, health := range []string{
		`{"method":"HEAD"}`,
		`{"method":"PURGE","body":"x"}`,
		`{"method":"PUT","body":"` + strings.Repeat("x", 64<<10) + `"}`,
		`{"headers":{"host":["svc.internal:8080"],"X-A":["a","b"],"X-Tab":["a\tb"]}}`,
		`{"port":1}`,
		`{"port":65535}`,
	} {
		require.NoError(t, validateJSON(t, jsonConfig(`"upstreams":[{"dial":"127.0.0.1:9001"}],"health":`+health)), health)
	}
}

// Every request option defines the pool: a changed one makes a new pool
// (new probers), never a pool that keeps probing the old way.
func TestPoolKeyHealthRequest(t *testing.T) {
	addrs := []string{"127.0.0.1:9001"}
	base := healthcheck.Config{Method: "POST", Headers: http.Header{"X-A": {"a"}}, Body: "b", Port: 81}.WithDefaults()
	key := poolKey(addrs, "", base, "")
	for name, change := range map[string]func(*healthcheck.Config){
		"method":        func(c *healthcheck.Config) { c.Method = "PUT" },
		"header value":  func(c *healthcheck.Config) { c.Headers = http.Header{"X-A": {"c"}} },
		"header values": func(c *healthcheck.Config) { c.Headers = http.Header{"X-A": {"a", "c"}} },
		"header name":   func(c *healthcheck.Config) { c.Headers = http.Header{"X-B": {"a"}} },
		"Host header":   func(c *healthcheck.Config) { c.Headers = http.Header{"X-A": {"a"}, "Host": {"h"}} },
		"body":          func(c *healthcheck.Config) { c.Body = "c" },
		"port":          func(c *healthcheck.Config) { c.Port = 82 },
	} {
		c := base
		change(&c)
		assert.NotEqual(t, key, poolKey(addrs, "", c, ""), name)
	}
	same := base
	same.Headers = http.Header{"X-A": {"a"}}
	assert.Equal(t, key, poolKey(addrs, "", same, ""), "equal settings, one pool")
}
