package caddymodule

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The README's example: its Caddyfile adapts to exactly its first JSON
// block (the handler as 'caddy adapt' prints it), and its JSON with the
// defaults written out loads.
func TestREADMEExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	blocks := regexp.MustCompile("(?s)```(caddyfile|json)\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	var caddyfile string
	var handlers []string
	for _, m := range blocks {
		switch {
		case m[1] == "caddyfile" && strings.Contains(m[2], "default_bind") && strings.Contains(m[2], "failover 127.0.0.1:9001"):
			caddyfile = m[2]
		case m[1] == "json" && strings.Contains(m[2], `"handler": "failover"`):
			handlers = append(handlers, m[2])
		}
	}
	require.NotEmpty(t, caddyfile, "the README's example Caddyfile")
	require.Len(t, handlers, 2, "the README's JSON: as adapted, and with the defaults")

	out, _, err := adaptCaddyfile(t, caddyfile)
	require.NoError(t, err)
	got := failoverHandlers(t, out)
	require.Len(t, got, 1)
	want := strings.Replace(handlers[0], `"handler": "failover",`, "", 1)
	assert.JSONEq(t, want, string(got[0]), "README: the JSON block is what the Caddyfile adapts to")

	fields := strings.TrimSuffix(strings.TrimSpace(handlers[1]), "}")
	fields = strings.Replace(strings.TrimPrefix(fields, "{"), `"handler": "failover",`, "", 1)
	require.NoError(t, validateJSON(t, jsonConfig(fields)), "README: the JSON with defaults loads")
}
