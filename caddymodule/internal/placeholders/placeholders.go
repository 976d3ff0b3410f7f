// Package placeholders holds what the restarters and the built-in
// supervisor share about the placeholders that name a backend: {backend}
// (host:port), {host}, {port} and {index}.
package placeholders

import (
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Backend returns a replacer for one backend's placeholders: {backend}
// (its dial address, host:port), {host}, {port} and {index} (its position
// in the pool, from 0), plus Caddy's global placeholders such as
// {env.HOME}. An address without a port gives it all as {host} and an
// empty {port}.
func Backend(addr string, index int) *caddy.Replacer {
	repl := caddy.NewReplacer()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host, port = addr, ""
	}
	repl.Set("backend", addr)
	repl.Set("host", host)
	repl.Set("port", port)
	repl.Set("index", strconv.Itoa(index))
	return repl
}

// Unshorthand undoes what the Caddyfile adapter does to placeholders in a
// site block: it rewrites {host}, {port} and {hostport} to the request
// placeholders {http.request.host}, {http.request.port} and
// {http.request.hostport} before any directive sees them. Restarters and
// spawned processes run outside any request, so those mean the backend
// there: this turns them back into {host}, {port} and {backend}. Apply it to
// every value read from a Caddyfile; JSON configs are taken as written.
func Unshorthand(s string) string {
	if !strings.Contains(s, "{http.request.") {
		return s
	}
	return unshorthands.Replace(s)
}

var unshorthands = strings.NewReplacer(
	"{http.request.hostport}", "{backend}",
	"{http.request.host}", "{host}",
	"{http.request.port}", "{port}",
)
