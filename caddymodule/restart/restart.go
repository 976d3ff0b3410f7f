// Package restart holds the restarters of caddy-failover: Caddy modules in
// the namespace "failover.restarters" that ask a supervisor to restart one
// backend. Others can add their own by registering a module there that
// implements Restarter.
package restart

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

// Namespace is the Caddy module namespace of restarters.
const Namespace = "failover.restarters"

// Target is the backend to restart and why.
type Target struct {
	// Backend is the upstream's dial address, host:port.
	Backend string
	// Index is the backend's position in the pool, from 0.
	Index int
	// Reason is why it is restarted: "hang", "crash", "lease-expired", ...
	Reason string
	// Since is when the backend last answered as expected.
	Since time.Time
}

// Restarter asks whatever supervises a backend to restart it. Restart must
// return when the request is made (not when the backend is back), honour
// ctx, and return an error when the request failed: the engine retries with
// backoff, and a restart lease covers the wait for the backend to return.
type Restarter interface {
	Restart(ctx context.Context, t Target) error
}

// ExitWatcher is implemented by restarters whose supervisor restarts a
// process that exits on its own (systemd Restart=always, supervisord
// autorestart, runit, s6, the built-in spawn): a crashed backend then needs
// no restart request.
type ExitWatcher interface {
	RestartsOnExit() bool
}

// Replacer returns a replacer for the placeholders a restarter's settings
// may use: {backend} (host:port), {host}, {port}, {index} and {reason}, and
// Caddy's global placeholders such as {env.TOKEN}.
func Replacer(t Target) *caddy.Replacer {
	repl := placeholders.Backend(t.Backend, t.Index)
	repl.Set("reason", t.Reason)
	return repl
}

// ParseCaddyfile parses one restarter from a Caddyfile, with d positioned on
// the restarter's name, the token after "restart":
//
//	restart <name> [<args...>] [{
//		<subdirectives...>
//	}]
//
// It returns the restarter's JSON with its name under the inline key
// "restarter", ready for a field tagged
// `caddy:"namespace=failover.restarters inline_key=restarter"`. The
// dispenser is left on the restarter's last token (its closing brace when it
// has a block), as caddyfile.UnmarshalModule leaves it.
func ParseCaddyfile(d *caddyfile.Dispenser) (json.RawMessage, error) {
	name := d.Val()
	if name == "" || name == "{" {
		return nil, d.Errf("restart: missing restarter name (known: %s)", strings.Join(KnownRestarters(), ", "))
	}
	id := Namespace + "." + name
	if _, err := caddy.GetModule(id); err != nil {
		return nil, d.Errf("restart %s: unknown restarter %q (known: %s)", name, name, strings.Join(KnownRestarters(), ", "))
	}
	unm, err := caddyfile.UnmarshalModule(d, id)
	if err != nil {
		return nil, err
	}
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSONModuleObject(unm, "restarter", name, &warnings)
	if raw == nil {
		msg := "encoding failed"
		if len(warnings) > 0 {
			msg = warnings[0].Message
		}
		return nil, d.Errf("restart %s: %s", name, msg)
	}
	return raw, nil
}

// KnownRestarters returns the names of the registered restarter modules,
// sorted.
func KnownRestarters() []string {
	var names []string
	for _, m := range caddy.GetModules(Namespace) {
		names = append(names, m.ID.Name())
	}
	sort.Strings(names)
	return names
}

// restartTimeout is d, or def when d is not positive.
func restartTimeout(d caddy.Duration, def time.Duration) time.Duration {
	if d > 0 {
		return time.Duration(d)
	}
	return def
}

// parseTimeout reads the argument of a "timeout <duration>" subdirective.
func parseTimeout(d *caddyfile.Dispenser, restarter string) (caddy.Duration, error) {
	if !d.NextArg() {
		return 0, d.Errf("restart %s: timeout needs a duration", restarter)
	}
	v := d.Val()
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("restart %s: bad timeout %q: %v", restarter, v, err)
	}
	if dur <= 0 {
		return 0, d.Errf("restart %s: bad timeout %q: must be positive", restarter, v)
	}
	if d.NextArg() {
		return 0, d.Errf("restart %s: timeout takes one duration, got also %q", restarter, d.Val())
	}
	return caddy.Duration(dur), nil
}

// once fails when the current subdirective of a restarter's block was
// given before, unless it is one of multi, whose values add up.
func once(d *caddyfile.Dispenser, seen map[string]bool, restarter string, multi ...string) error {
	sub := d.Val()
	if seen[sub] && !slices.Contains(multi, sub) {
		return d.Errf("restart %s: %s already specified (give it once)", restarter, sub)
	}
	seen[sub] = true
	return nil
}

// noMoreArgs fails when the current line has one more argument.
func noMoreArgs(d *caddyfile.Dispenser, restarter, what string) error {
	if d.NextArg() {
		return d.Errf("restart %s: %s takes no further argument, got %q", restarter, what, d.Val())
	}
	return nil
}

// snippet is s made printable and cut to at most n bytes, for error
// messages that quote output from elsewhere.
func snippet(s string, n int) string {
	s = strings.TrimSpace(strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
