package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	_ "github.com/caddyserver/caddy/v2/modules/standard" // the http app and the directives next to ours
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Golden adapt tests, in the style of Caddy's own caddytest/integration/
// caddyfile_adapt: each testdata/adapt/*.caddyfiletest file holds a
// Caddyfile, a line of ten dashes, and the JSON it must adapt to.
// UPDATE_GOLDEN=1 rewrites the JSON part from the adapter's output (read
// the diff before committing it).

const goldenSeparator = "----------"

var updateGolden = os.Getenv("UPDATE_GOLDEN") == "1"

// adaptCaddyfile runs the caddyfile adapter as 'caddy adapt' does.
func adaptCaddyfile(t testing.TB, caddyfile string) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	require.NotNil(t, adapter, "caddyfile adapter not registered")
	var (
		out      []byte
		warnings []caddyconfig.Warning
		err      error
	)
	require.NotPanics(t, func() {
		out, warnings, err = adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	})
	return out, warnings, err
}

func indentJSON(t testing.TB, raw []byte) string {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, json.Indent(&buf, raw, "", "\t"))
	return buf.String()
}

func TestCaddyfileAdaptGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddyfiletest"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			text := strings.ReplaceAll(string(data), "\r\n", "\n")
			caddyfile, expected, found := strings.Cut(text, "\n"+goldenSeparator+"\n")
			caddyfile = strings.TrimSpace(caddyfile) + "\n"
			expected = strings.TrimSpace(expected)
			// file_server's default hide entry is an OS-specific path
			hide, _ := json.Marshal("." + string(filepath.Separator) + "Caddyfile")
			expected = strings.ReplaceAll(expected, `"./Caddyfile"`, string(hide))

			out, warnings, err := adaptCaddyfile(t, caddyfile)
			require.NoError(t, err)
			// also catches an unformatted golden Caddyfile ('caddy fmt')
			assert.Empty(t, warnings, "adapter warnings")
			got := indentJSON(t, out)

			if updateGolden {
				err := os.WriteFile(path, []byte(caddyfile+goldenSeparator+"\n"+got+"\n"), 0o644)
				require.NoError(t, err)
				return
			}
			require.True(t, found, "%s has no %q line; run with UPDATE_GOLDEN=1 to create the JSON part", path, goldenSeparator)
			assert.Equal(t, expected, got, "adapted JSON differs from %s (UPDATE_GOLDEN=1 rewrites it)", path)

			// the frozen JSON must also load: provision every module
			// (our heartbeat probers included) and clean up again
			require.NoError(t, validateJSON(t, out), "the adapted JSON must load")
		})
	}
}

// validateJSON runs 'caddy validate' on a JSON config: every module is
// provisioned and validated, then cleaned up. Storage goes to a temp dir.
func validateJSON(t testing.TB, raw []byte) error {
	t.Helper()
	var cfg caddy.Config
	require.NoError(t, json.Unmarshal(raw, &cfg))
	cfg.StorageRaw = json.RawMessage(fmt.Sprintf(`{"module":"file_system","root":%q}`, t.TempDir()))
	var err error
	require.NotPanics(t, func() { err = caddy.Validate(&cfg) })
	assert.Zero(t, runningPools(), "health pools left running after validation")
	return err
}

func runningPools() int {
	n := 0
	pools.Range(func(any, any) bool { n++; return true })
	return n
}

// adaptFailoverBlock adapts a site whose only directive is failover with
// the given block lines, starting on line 3 of the Caddyfile.
func adaptFailoverBlock(t testing.TB, lines ...string) ([]byte, error) {
	t.Helper()
	var b strings.Builder
	b.WriteString(":8080 {\n\tfailover 127.0.0.1:9001 127.0.0.1:9002 {\n")
	for _, l := range lines {
		b.WriteString("\t\t" + l + "\n")
	}
	b.WriteString("\t}\n}\n")
	out, _, err := adaptCaddyfile(t, b.String())
	return out, err
}

