package caddymodule

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonConfig is a whole config whose only handler is failover with the
// given fields after its handler name; upstreams default to one.
func jsonConfig(fields string) []byte {
	return []byte(`{"apps":{"http":{"servers":{"srv0":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` +
		`{"handler":"failover",` + fields + `}]}]}}}}}`)
}

// Every bad value is refused in a Caddyfile (at adapt, pointing at its
// line) and in JSON (at load, which bypasses the Caddyfile), and each error
// names the setting, the value and what is allowed.
func TestBadValuesCaddyfileAndJSON(t *testing.T) {
	const up = `"upstreams":[{"dial":"127.0.0.1:9001"}]`
	for _, tc := range []struct {
		name     string
		lines    []string // failover block lines, "" for no Caddyfile case
		cfWant   []string
		json     string // handler fields, "" for no JSON case
		jsonWant []string
	}{
		{
			name:  "request_buffers above the maximum",
			lines: []string{"max_held 1", "request_buffers 17MiB"}, cfWant: []string{"request_buffers", `"17MiB"`, "16MiB"},
			json: up + `,"max_held":1,"request_buffers":16777217`, jsonWant: []string{"request_buffers", "16777217", "16MiB"},
		},
		{
			name:  "fractional request_buffers",
			lines: []string{"request_buffers 1.5"}, cfWant: []string{"request_buffers", `"1.5"`, "whole number of bytes"},
			json: up + `,"request_buffers":1.5`, jsonWant: []string{"request_buffers", "1.5"},
		},
		{
			name:  "fractional request_buffers with a unit",
			lines: []string{"request_buffers 1.0001KB"}, cfWant: []string{"request_buffers", `"1.0001KB"`, "whole number of bytes"},
		},
		{
			name:  "zero request_buffers",
			lines: []string{"request_buffers 0"}, cfWant: []string{"request_buffers", `"0"`, "from 1 to 16777216"},
			json: up + `,"request_buffers":-1`, jsonWant: []string{"request_buffers", "-1", "from 1 to 16777216"},
		},
		{
			name:  "max_held above the maximum",
			lines: []string{"max_held 100001"}, cfWant: []string{"max_held", `"100001"`, "from 1 to 100000"},
			json: up + `,"max_held":100001`, jsonWant: []string{"max_held", "100001", "from 1 to 100000"},
		},
		{
			name:  "held bodies above 1GiB",
			lines: []string{"max_held 100000", "request_buffers 1MiB"}, cfWant: []string{"max_held 100000", "request_buffers 1048576", "1GiB"},
			json: up + `,"max_held":100000,"request_buffers":1048576`, jsonWant: []string{"max_held 100000", "request_buffers 1048576", "1GiB"},
		},
		{
			name:  "held bodies above 1GiB with the default max_held",
			lines: []string{"request_buffers 16MiB"}, cfWant: []string{"max_held 1024 (the default)", "request_buffers 16777216", "1GiB"},
			json: up + `,"request_buffers":16777216`, jsonWant: []string{"max_held 1024 (the default)", "request_buffers 16777216", "1GiB"},
		},
		{
			name:  "health_interval below 10ms",
			lines: []string{"health_interval 1ns"}, cfWant: []string{"health_interval", `"1ns"`, "from 10ms to 1h"},
			json: up + `,"health":{"interval":"1ns"}`, jsonWant: []string{"health.interval", "health_interval", "1ns", "from 10ms to 1h"},
		},
		{
			name:  "health_interval above 1h",
			lines: []string{"health_interval 2h"}, cfWant: []string{"health_interval", `"2h"`, "from 10ms to 1h"},
			json: up + `,"health":{"interval":"2h"}`, jsonWant: []string{"health.interval", "2h0m0s", "from 10ms to 1h"},
		},
		{
			name:  "health_timeout below 10ms",
			lines: []string{"health_timeout 9ms"}, cfWant: []string{"health_timeout", `"9ms"`, "from 10ms to 1m"},
			json: up + `,"health":{"timeout":9000000}`, jsonWant: []string{"health.timeout", "9ms", "from 10ms to 1m"},
		},
		{
			name:  "hold above 10m",
			lines: []string{"hold 11m"}, cfWant: []string{"hold", `"11m"`, "from 1ms to 10m"},
			json: up + `,"hold":"11m"`, jsonWant: []string{"hold", "11m0s", "from 1ms to 10m"},
		},
		{
			name:  "restart_after below 10ms",
			lines: []string{"restart_after 1ms"}, cfWant: []string{"restart_after", `"1ms"`, "from 10ms to 1h"},
			json: up + `,"restart_after":"1ms"`, jsonWant: []string{"restart_after", "1ms", "from 10ms to 1h"},
		},
		{
			name:  "restart_timeout below 100ms",
			lines: []string{"restart_timeout 50ms"}, cfWant: []string{"restart_timeout", `"50ms"`, "from 100ms to 1h"},
			json: up + `,"restart_timeout":"50ms"`, jsonWant: []string{"restart_timeout", "50ms", "from 100ms to 1h"},
		},
		{
			name:  "slow_start above 1h",
			lines: []string{"slow_start 61m"}, cfWant: []string{"slow_start", `"61m"`, "from 100ms to 1h"},
			json: up + `,"slow_start":"61m"`, jsonWant: []string{"slow_start", "1h1m0s", "from 100ms to 1h", "0 for off"},
		},
		{
			name:  "hedge above 1m",
			lines: []string{"hedge 61s"}, cfWant: []string{"hedge", `"61s"`, "from 1ms to 1m", "or auto"},
			json: up + `,"hedge":"61s"`, jsonWant: []string{"hedge", `"61s"`, "from 1ms to 1m", "or auto", "empty for off"},
		},
		{
			name:  "hedge below 1ms",
			lines: []string{"hedge 500us"}, cfWant: []string{"hedge", `"500us"`, "from 1ms to 1m"},
			json: up + `,"hedge":"0s"`, jsonWant: []string{"hedge", `"0s"`, "from 1ms to 1m"},
		},
		{
			name:  "hedge neither auto nor a duration",
			lines: []string{"hedge sometimes"}, cfWant: []string{"hedge", `"sometimes"`, "not auto nor a duration"},
			json: up + `,"hedge":"AUTO"`, jsonWant: []string{"hedge", `"AUTO"`, "not auto nor a duration"},
		},
		{
			name:  "health_fails above 100",
			lines: []string{"health_fails 101"}, cfWant: []string{"health_fails", `"101"`, "from 1 to 100"},
			json: up + `,"health":{"fails":101}`, jsonWant: []string{"health.fails", "101", "from 1 to 100"},
		},
		{
			name:  "retries above 1000",
			lines: []string{"retries 1001"}, cfWant: []string{"retries", `"1001"`, "from 0 to 1000"},
			json: up + `,"retries":1001`, jsonWant: []string{"retries", "1001", "from 0 to 1000"},
		},
		{
			name:  "max_restarting above the pool bound",
			lines: []string{"max_restarting 5000"}, cfWant: []string{"max_restarting", `"5000"`, "from 1 to 4096"},
			json: up + `,"max_restarting":5000`, jsonWant: []string{"max_restarting", "5000", "from 1 to 4096"},
		},
		{
			name:     "dial with a port range",
			json:     `"upstreams":[{"dial":"127.0.0.1:1-65535"}]`,
			jsonWant: []string{"upstream", `"127.0.0.1:1-65535"`, "port range", "one host:port"},
		},
		{
			name:     "dial without a port",
			json:     `"upstreams":[{"dial":"127.0.0.1"}]`,
			jsonWant: []string{"upstream", `"127.0.0.1"`, "missing port", "host:port"},
		},
		{
			name:     "dial with port 0",
			json:     `"upstreams":[{"dial":"127.0.0.1:0"}]`,
			jsonWant: []string{"upstream", `"127.0.0.1:0"`, "from 1 to 65535"},
		},
		{
			name:  "more upstreams than a pool may have",
			lines: nil, json: fmt.Sprintf(`"upstreams":[%s{"dial":"127.0.0.1:1"}]`, manyUpstreams(MaxUpstreams)),
			jsonWant: []string{"4097 upstreams", "at most 4096"},
		},
		{
			name:  "health uri with a control character",
			lines: []string{"health_uri \"/a\x01\""}, cfWant: []string{"health_uri", `"/a\x01"`, "control characters"},
			json: up + `,"health":{"uri":"/a\u0001"}`, jsonWant: []string{"health.uri", `"/a\x01"`, "control characters"},
		},
		{
			name:  "health uri with a newline",
			lines: []string{"health_uri \"/a\nb\""}, cfWant: []string{"health_uri", `"/a\nb"`, "control characters"},
			json: up + `,"health":{"uri":"/a\nb"}`, jsonWant: []string{"health.uri", `"/a\nb"`, "control characters"},
		},
		{
			name:     "health uri not a path",
			json:     up + `,"health":{"uri":"health"}`,
			jsonWant: []string{"health.uri", `"health"`, "starting with /"},
		},
		{
			name:  "retry method not a token",
			lines: []string{`retry_methods "GE T"`}, cfWant: []string{"retry_methods", `"GE T"`, "RFC 9110 token"},
			json: up + `,"retry_methods":["GE T"]`, jsonWant: []string{"retry_methods", `"GE T"`, "RFC 9110 token"},
		},
		{
			name:     "retry method listed twice",
			json:     up + `,"retry_methods":["GET","GET"]`,
			jsonWant: []string{"retry_methods", `"GET"`, "listed twice"},
		},
		{
			name:  "health_method not a token",
			lines: []string{`health_method "GE T"`}, cfWant: []string{"health_method", `"GE T"`, "RFC 9110 token"},
			json: up + `,"health":{"method":"GE T"}`, jsonWant: []string{"health", "method", `"GE T"`, "RFC 9110 token"},
		},
		{
			name:  "health_method CONNECT",
			lines: []string{`health_method connect`}, cfWant: []string{"health_method", "CONNECT", "GET, HEAD or POST"},
			json: up + `,"health":{"method":"CONNECT"}`, jsonWant: []string{"health", "CONNECT", "GET, HEAD or POST"},
		},
		{
			name:  "health header name not a token",
			lines: []string{"health_headers {", "\t\"X Y\" a", "}"}, cfWant: []string{"health_headers", `"X Y"`, "token"},
			json: up + `,"health":{"headers":{"X Y":["a"]}}`, jsonWant: []string{"health", `"X Y"`, "token"},
		},
		{
			name:  "health header value with a newline",
			lines: []string{"health_headers {", "\tX-A \"a\nb\"", "}"}, cfWant: []string{"health_headers", "X-A", `"a\nb"`, "CR, LF, NUL"},
			json: up + `,"health":{"headers":{"X-A":["a\r\nEvil: 1"]}}`, jsonWant: []string{"health", "X-A", `"a\r\nEvil: 1"`, "CR, LF, NUL"},
		},
		{
			name: "health header value with a NUL",
			json: up + `,"health":{"headers":{"X-A":["a\u0000b"]}}`, jsonWant: []string{"health", "X-A", `"a\x00b"`, "CR, LF, NUL"},
		},
		{
			name:  "health header Content-Length",
			lines: []string{"health_headers {", "\tContent-Length 3", "}"}, cfWant: []string{"health_headers", "Content-Length", "from its body"},
			json: up + `,"health":{"headers":{"content-length":["3"]}}`, jsonWant: []string{"health", "content-length", "from its body"},
		},
		{
			name:  "health header Host twice",
			lines: []string{"health_headers {", "\tHost a", "\thost b", "}"}, cfWant: []string{"Host given 2 times", "one host name"},
			json: up + `,"health":{"headers":{"Host":["a","b"]}}`, jsonWant: []string{"health", "Host given 2 times", "one host name"},
		},
		{
			name:  "health_headers with an argument",
			lines: []string{"health_headers X-A"}, cfWant: []string{"health_headers", `"X-A"`, "takes a block"},
		},
		{
			name:  "health_headers with an empty block",
			lines: []string{"health_headers {", "}"}, cfWant: []string{"health_headers", "at least one header"},
		},
		{
			name:  "health_request_body above 64KiB",
			lines: []string{"health_method POST", "health_request_body " + strings.Repeat("x", 64<<10+1)}, cfWant: []string{"health_request_body", "65537 bytes", "64KiB"},
			json: up + `,"health":{"method":"POST","body":"` + strings.Repeat("x", 64<<10+1) + `"}`, jsonWant: []string{"health", "body", "65537 bytes", "64KiB"},
		},
		{
			name:  "health_request_body with GET",
			lines: []string{"health_request_body hi"}, cfWant: []string{"body with method GET", "POST or PUT"},
			json: up + `,"health":{"body":"hi"}`, jsonWant: []string{"health", "body with method GET", "POST or PUT"},
		},
		{
			name:  "health_request_body with HEAD",
			lines: []string{"health_method HEAD", "health_request_body hi"}, cfWant: []string{"body with method HEAD", "POST or PUT"},
			json: up + `,"health":{"method":"HEAD","body":"hi"}`, jsonWant: []string{"health", "body with method HEAD", "POST or PUT"},
		},
		{
			name:  "health_port 0",
			lines: []string{"health_port 0"}, cfWant: []string{"health_port", `"0"`, "from 1 to 65535"},
			json: up + `,"health":{"port":-1}`, jsonWant: []string{"health.port", "health_port", "-1", "from 1 to 65535", "0 for the default"},
		},
		{
			name:  "health_port above 65535",
			lines: []string{"health_port 65536"}, cfWant: []string{"health_port", `"65536"`, "from 1 to 65535"},
			json: up + `,"health":{"port":65536}`, jsonWant: []string{"health.port", "65536", "from 1 to 65535"},
		},
		{
			name:  "health_port not a number",
			lines: []string{"health_port http"}, cfWant: []string{"health_port", `"http"`, "from 1 to 65535"},
		},
		{
			name:  "health_body is reverse_proxy's expected body",
			lines: []string{"health_body ok"}, cfWant: []string{"health_body ok", "not checked by failover", "health_request_body"},
		},
		{
			name:  "dynamic upstreams",
			lines: []string{"dynamic a example.com 80"}, cfWant: []string{"dynamic a example.com 80", "not supported (yet)"},
			json:     up + `,"dynamic_upstreams":{"source":"a","name":"example.com","port":"80"}`,
			jsonWant: []string{"dynamic upstreams", "not supported (yet)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.True(t, tc.lines != nil || tc.json != "", "a case tests something")
			if tc.lines != nil {
				_, err := adaptFailoverBlock(t, tc.lines...)
				require.Error(t, err, "Caddyfile")
				t.Log("Caddyfile:", err)
				for _, w := range tc.cfWant {
					assert.Contains(t, err.Error(), w, "Caddyfile error")
				}
				assert.Contains(t, err.Error(), "Caddyfile:", "the error points at the Caddyfile")
			}
			if tc.json != "" {
				err := validateJSON(t, jsonConfig(tc.json))
				require.Error(t, err, "JSON")
				t.Log("JSON:", err)
				for _, w := range tc.jsonWant {
					assert.Contains(t, err.Error(), w, "JSON error")
				}
			}
		})
	}
}

