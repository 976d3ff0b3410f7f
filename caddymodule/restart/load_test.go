package restart

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoadModule loads each restarter the way the handler does, through
// ctx.LoadModule on a json.RawMessage field tagged
// `caddy:"namespace=failover.restarters inline_key=restarter"`.
func TestLoadModule(t *testing.T) {
	for raw, want := range map[string]any{
		`{"restarter": "http", "url": "http://127.0.0.1:1/r"}`:                      &HTTP{},
		`{"restarter": "exec", "command": "true"}`:                                  &Exec{},
		`{"restarter": "signal", "pidfile": "/run/b-{port}.pid", "signal": "TERM"}`: &Signal{},
		`{"restarter": "supervisord", "address": "/s.sock", "process": "b1"}`:       &Supervisord{},
	} {
		r := mustLoad(t, raw)
		assert.IsType(t, want, r, raw)
	}

	// Provision ran: defaults and parsed values are in place
	h := mustLoad(t, `{"restarter": "http", "url": "http://127.0.0.1:1/r"}`).(*HTTP)
	assert.Equal(t, "POST", h.Method)
	assert.NotNil(t, h.client)
	s := mustLoad(t, `{"restarter": "signal", "pidfile": "/run/b-{port}.pid", "signal": "hup"}`).(*Signal)
	assert.EqualValues(t, 1, s.sig)
	sv := mustLoad(t, `{"restarter": "supervisord", "address": "http://127.0.0.1:9001", "process": "b1"}`).(*Supervisord)
	assert.Equal(t, "http://127.0.0.1:9001/RPC2", sv.url)
	sv = mustLoad(t, `{"restarter": "supervisord", "address": "http://127.0.0.1:9001/custom", "process": "b1"}`).(*Supervisord)
	assert.Equal(t, "http://127.0.0.1:9001/custom", sv.url)
	ex := mustLoad(t, `{"restarter": "exec", "command": "true", "timeout": "2s"}`).(*Exec)
	assert.NotNil(t, ex.logger)
}

func TestLoadModuleErrors(t *testing.T) {
	for raw, want := range map[string]string{
		`{"restarter": "bogus"}`:                                                     `unknown module: failover.restarters.bogus`,
		`{"restarter": "http"}`:                                                      `restart http: missing URL`,
		`{"restarter": "http", "url": "tcp://x"}`:                                    `restart http: bad URL "tcp://x"`,
		`{"restarter": "http", "url": "http://x", "method": "A B"}`:                  `restart http: bad method "A B"`,
		`{"restarter": "exec"}`:                                                      `restart exec: missing command`,
		`{"restarter": "signal", "signal": "TERM"}`:                                  `restart signal: missing pidfile`,
		`{"restarter": "signal", "pidfile": "/run/b-{port}.pid", "signal": "BOGUS"}`: `restart signal: bad signal "BOGUS"`,
		`{"restarter": "supervisord", "process": "b1"}`:                              `restart supervisord: missing address`,
		`{"restarter": "supervisord", "address": "/s.sock"}`:                         `restart supervisord: missing process name`,
		`{"restarter": "supervisord", "address": "gopher://x", "process": "b"}`:      `restart supervisord: bad address "gopher://x"`,
		`{"restarter": "exec", "command": "true", "timeout": "soon"}`:                `soon`,
	} {
		_, err := load(t, raw)
		require.Error(t, err, raw)
		assert.Contains(t, err.Error(), want, raw)
	}
}