// failoverHandler adapts the block and returns the failover handler's JSON.
func failoverHandler(t testing.TB, lines ...string) map[string]any {
	t.Helper()
	out, err := adaptFailoverBlock(t, lines...)
	require.NoError(t, err)
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	require.NoError(t, json.Unmarshal(out, &cfg))
	srv := cfg.Apps.HTTP.Servers["srv0"]
	require.Len(t, srv.Routes, 1)
	require.Len(t, srv.Routes[0].Handle, 1)
	h := srv.Routes[0].Handle[0]
	require.Equal(t, "failover", h["handler"])
	return h
}

func TestCaddyfileBadValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		line  string
		sub   string // the subdirective the error must name
		value string // the value it must name, if any
	}{
		{"unknown subdirective", "bogus 1", "bogus", ""},
		{"unknown subdirective alone", "frobnicate", "frobnicate", ""},

		{"negative health_interval", "health_interval -1s", "health_interval", "-1s"},
		{"zero health_interval", "health_interval 0s", "health_interval", "0s"},
		{"garbage health_interval", "health_interval soon", "health_interval", "soon"},
		{"negative health_timeout", "health_timeout -1s", "health_timeout", "-1s"},
		{"zero health_timeout", "health_timeout 0", "health_timeout", "0"},
		{"garbage health_timeout", "health_timeout 5parsecs", "health_timeout", "5parsecs"},
		{"negative hold", "hold -1s", "hold", "-1s"},
		{"zero hold", "hold 0ms", "hold", "0ms"},
		{"garbage hold", "hold forever", "hold", "forever"},
		{"hold without value", "hold", "hold", ""},
		{"hold with two values", "hold 1s 2s", "hold", "2s"},

		{"health_status class 7xx", "health_status 7xx", "health_status", "7xx"},
		{"health_status class 0xx", "health_status 0xx", "health_status", "0xx"},
		{"health_status 99", "health_status 99", "health_status", "99"},
		{"health_status 600", "health_status 600", "health_status", "600"},
		{"health_status abc", "health_status abc", "health_status", "abc"},
		{"health_status without value", "health_status", "health_status", ""},

		{"negative retries", "retries -1", "retries", "-1"},
		{"garbage retries", "retries x", "retries", "x"},
		{"fractional retries", "retries 1.5", "retries", "1.5"},
		{"zero health_fails", "health_fails 0", "health_fails", "0"},
		{"negative health_passes", "health_passes -2", "health_passes", "-2"},
		{"garbage health_passes", "health_passes two", "health_passes", "two"},
		{"zero max_held", "max_held 0", "max_held", "0"},
		{"negative max_held", "max_held -5", "max_held", "-5"},

		{"bad size", "request_buffers 12parsecs", "request_buffers", "12parsecs"},
		{"zero size", "request_buffers 0", "request_buffers", "0"},
		{"unlimited size", "request_buffers unlimited", "request_buffers", "unlimited"},
		{"size past int64", "request_buffers 10EB", "request_buffers", "10EB"},
		{"size without value", "request_buffers", "request_buffers", ""},

		{"retry_methods without methods", "retry_methods", "retry_methods", ""},
		{"retry_methods not a token", "retry_methods GET,POST", "retry_methods", "GET,POST"},
		{"idempotency_key with argument", "idempotency_key yes", "idempotency_key", "yes"},
		{"health_uri not a path", "health_uri nopath", "health_uri", "nopath"},
		{"health_uri without value", "health_uri", "health_uri", ""},

		{"managed lb_policy", "lb_policy first", "lb_policy", "first"},
		{"managed lb_retries", "lb_retries 3", "lb_retries", "3"},
		{"managed lb_try_duration", "lb_try_duration 5s", "lb_try_duration", "5s"},
		{"managed health_upstream", "health_upstream 127.0.0.1:81", "health_upstream", "127.0.0.1:81"},
		{"health_port 0", "health_port 0", "health_port", "0"},
		{"health_method not a token", "health_method G/ET", "health_method", "G/ET"},
		{"health_body", "health_body ok", "health_body", "health_request_body"},
		{"managed health_path", "health_path /health", "health_path", "/health"},
		{"managed fail_duration", "fail_duration 10s", "fail_duration", "10s"},
		{"managed max_fails", "max_fails 3", "max_fails", "3"},
		{"managed unhealthy_status", "unhealthy_status 5xx", "unhealthy_status", "5xx"},
		{"dynamic with upstreams", "dynamic a example.com 80", "dynamic a example.com 80", "one or the other"},

		{"restart_crashed with two arguments", "restart_crashed on off", "restart_crashed", "at most one argument"},
		{"restart_crashed garbage", "restart_crashed maybe", "restart_crashed", "maybe"},
		{"cluster garbage", "cluster maybe", "cluster", "maybe"},
		{"cluster with two arguments", "cluster on off", "cluster", "at most one argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// the bad line is line 4, after a passed-through subdirective,
			// so that the error's position is checked through our rewrite
			_, err := adaptFailoverBlock(t, "header_up X-Test 1", tc.line)
			require.Error(t, err)
			msg := err.Error()
			t.Log(msg)
			assert.Contains(t, msg, tc.sub, "error must name the subdirective")
			if tc.value != "" {
				assert.Contains(t, msg, tc.value, "error must name the value")
			}
			assert.Contains(t, msg, "Caddyfile:4", "error must point at the line")
		})
	}
}