// manyUpstreams is n JSON upstreams followed by a comma.
func manyUpstreams(n int) string {
	var b []byte
	for i := range n {
		b = fmt.Appendf(b, `{"dial":"127.0.0.1:%d"},`, 10000+i)
	}
	return string(b)
}

// A port range in a Caddyfile is expanded as reverse_proxy does, up to the
// pool bound; a wider one is an error naming the count and the bound.
func TestCaddyfileUpstreamRange(t *testing.T) {
	out, _, err := adaptCaddyfile(t, ":8080 {\n\tfailover 127.0.0.1:1-65535\n}\n")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "65535 upstreams")
	assert.Contains(t, err.Error(), "at most 4096")
	assert.Contains(t, err.Error(), "Caddyfile:2")
	assert.Nil(t, out)

	out, _, err = adaptCaddyfile(t, ":8080 {\n\tfailover 127.0.0.1:9001-9003\n}\n")
	require.NoError(t, err)
	assert.Contains(t, string(out), `"dial":"127.0.0.1:9003"`)
}

// The values at the bounds load, in JSON too.
func TestBoundsLoad(t *testing.T) {
	require.NoError(t, validateJSON(t, jsonConfig(`"upstreams":[{"dial":"127.0.0.1:9001"}],`+
		`"health":{"interval":"10ms","timeout":"1m","fails":100,"passes":100},"hold":"10m","max_held":64,`+
		`"request_buffers":16777216,"retries":1000,"restart_after":"1h","restart_timeout":"100ms",`+
		`"slow_start":"1h","max_restarting":4096,"retry_methods":["GET","PURGE"],"hedge":"1m"`)))
}
