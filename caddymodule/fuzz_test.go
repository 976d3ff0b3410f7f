package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/require"
)

// caddyfileSeeds cover every subdirective of failover's own, good and bad
// values, and some of reverse_proxy's that pass through.
var caddyfileSeeds = []string{
	"",
	"to 127.0.0.1:9003",
	"to 127.0.0.1:9003-9005",
	"health_uri /health",
	"health_uri /a?b=c",
	"health_uri nopath",
	"health_interval 250ms",
	"health_interval 1ns",
	"health_timeout 200ms",
	"health_timeout 2h",
	"health_fails 2",
	"health_fails 0",
	"health_passes 1",
	"health_passes 101",
	"health_status 2xx",
	"health_status 204",
	"health_status 7xx",
	"health_method POST\nhealth_request_body {}",
	"health_method \"GE T\"",
	"health_headers {\n\tHost svc\n\tX-A a b\n\tX-Empty\n}",
	"health_headers {\n\tHost a\n\thost b\n}",
	"health_request_body x",
	"health_port 8081",
	"health_port 0",
	"hold 10s",
	"hold 11m",
	"hold 1s\nhold 2s",
	"max_held 1024",
	"max_held 100001",
	"retries 0",
	"retries -1",
	"retry_methods GET PUT",
	"retry_methods \"GE T\"",
	"retry_methods GET\nretry_methods GET",
	"idempotency_key",
	"idempotency_key yes",
	"idempotency_key generate",
	"idempotency_key generate now",
	"request_buffers 64KiB",
	"request_buffers 1.5",
	"request_buffers 1.5KiB",
	"request_buffers 16MiB",
	"max_held 64\nrequest_buffers 16MiB",
	"request_buffers 10EB",
	"spawn /bin/app -addr {backend} {\n\tports 9001-9003\n\tenv A b\n\tdir /tmp\n\tstop_timeout 1s\n}",
	"spawn app {\n\tto 127.0.0.1:9001-9002\n}",
	"spawn app {\n\tports 9001\n\tports 9001\n}",
	"restart http http://127.0.0.1:1/restart/{port} {\n\tmethod PUT\n\theader X-Token s3cret\n\ttimeout 1s\n\trestarts_on_exit\n}",
	"restart exec systemctl restart app@{port} {\n\ttimeout 5s\n\trestarts_on_exit\n}",
	"restart signal /run/app-{port}.pid KILL",
	"restart supervisord /var/run/supervisor.sock app:app-{port} {\n\tusername u\n\tpassword p\n}",
	"restart bogus",
	"restart_after 1s",
	"restart_after 0s",
	"restart_timeout 30s",
	"max_restarting 1",
	"max_restarting 5000",
	"restart_crashed",
	"restart_crashed off",
	"restart_crashed on off",
	"cluster",
	"cluster off",
	"cluster maybe",
	"slow_start 10s",
	"hedge 50ms",
	"hedge auto",
	"hedge 0s",
	"hedge auto auto",
	"lb_policy first",
	"dynamic a example.com 80",
	"dynamic a example.com 80 {\n\trefresh 1s\n\tresolvers 127.0.0.1:5353\n}",
	"dynamic a example.com {\n\trefresh 1ms\n}",
	"dynamic srv _http._tcp.example.com {\n\trefresh 250ms\n\tgrace_period 10s\n}",
	"dynamic multi {\n\ta example.com 80\n\tsrv example.com\n}",
	"dynamic a {http.request.host} 80",
	"dynamic a example.com 80\ndynamic a example.org 80",
	"dynamic bogus",
	"header_up X-Test 1",
	"transport http {\n\tdial_timeout 1s\n}",
	"handle_response {\n\trespond 502\n}",
	"health_uri {",
	"}",
	"\"",
}

// The Caddyfile adapter never panics on what follows failover, and what it
// accepts loads as JSON: failover's own checks pass on the adapted handler
// (the Caddyfile accepts nothing that JSON would refuse).
func FuzzCaddyfile(f *testing.F) {
	for _, s := range caddyfileSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, block string) {
		head := "failover 127.0.0.1:9001 127.0.0.1:9002"
		if strings.HasPrefix(block, "dynamic") {
			head = "failover" // dynamic upstreams go without static ones
		}
		caddyfile := ":8080 {\n\t" + head + " {\n" + block + "\n\t}\n}\n"
		out, _, err := adaptCaddyfile(t, caddyfile)
		if err != nil {
			return
		}
		for _, raw := range failoverHandlers(t, out) {
			h := new(Handler)
			require.NoError(t, caddy.StrictUnmarshalJSON(raw, h), "the adapted handler decodes: %s", raw)
			require.NoError(t, h.Validate(), "a handler the Caddyfile accepted validates: %s", raw)
		}
	})
}