// Each of failover's own subdirectives may be given once (retry_methods
// lists add up), as Caddy's own directives say: the error points at the
// second one.
func TestCaddyfileRepeatedSubdirective(t *testing.T) {
	for _, tc := range []struct {
		name, lines, sub, want string
		at                     int
	}{
		{"hold twice", "hold 1s\n\t\thold 2s", "hold 2s", "already specified", 4},
		{"health_uri twice", "health_uri /a\n\t\thealth_uri /b", "health_uri /b", "already specified", 4},
		{"health_interval twice", "health_interval 1s\n\t\thealth_interval 1s", "health_interval", "already specified", 4},
		{"health_timeout twice", "health_timeout 1s\n\t\thealth_timeout 1s", "health_timeout", "already specified", 4},
		{"health_fails twice", "health_fails 1\n\t\thealth_fails 2", "health_fails", "already specified", 4},
		{"health_passes twice", "health_passes 1\n\t\thealth_passes 2", "health_passes", "already specified", 4},
		{"health_status twice", "health_status 2xx\n\t\thealth_status 200", "health_status", "already specified", 4},
		{"max_held twice", "max_held 1\n\t\tmax_held 2", "max_held", "already specified", 4},
		{"retries twice", "retries 1\n\t\tretries 2", "retries", "already specified", 4},
		{"idempotency_key twice", "idempotency_key\n\t\tidempotency_key", "idempotency_key", "already specified", 4},
		{"request_buffers twice", "request_buffers 1KiB\n\t\trequest_buffers 2KiB", "request_buffers", "already specified", 4},
		{"restart twice", "restart signal /run/a.pid\n\t\trestart signal /run/b.pid", "restart signal /run/b.pid", "already specified", 4},
		{"spawn twice", "spawn app {\n\t\t\tports 9001\n\t\t}\n\t\tspawn app {\n\t\t\tports 9002\n\t\t}", "spawn", "already specified", 6},
		{"restart_after twice", "restart_after 1s\n\t\trestart_after 2s", "restart_after", "already specified", 4},
		{"restart_timeout twice", "restart_timeout 1s\n\t\trestart_timeout 2s", "restart_timeout", "already specified", 4},
		{"max_restarting twice", "max_restarting 1\n\t\tmax_restarting 2", "max_restarting", "already specified", 4},
		{"restart_crashed twice", "restart_crashed\n\t\trestart_crashed off", "restart_crashed", "already specified", 4},
		{"cluster twice", "cluster\n\t\tcluster off", "cluster", "already specified", 4},
		{"slow_start twice", "slow_start 1s\n\t\tslow_start 2s", "slow_start", "already specified", 4},
		{"hedge twice", "hedge 50ms\n\t\thedge auto", "hedge auto", "already specified", 4},
		{"hedge without a value", "hedge", "hedge", "expected one argument", 3},
		{"hedge with two values", "hedge auto 50ms", "hedge", "got another", 3},
		{"health_method twice", "health_method GET\n\t\thealth_method HEAD", "health_method", "already specified", 4},
		{"health_headers twice", "health_headers {\n\t\t\tX-A a\n\t\t}\n\t\thealth_headers {\n\t\t\tX-B b\n\t\t}", "health_headers", "already specified", 6},
		{"health_request_body twice", "health_method POST\n\t\thealth_request_body a\n\t\thealth_request_body b", "health_request_body", "already specified", 5},
		{"health_port twice", "health_port 81\n\t\thealth_port 82", "health_port", "already specified", 4},
		{"retry_methods method twice", "retry_methods GET\n\t\tretry_methods get", "retry_methods", "listed twice", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adaptFailoverBlock(t, tc.lines)
			require.Error(t, err)
			t.Log(err)
			assert.Contains(t, err.Error(), tc.sub)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), fmt.Sprintf("Caddyfile:%d", tc.at))
		})
	}
}

