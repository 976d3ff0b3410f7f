package placeholders

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestUnshorthand(t *testing.T) {
	assert.Equal(t, "{backend} {host}:{port} {index} {http.request.uri}",
		Unshorthand("{http.request.hostport} {http.request.host}:{http.request.port} {index} {http.request.uri}"))
	assert.Equal(t, "plain", Unshorthand("plain"))
}

func TestBackend(t *testing.T) {
	t.Setenv("PLACEHOLDERS_TEST", "x")
	repl := Backend("127.0.0.1:9001", 2)
	assert.Equal(t, "127.0.0.1:9001 127.0.0.1 9001 2 x {unknown}",
		repl.ReplaceKnown("{backend} {host} {port} {index} {env.PLACEHOLDERS_TEST} {unknown}", ""))

	repl = Backend("[::1]:80", 0)
	assert.Equal(t, "[::1]:80 ::1 80", repl.ReplaceKnown("{backend} {host} {port}", ""))

	repl = Backend("no-port", 1)
	assert.Equal(t, "no-port no-port  1", repl.ReplaceKnown("{backend} {host} {port} {index}", ""))
}