// failoverHandlers finds every failover handler in an adapted config.
func failoverHandlers(t *testing.T, cfg []byte) []json.RawMessage {
	var found []json.RawMessage
	var walk func(json.RawMessage)
	walk = func(raw json.RawMessage) {
		raw = json.RawMessage(strings.TrimSpace(string(raw)))
		if len(raw) == 0 {
			return
		}
		switch raw[0] {
		case '{':
			var obj map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(raw, &obj))
			if string(obj["handler"]) == `"failover"` {
				delete(obj, "handler")
				b, err := json.Marshal(obj)
				require.NoError(t, err)
				found = append(found, b)
				return
			}
			for _, v := range obj {
				walk(v)
			}
		case '[':
			var arr []json.RawMessage
			require.NoError(t, json.Unmarshal(raw, &arr))
			for _, v := range arr {
				walk(v)
			}
		}
	}
	walk(cfg)
	return found
}

// jsonSeeds are failover handlers (without "handler") covering every field.
var jsonSeeds = []string{
	`{}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}]}`,
	`{"upstreams":[{"dial":"127.0.0.1:1-65535"}]}`,
	`{"upstreams":[{"dial":"127.0.0.1"}]}`,
	`{"upstreams":[{"dial":"unix//tmp/s"}]}`,
	`{"upstreams":[{"dial":"{http.request.host}:80"}]}`,
	`{"upstreams":[null]}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"health":{"uri":"/h","interval":"250ms","timeout":"200ms","fails":2,"passes":1,"status":"2xx"}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"health":{"uri":"/h\u0000","interval":1,"timeout":-1,"fails":-1,"passes":1000,"status":"7xx"}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"health":{"method":"POST","headers":{"Host":["h"],"X-A":["a","b"]},"body":"{}","port":8081}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"health":{"method":"G T","headers":{"X\u0000":["a\r\n"],"Host":[]},"body":"x","port":-1}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"hold":"10s","max_held":1024,"retries":2,"retry_methods":["GET","HEAD"],"idempotency_key":true,"request_buffers":65536}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"idempotency_key":"generate"}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"idempotency_key":"sometimes"}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"hold":-1,"max_held":-1,"retries":-1,"retry_methods":["GE T",""],"request_buffers":-1}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"max_held":100000,"request_buffers":16777216}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"restart":{"restarter":"signal","pidfile":"/run/{port}.pid"},"restart_after":"1s","restart_timeout":"30s","max_restarting":1,"restart_crashed":false,"slow_start":"10s"}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"restart":{"restarter":"signal","pidfile":"/run/{port}.pid"},"cluster":false}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"cluster":true}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"},{"dial":"127.0.0.1:9002"}],"hedge":"auto"}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"hedge":"-5ms"}`,
	`{"spawn":{"command":["app","-addr","{backend}"],"ports":[9001,9002],"env":{"A":"b"},"dir":"/tmp","stop_timeout":"1s"}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"load_balancing":{"retries":3}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"health_checks":{"active":{"uri":"/"}}}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"dynamic_upstreams":{"source":"a"}}`,
	`{"dynamic_upstreams":{"source":"a","name":"example.com","port":"80","refresh":"1s","resolver":{"addresses":["127.0.0.1:5353"]}}}`,
	`{"dynamic_upstreams":{"source":"srv","name":"example.com","refresh":1}}`,
	`{"dynamic_upstreams":{"source":"multi","sources":[{"source":"a","name":"x","port":"1"},{"source":"srv","refresh":"-1s"}]}}`,
	`{"dynamic_upstreams":{"source":"a","name":"{http.request.host}","port":"80"}}`,
	`{"dynamic_upstreams":[]}`,
	`{"upstreams":[{"dial":"127.0.0.1:9001"}],"transport":{"protocol":"http"}}`,
}

// JSON that decodes into the handler never makes its checks panic, and a
// handler they accept has its defaults-applied values within the bounds.
func FuzzJSONConfig(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h := new(Handler)
		if err := caddy.StrictUnmarshalJSON([]byte(raw), h); err != nil {
			return
		}
		if h.checkManagedFields() != nil || h.Validate() != nil {
			return
		}
		hold, maxHeld, buf := time.Duration(h.Hold), int64(h.MaxHeld), h.RequestBuffers
		if hold == 0 {
			hold = DefaultHold
		}
		if maxHeld == 0 {
			maxHeld = DefaultMaxHeld
		}
		if buf == 0 {
			buf = DefaultRequestBuffers
		}
		require.GreaterOrEqual(t, hold, MinHold)
		require.LessOrEqual(t, hold, MaxHold)
		require.LessOrEqual(t, maxHeld, int64(MaxMaxHeld))
		require.LessOrEqual(t, buf, int64(MaxRequestBuffers))
		require.LessOrEqual(t, maxHeld*buf, int64(MaxHeldBodies))
		if h.Retries != nil {
			require.LessOrEqual(t, *h.Retries, MaxRetries)
		}
		require.LessOrEqual(t, len(h.Upstreams), MaxUpstreams)
		cfg, err := h.Health.engineConfig()
		require.NoError(t, err)
		require.GreaterOrEqual(t, cfg.Interval, MinHealthInterval)
		require.GreaterOrEqual(t, cfg.Timeout, MinHealthTimeout)
		for _, u := range h.Upstreams {
			require.NoError(t, checkDial(u.Dial))
		}
	})
}