// Errors of passed-through reverse_proxy subdirectives keep their position.
func TestCaddyfilePassthroughErrors(t *testing.T) {
	for _, tc := range []struct {
		name, caddyfile, want string
	}{
		{
			name: "bad transport option",
			caddyfile: ":8080 {\n\tfailover 127.0.0.1:9001 {\n\t\thold 1s\n\t\ttransport http {\n" +
				"\t\t\tdial_timeout never\n\t\t}\n\t}\n}\n",
			want: "Caddyfile:5",
		},
		{
			name:      "mixed schemes",
			caddyfile: ":8080 {\n\tfailover https://127.0.0.1:9001 {\n\t\tto http://127.0.0.1:9002\n\t}\n}\n",
			want:      "all proxy upstreams must use the same scheme",
		},
		{
			name:      "bad upstream",
			caddyfile: ":8080 {\n\tfailover ftp://127.0.0.1:9001\n}\n",
			want:      "ftp",
		},
		{
			name:      "to without upstreams",
			caddyfile: ":8080 {\n\tfailover {\n\t\thold 1s\n\t\tto\n\t}\n}\n",
			want:      "Caddyfile:4",
		},
		{
			name: "handle_response with unknown matcher",
			caddyfile: ":8080 {\n\tfailover 127.0.0.1:9001 {\n\t\thandle_response @nope {\n" +
				"\t\t\trespond 502\n\t\t}\n\t}\n}\n",
			want: "nope",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := adaptCaddyfile(t, tc.caddyfile)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// The parsed values, as the JSON carries them, for the forms a user may
// write; the golden files freeze whole configs, this pins the conversions.
func TestCaddyfileValues(t *testing.T) {
	h := failoverHandler(t,
		"health_interval 1m",
		"health_timeout 1500ms",
		"hold 10m",
		"request_buffers 64KiB",
		"retries 0",
		"retry_methods get Post PURGE",
		"health_status 503",
	)
	assert.EqualValues(t, time.Minute, h["health"].(map[string]any)["interval"])
	assert.EqualValues(t, 1500*time.Millisecond, h["health"].(map[string]any)["timeout"])
	assert.EqualValues(t, 10*time.Minute, h["hold"])
	assert.EqualValues(t, 65536, h["request_buffers"])
	assert.EqualValues(t, 0, h["retries"], "retries 0 must survive as an explicit 0")
	assert.Equal(t, []any{"GET", "POST", "PURGE"}, h["retry_methods"])
	assert.Equal(t, "503", h["health"].(map[string]any)["status"])

	h = failoverHandler(t, "request_buffers 1MB")
	assert.EqualValues(t, 1000000, h["request_buffers"], "MB is decimal, MiB binary")

	// what failover manages is never in the Caddyfile's JSON
	h = failoverHandler(t)
	for _, k := range []string{"load_balancing", "health_checks", "transport", "health", "hold", "retries"} {
		assert.NotContains(t, h, k)
	}

	// retry_methods lists add up (every other subdirective of failover's
	// may be given once: see TestCaddyfileBadValues)
	h = failoverHandler(t, "retry_methods GET", "retry_methods PUT")
	assert.Equal(t, []any{"GET", "PUT"}, h["retry_methods"])

	// sizes: whole numbers of bytes, up to the bound
	for size, want := range map[string]int{"1.5KiB": 1536, "0.5KB": 500, "1": 1, "16MiB": 16 << 20} {
		h = failoverHandler(t, "max_held 64", "request_buffers "+size)
		assert.EqualValues(t, want, h["request_buffers"], size)
	}
	// the bounds themselves are allowed
	h = failoverHandler(t, "health_interval 10ms", "health_timeout 10ms", "hold 1ms", "max_held 100000",
		"request_buffers 10KiB", "retries 1000", "health_fails 100", "restart_after 1h", "restart_timeout 100ms",
		"slow_start 1h", "max_restarting 4096", "hedge 1ms")
	assert.EqualValues(t, 100000, h["max_held"])
}

// failover is ordered by its init (after reverse_proxy), so it may stand
// next to other directives at the top level with no 'order' option.
func TestCaddyfileDirectiveOrdered(t *testing.T) {
	out, warnings, err := adaptCaddyfile(t, ":8080 {\n\trespond /up 200\n\tfailover 127.0.0.1:9001\n}\n")
	require.NoError(t, err)
	require.Empty(t, warnings)
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []struct {
							Handler string `json:"handler"`
						} `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	require.NoError(t, json.Unmarshal(out, &cfg))
	var order []string
	for _, r := range cfg.Apps.HTTP.Servers["srv0"].Routes {
		for _, h := range r.Handle {
			order = append(order, h.Handler)
		}
	}
	// respond comes before reverse_proxy in Caddy's order, so before us
	assert.Equal(t, []string{"static_response", "failover"}, order)

	// and the same written the other way round
	out2, _, err := adaptCaddyfile(t, ":8080 {\n\tfailover 127.0.0.1:9001\n\trespond /up 200\n}\n")
	require.NoError(t, err)
	assert.JSONEq(t, string(out), string(out2))
}

// JSON-level validation, as a config loaded through the API gets it.
func TestHandlerValidate(t *testing.T) {
	neg := -1
	for _, tc := range []struct {
		name string
		h    Handler
		want []string
	}{
		{"negative hold", Handler{Hold: caddy.Duration(-time.Second)}, []string{"hold", "-1s"}},
		{"negative retries", Handler{Retries: &neg}, []string{"retries", "-1"}},
		{"negative max_held", Handler{MaxHeld: -3}, []string{"max_held", "-3"}},
		{"lower-case retry method", Handler{RetryMethods: []string{"get"}}, []string{"retry_methods", `"get"`}},
		{"empty retry method", Handler{RetryMethods: []string{""}}, []string{"retry_methods", `""`}},
		{"bad health status class", Handler{Health: &HealthConfig{Status: "7xx"}}, []string{"health_status", "7xx"}},
		{"bad health status code", Handler{Health: &HealthConfig{Status: "99"}}, []string{"health_status", "99"}},
		{"negative interval", Handler{Health: &HealthConfig{Interval: caddy.Duration(-time.Second)}}, []string{"interval", "-1s"}},
		{"negative timeout", Handler{Health: &HealthConfig{Timeout: caddy.Duration(-time.Millisecond)}}, []string{"timeout", "-1ms"}},
		{"negative fails", Handler{Health: &HealthConfig{Fails: -1}}, []string{"fails", "-1"}},
		{"negative passes", Handler{Health: &HealthConfig{Passes: -2}}, []string{"passes", "-2"}},
		{"uri not a path", Handler{Health: &HealthConfig{URI: "healthz"}}, []string{"healthz", "/"}},
		{
			"negative request_buffers",
			Handler{Handler: reverseproxy.Handler{RequestBuffers: -1}},
			[]string{"request_buffers", "-1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.Validate()
			require.Error(t, err)
			t.Log(err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}

	retries := 0
	ok := Handler{
		Hold:           caddy.Duration(time.Second),
		Retries:        &retries,
		MaxHeld:        1,
		RetryMethods:   []string{"GET", "POST"},
		IdempotencyKey: KeysHonor,
		Health:         &HealthConfig{URI: "/healthz", Status: "2xx", Interval: caddy.Duration(time.Second), Fails: 1},
	}
	assert.NoError(t, ok.Validate())
	assert.NoError(t, new(Handler).Validate(), "the zero handler means all defaults")
}

// A full JSON config through caddy.Validate (what 'caddy validate' and a
// config load do): provision and validate every module, then clean up.
func TestCaddyValidateJSON(t *testing.T) {
	config := func(handler string) []byte {
		return []byte(`{"apps":{"http":{"servers":{"srv0":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` +
			handler + `]}]}}}}}`)
	}
	for _, tc := range []struct {
		name    string
		handler string
		want    []string // nil: must load
	}{
		{"loads", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"},{"dial":"127.0.0.1:2"}],` +
			`"hold":"1s","retries":1,"health":{"uri":"/h","interval":"1s","status":"2xx"}}`, nil},
		{"loads with a tls transport", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],` +
			`"transport":{"protocol":"http","tls":{"insecure_skip_verify":true}}}`, nil},
		{"no upstreams", `{"handler":"failover"}`, []string{"upstreams"}},
		{"empty upstreams", `{"handler":"failover","upstreams":[]}`, []string{"upstreams"}},
		{"load_balancing set", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],` +
			`"load_balancing":{"retries":3}}`, []string{"load balancing", "managed"}},
		{"health_checks set", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],` +
			`"health_checks":{"active":{"uri":"/"}}}`, []string{"health checks", "replaced"}},
		{"dynamic and static upstreams", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],` +
			`"dynamic_upstreams":{"source":"a","name":"example.com","port":"80"}}`, []string{"dynamic", "one or the other"}},
		{"loads dynamic upstreams, looks nothing up", `{"handler":"failover",` +
			`"dynamic_upstreams":{"source":"a","name":"failover-never-resolved.invalid","port":"80","refresh":"1s"}}`, nil},
		{"loads dynamic multi", `{"handler":"failover","dynamic_upstreams":{"source":"multi","sources":[` +
			`{"source":"a","name":"a.invalid","port":"80"},{"source":"srv","name":"_http._tcp.b.invalid","refresh":"2s"}]}}`, nil},
		{"dynamic refresh too short", `{"handler":"failover",` +
			`"dynamic_upstreams":{"source":"a","name":"example.com","port":"80","refresh":"10ms"}}`, []string{"dynamic a", "refresh", "10ms", "from 100ms"}},
		{"dynamic refresh too short in multi", `{"handler":"failover","dynamic_upstreams":{"source":"multi","sources":[` +
			`{"source":"srv","name":"b.invalid","refresh":"48h"}]}}`, []string{"dynamic srv", "refresh", "48h"}},
		{"dynamic a without port", `{"handler":"failover",` +
			`"dynamic_upstreams":{"source":"a","name":"example.com"}}`, []string{"dynamic a", "port"}},
		{"dynamic with request placeholders", `{"handler":"failover",` +
			`"dynamic_upstreams":{"source":"a","name":"{http.request.host}","port":"80"}}`, []string{"placeholders"}},
		{"dynamic with spawn", `{"handler":"failover","spawn":{"command":["true","{backend}"],"ports":[9001]},` +
			`"dynamic_upstreams":{"source":"a","name":"example.com","port":"80"}}`, []string{"dynamic", "spawn"}},
		{"unknown dynamic source", `{"handler":"failover","dynamic_upstreams":{"source":"nope"}}`, []string{"nope"}},
		{"placeholder upstream", `{"handler":"failover","upstreams":[{"dial":"{http.request.host}:80"}]}`,
			[]string{"{http.request.host}:80", "placeholder"}},
		{"bad upstream", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:x"}]}`,
			[]string{"127.0.0.1:x"}},
		{"negative hold", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],"hold":"-1s"}`,
			[]string{"hold", "-1s"}},
		{"negative retries", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],"retries":-1}`,
			[]string{"retries", "-1"}},
		{"bad health status", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],"health":{"status":"7xx"}}`,
			[]string{"health_status", "7xx"}},
		{"negative interval", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],"health":{"interval":"-1s"}}`,
			[]string{"interval", "-1s"}},
		{"unknown field", `{"handler":"failover","upstreams":[{"dial":"127.0.0.1:1"}],"hodl":"1s"}`,
			[]string{"hodl"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateJSON(t, config(tc.handler))
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			t.Log(err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// A Caddyfile that adapts but cannot load must say why when loaded.
func TestCaddyfileAdaptsButFailsToLoad(t *testing.T) {
	out, _, err := adaptCaddyfile(t, ":8080 {\n\tfailover\n}\n")
	require.NoError(t, err, "like reverse_proxy, no upstreams is caught at load, not at adapt")
	err = validateJSON(t, out)
	require.Error(t, err)
	assert.Regexp(t, regexp.MustCompile(`failover: no upstreams`), err.Error())
}
