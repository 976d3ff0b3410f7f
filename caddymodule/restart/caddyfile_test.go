package restart

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parse runs ParseCaddyfile the way the failover directive does: inside a
// block, on the token after "restart". It returns the restarter's JSON and
// the subdirectives of the enclosing block that came after it.
func parse(t *testing.T, input string) (json.RawMessage, []string, error) {
	t.Helper()
	d := caddyfile.NewTestDispenser("failover {\n" + input + "\nafter 1\n}")
	d.Next() // failover
	var raw json.RawMessage
	var rest []string
	for d.NextBlock(0) {
		if d.Val() != "restart" {
			rest = append(rest, d.Val())
			d.RemainingArgs()
			continue
		}
		if !d.NextArg() {
			return nil, nil, d.ArgErr()
		}
		var err error
		if raw, err = ParseCaddyfile(d); err != nil {
			return nil, nil, err
		}
	}
	return raw, rest, nil
}

func TestParseCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
		exitWatcher       bool
	}{
		{
			"http minimal",
			`restart http http://127.0.0.1:2019/restart`,
			`{"restarter": "http", "url": "http://127.0.0.1:2019/restart"}`,
			false,
		},
		{
			"http full",
			`restart http https://{http.request.host}:8443/restart/{http.request.port}?i={index} {
				method put
				header Authorization "Bearer abc"
				header X-Backend {http.request.hostport}
				header X-Backend also-this
				timeout 2s
			}`,
			`{"restarter": "http", "url": "https://{host}:8443/restart/{port}?i={index}", "method": "PUT",
			  "headers": {"Authorization": ["Bearer abc"], "X-Backend": ["{backend}", "also-this"]},
			  "timeout": 2000000000}`,
			false,
		},
		{
			"exec",
			`restart exec systemctl restart backend@{http.request.port}`,
			`{"restarter": "exec", "command": "systemctl", "args": ["restart", "backend@{port}"]}`,
			false,
		},
		{
			"exec with block",
			`restart exec /usr/bin/sv restart /etc/service/backend-{http.request.port} {
				timeout 10s
				restarts_on_exit
			}`,
			`{"restarter": "exec", "command": "/usr/bin/sv", "args": ["restart", "/etc/service/backend-{port}"],
			  "timeout": 10000000000, "restarts_on_exit": true}`,
			true,
		},
		{
			"exec without args",
			`restart exec /usr/local/bin/restart-backends`,
			`{"restarter": "exec", "command": "/usr/local/bin/restart-backends"}`,
			false,
		},
		{
			"signal default",
			`restart signal /run/backend-{http.request.port}.pid`,
			`{"restarter": "signal", "pidfile": "/run/backend-{port}.pid"}`,
			true,
		},
		{
			"signal named",
			`restart signal /run/backend-{index}.pid SIGTERM`,
			`{"restarter": "signal", "pidfile": "/run/backend-{index}.pid", "signal": "SIGTERM"}`,
			true,
		},
		{
			"signal number",
			`restart signal /run/b-{port}.pid 9`,
			`{"restarter": "signal", "pidfile": "/run/b-{port}.pid", "signal": "9"}`,
			true,
		},
		{
			"supervisord socket",
			`restart supervisord /var/run/supervisor.sock backend-{http.request.port}`,
			`{"restarter": "supervisord", "address": "/var/run/supervisor.sock", "process": "backend-{port}"}`,
			true,
		},
		{
			"supervisord URL with auth",
			`restart supervisord http://127.0.0.1:9001 backends:backend{index} {
				username caddy
				password s3cret
				timeout 3s
			}`,
			`{"restarter": "supervisord", "address": "http://127.0.0.1:9001", "process": "backends:backend{index}",
			  "username": "caddy", "password": "s3cret", "timeout": 3000000000}`,
			true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, rest, err := parse(t, tc.input)
			require.NoError(t, err)
			assert.JSONEq(t, tc.want, string(raw))
			assert.Equal(t, []string{"after"}, rest, "the enclosing block goes on after the restarter")

			// and what the Caddyfile gives loads as the handler loads it
			r := mustLoad(t, string(raw))
			ew, ok := r.(ExitWatcher)
			require.True(t, ok)
			assert.Equal(t, tc.exitWatcher, ew.RestartsOnExit())
		})
	}
}

func TestParseCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{`restart bogus x`, `restart bogus: unknown restarter "bogus" (known: exec, http, signal, supervisord)`},

		{`restart http`, `restart http: missing URL`},
		{`restart http ftp://example.com/x`, `restart http: bad URL "ftp://example.com/x"`},
		{`restart http /restart`, `restart http: bad URL "/restart"`},
		{`restart http http://x y`, `restart http: unexpected argument "y"`},
		{"restart http http://x {\ntimeout soon\n}", `restart http: bad timeout "soon"`},
		{"restart http http://x {\ntimeout\n}", `restart http: timeout needs a duration`},
		{"restart http http://x {\ntimeout 0s\n}", `restart http: bad timeout "0s": must be positive`},
		{"restart http http://x {\nmethod \"NO GOOD\"\n}", `restart http: bad method "NO GOOD"`},
		{"restart http http://x {\nheader X\n}", `restart http: header takes a name and a value, got 1 arguments`},
		{"restart http http://x {\nfrob\n}", `restart http: unknown subdirective "frob"`},
		{"restart http http://x {\ntimeout 1s\ntimeout 2s\n}", `restart http: timeout already specified`},
		{"restart http http://x {\nmethod PUT\nmethod POST\n}", `restart http: method already specified`},
		{"restart http http://x {\nrestarts_on_exit\nrestarts_on_exit\n}", `restart http: restarts_on_exit already specified`},

		{`restart exec`, `restart exec: missing command`},
		{"restart exec true {\ntimeout -1s\n}", `restart exec: bad timeout "-1s": must be positive`},
		{"restart exec true {\nretries 3\n}", `restart exec: unknown subdirective "retries"`},
		{"restart exec true {\ntimeout 1s\ntimeout 1s\n}", `restart exec: timeout already specified`},
		{"restart exec true {\nrestarts_on_exit yes\n}", `restart exec: restarts_on_exit takes no further argument, got "yes"`},

		{`restart signal`, `restart signal: missing pidfile`},
		{`restart signal /run/b.pid BOGUS`, `restart signal: bad signal "BOGUS"`},
		{`restart signal /run/b.pid 0`, `restart signal: bad signal "0"`},
		{`restart signal /run/b.pid KILL now`, `restart signal: unexpected argument "now"`},
		{"restart signal /run/b.pid {\nsignal TERM\n}", `restart signal: takes no block, got "signal"`},

		{`restart supervisord`, `restart supervisord: missing address and process name`},
		{`restart supervisord /run/supervisor.sock`, `restart supervisord: missing process name`},
		{`restart supervisord ftp://x backend1`, `restart supervisord: bad address "ftp://x"`},
		{`restart supervisord /s.sock backend1 extra`, `restart supervisord: unexpected argument "extra"`},
		{"restart supervisord /s.sock b {\npassword p\n}", `restart supervisord: password without username`},
		{"restart supervisord /s.sock b {\nusername\n}", `restart supervisord: username needs a value`},
		{"restart supervisord /s.sock b {\ntimeout 1y\n}", `restart supervisord: bad timeout "1y"`},
		{"restart supervisord /s.sock b {\nusername a\nusername b\n}", `restart supervisord: username already specified`},
	} {
		t.Run(tc.input, func(t *testing.T) {
			_, _, err := parse(t, tc.input)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "Testfile:", "the error says where")
		})
	}
}

func TestKnownRestarters(t *testing.T) {
	assert.Equal(t, []string{"exec", "http", "signal", "supervisord"}, KnownRestarters())
}
