package caddymodule

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dustin/go-humanize"

	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

// Bounds of failover's settings. A JSON zero means the default; the
// Caddyfile takes only values within the bounds. Each check names the
// setting, the value and what is allowed.
const (
	MinHealthInterval = 10 * time.Millisecond
	MaxHealthInterval = time.Hour
	MinHealthTimeout  = 10 * time.Millisecond
	MaxHealthTimeout  = time.Minute
	// MaxHealthCount bounds health_fails and health_passes.
	MaxHealthCount = 100

	MinHold    = time.Millisecond
	MaxHold    = 10 * time.Minute
	MaxMaxHeld = 100_000
	MaxRetries = 1000

	// MaxRequestBuffers is the largest request body kept for replay.
	MaxRequestBuffers = 16 << 20
	// MaxHeldBodies bounds max_held × request_buffers: the memory that
	// request bodies kept for replay may take at once.
	MaxHeldBodies = 1 << 30

	MinRestartAfter   = 10 * time.Millisecond
	MaxRestartAfter   = time.Hour
	MinRestartTimeout = 100 * time.Millisecond
	MaxRestartTimeout = time.Hour
	MinSlowStart      = 100 * time.Millisecond
	MaxSlowStart      = time.Hour
	MinHedge          = time.Millisecond
	MaxHedge          = time.Minute

	// Bounds of a dynamic source's refresh: how often failover looks it up.
	MinLookupRefresh = 100 * time.Millisecond
	MaxLookupRefresh = 24 * time.Hour

	// MaxUpstreams bounds a pool: every backend gets heartbeats several
	// times a second. It is also what max_restarting may be at most.
	MaxUpstreams = spawn.MaxBackends
)

// durationBounds are the duration settings by subdirective: bounds, the
// default (0: off) and the JSON field.
var durationBounds = map[string]struct {
	min, max, def time.Duration
	json          string
}{
	"health_interval": {MinHealthInterval, MaxHealthInterval, healthcheck.DefaultInterval, "health.interval"},
	"health_timeout":  {MinHealthTimeout, MaxHealthTimeout, healthcheck.DefaultTimeout, "health.timeout"},
	"hold":            {MinHold, MaxHold, DefaultHold, "hold"},
	"restart_after":   {MinRestartAfter, MaxRestartAfter, time.Second, "restart_after"},
	"restart_timeout": {MinRestartTimeout, MaxRestartTimeout, 30 * time.Second, "restart_timeout"},
	"slow_start":      {MinSlowStart, MaxSlowStart, 0, "slow_start"},
	"hedge":           {MinHedge, MaxHedge, 0, "hedge"},
}

// countBounds are the whole-number settings by subdirective.
var countBounds = map[string]struct {
	min, max int
	json     string
}{
	"health_fails":   {1, MaxHealthCount, "health.fails"},
	"health_passes":  {1, MaxHealthCount, "health.passes"},
	"max_held":       {1, MaxMaxHeld, "max_held"},
	"retries":        {0, MaxRetries, "retries"},
	"max_restarting": {1, MaxUpstreams, "max_restarting"},
	"health_port":    {1, 65535, "health.port"},
}

// checkDuration checks a positive duration setting against its bounds; the
// message is what is allowed.
func checkDuration(sub string, d time.Duration) error {
	b := durationBounds[sub]
	if d < b.min || d > b.max {
		return fmt.Errorf("must be a duration from %s to %s", fmtDuration(b.min), fmtDuration(b.max))
	}
	return nil
}

// checkCount checks a whole-number setting against its bounds.
func checkCount(sub string, n int) error {
	b := countBounds[sub]
	if n < b.min || n > b.max {
		return fmt.Errorf("must be a whole number from %d to %d", b.min, b.max)
	}
	return nil
}

// fmtDuration writes 1h rather than 1h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// jsonName is how a JSON error names a setting: the JSON field, and the
// Caddyfile subdirective when it is spelled otherwise.
func jsonName(field, sub string) string {
	if field == sub {
		return sub
	}
	return field + " (" + sub + ")"
}

// validateDuration checks a JSON duration: 0 is the default.
func validateDuration(sub string, d caddy.Duration) error {
	if d == 0 {
		return nil
	}
	if err := checkDuration(sub, time.Duration(d)); err != nil {
		b := durationBounds[sub]
		def := "0 for the default " + fmtDuration(b.def)
		if b.def == 0 {
			def = "0 for off"
		}
		return fmt.Errorf("failover: %s %v: %v, or %s", jsonName(b.json, sub), time.Duration(d), err, def)
	}
	return nil
}

// validateCount checks a JSON whole number; 0 is the default when zero is
// not allowed.
func validateCount(sub string, n int, zeroIsDefault bool) error {
	if n == 0 && zeroIsDefault {
		return nil
	}
	if err := checkCount(sub, n); err != nil {
		b := countBounds[sub]
		if zeroIsDefault {
			return fmt.Errorf("failover: %s %d: %v, or 0 for the default", jsonName(b.json, sub), n, err)
		}
		return fmt.Errorf("failover: %s %d: %v", jsonName(b.json, sub), n, err)
	}
	return nil
}

// checkRequestBuffers checks a request_buffers size in bytes.
func checkRequestBuffers(n int64) error {
	if n < 1 || n > MaxRequestBuffers {
		return fmt.Errorf("must be a whole number of bytes from 1 to %d (16MiB)", MaxRequestBuffers)
	}
	return nil
}

// parseSize reads a size like 64KiB, 1MB or 4096 as a whole number of
// bytes. Unlike humanize.ParseBytes, which it uses for the units, it
// refuses sizes that are not a whole number of bytes (1.5 is not 1).
func parseSize(s string) (int64, error) {
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	if num == "" || strings.Count(num, ".") > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, fmt.Errorf("not a size like 64KiB, 1MB or 4096")
	}
	mult := uint64(1)
	if unit != "" {
		var err error
		if mult, err = humanize.ParseBytes("1" + unit); err != nil || mult == 0 {
			return 0, fmt.Errorf("unknown unit %q (use B, KB, KiB, MB, MiB)", unit)
		}
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("not a size like 64KiB, 1MB or 4096")
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).SetUint64(mult)))
	if !r.IsInt() {
		return 0, fmt.Errorf("not a whole number of bytes (%s bytes)", r.FloatString(3))
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("too large")
	}
	return r.Num().Int64(), nil
}

// checkHeldBodies checks max_held × request_buffers, defaults applied.
func checkHeldBodies(maxHeld int, buffers int64) error {
	what := func(v int64, isDefault bool) string {
		if isDefault {
			return fmt.Sprintf("%d (the default)", v)
		}
		return fmt.Sprint(v)
	}
	held, buf := int64(maxHeld), buffers
	if held == 0 {
		held = DefaultMaxHeld
	}
	if buf == 0 {
		buf = DefaultRequestBuffers
	}
	if held > 0 && buf > 0 && held*buf > MaxHeldBodies {
		return fmt.Errorf("max_held %s × request_buffers %s = %s: the bodies of held requests may take at most 1GiB together; lower max_held or request_buffers",
			what(held, maxHeld == 0), what(buf, buffers == 0), humanize.IBytes(uint64(held*buf)))
	}
	return nil
}

// checkHedge checks a hedge setting: auto, or a duration within bounds.
func checkHedge(v string) error {
	if v == hedgeAuto {
		return nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("not auto nor a duration like 50ms")
	}
	if err := checkDuration("hedge", d); err != nil {
		return fmt.Errorf("%v, or auto", err)
	}
	return nil
}

// checkHealthURI checks a heartbeat path.
func checkHealthURI(uri string) error {
	if !strings.HasPrefix(uri, "/") {
		return fmt.Errorf("must be a path starting with /")
	}
	for _, c := range uri {
		if c < ' ' || c == 0x7f {
			return fmt.Errorf("must not contain control characters")
		}
		if c == ' ' {
			return fmt.Errorf("must not contain spaces (write %%20)")
		}
	}
	return nil
}

// checkMethod checks one retry method.
func checkMethod(m string) error {
	if !isToken(m) {
		return fmt.Errorf("not an HTTP method: methods are RFC 9110 tokens like GET or PURGE")
	}
	return nil
}

// validate checks failover's own settings, as they come from JSON.
func (h *Handler) validate() error {
	if h.Name != "" {
		if err := checkName(h.Name); err != nil {
			return fmt.Errorf("failover: name %q: %v", h.Name, err)
		}
	}
	if h.Retries != nil {
		if err := validateCount("retries", *h.Retries, false); err != nil {
			return err
		}
	}
	if h.IdempotencyKey > KeysGenerate {
		return fmt.Errorf("failover: idempotency_key %d: want false, true or \"generate\"", h.IdempotencyKey)
	}
	if err := validateCount("max_held", h.MaxHeld, true); err != nil {
		return err
	}
	if err := validateCount("max_restarting", h.MaxRestarting, true); err != nil {
		return err
	}
	for sub, d := range map[string]caddy.Duration{
		"hold":            h.Hold,
		"restart_after":   h.RestartAfter,
		"restart_timeout": h.RestartTimeout,
		"slow_start":      h.SlowStart,
	} {
		if err := validateDuration(sub, d); err != nil {
			return err
		}
	}
	if h.Hedge != "" {
		if err := checkHedge(h.Hedge); err != nil {
			return fmt.Errorf("failover: hedge %q: %v, or empty for off", h.Hedge, err)
		}
	}
	if h.RequestBuffers != 0 {
		if err := checkRequestBuffers(h.RequestBuffers); err != nil {
			return fmt.Errorf("failover: request_buffers %d: %v (unlimited buffering is not allowed: held bodies must be bounded), or 0 for the default 64KiB", h.RequestBuffers, err)
		}
	}
	if err := checkHeldBodies(h.MaxHeld, h.RequestBuffers); err != nil {
		return fmt.Errorf("failover: %v", err)
	}
	seen := make(map[string]bool, len(h.RetryMethods))
	for _, m := range h.RetryMethods {
		if err := checkMethod(m); err != nil {
			return fmt.Errorf("failover: retry_methods %q: %v", m, err)
		}
		if strings.ToUpper(m) != m {
			return fmt.Errorf("failover: retry_methods %q: methods are case-sensitive; write %q", m, strings.ToUpper(m))
		}
		if seen[m] {
			return fmt.Errorf("failover: retry_methods %q: listed twice", m)
		}
		seen[m] = true
	}
	if c := h.Health; c != nil {
		if c.URI != "" {
			if err := checkHealthURI(c.URI); err != nil {
				return fmt.Errorf("failover: %s %q: %v", jsonName("health.uri", "health_uri"), c.URI, err)
			}
		}
		if err := validateDuration("health_interval", c.Interval); err != nil {
			return err
		}
		if err := validateDuration("health_timeout", c.Timeout); err != nil {
			return err
		}
		if err := validateCount("health_fails", c.Fails, true); err != nil {
			return err
		}
		if err := validateCount("health_passes", c.Passes, true); err != nil {
			return err
		}
		if err := validateCount("health_port", c.Port, true); err != nil {
			return err
		}
	}
	if err := h.validateRestarts(); err != nil {
		return err
	}
	if h.DynamicUpstreamsRaw != nil {
		if _, err := sourceRefresh(h.DynamicUpstreamsRaw); err != nil {
			return fmt.Errorf("failover: %v", err)
		}
	}
	_, err := h.Health.engineConfig()
	return err
}

var errStaticAndDynamic = errors.New("upstreams and dynamic upstreams: give one or the other (a failed lookup keeps the last members; there is no fallback to static upstreams)")

// checkUpstreams refuses reverse_proxy settings that failover owns, so
// that a user never believes a setting works that is silently replaced,
// and upstreams that are not one static TCP address each.
func (h *Handler) checkUpstreams() error {
	dynamic := h.DynamicUpstreamsRaw != nil
	switch {
	case dynamic && h.Spawn != nil:
		return fmt.Errorf("failover: dynamic upstreams with spawn: spawn gives the upstreams; use one or the other")
	case dynamic && len(h.Upstreams) > 0:
		return fmt.Errorf("failover: %v", errStaticAndDynamic)
	case !dynamic && len(h.Upstreams) == 0:
		return fmt.Errorf("failover: no upstreams: give them as arguments, with 'to', or with 'dynamic'")
	case len(h.Upstreams) > MaxUpstreams:
		return fmt.Errorf("failover: %d upstreams: a pool may have at most %d (each gets heartbeats)", len(h.Upstreams), MaxUpstreams)
	case h.LoadBalancing != nil:
		return fmt.Errorf("failover: load balancing (lb_*) is managed by failover; use retries, retry_methods, idempotency_key and hold")
	case h.HealthChecks != nil:
		return fmt.Errorf("failover: reverse_proxy health checks are replaced by failover's own; use health (health_uri, health_interval, health_timeout, health_fails, health_passes, health_status, health_method, health_headers, health_request_body, health_port)")
	}
	for _, u := range h.Upstreams {
		if u == nil {
			return fmt.Errorf("failover: upstreams: null is not an upstream; want {\"dial\": \"host:port\"}")
		}
		if err := checkDial(u.Dial); err != nil {
			return fmt.Errorf("failover: upstream %q: %v", u.Dial, err)
		}
	}
	return h.checkHealthPort()
}

// checkHealthPort refuses health_port with a unix socket upstream: it has
// no port to replace.
func (h *Handler) checkHealthPort() error {
	if h.Health == nil || h.Health.Port == 0 {
		return nil
	}
	for _, u := range h.Upstreams {
		if na, err := caddy.ParseNetworkAddress(u.Dial); err == nil && na.IsUnixNetwork() {
			return fmt.Errorf("failover: upstream %q: a unix socket has no port to replace with health.port (health_port) %d; give the unix socket upstreams a failover of their own", u.Dial, h.Health.Port)
		}
	}
	return nil
}

// checkDial checks that an upstream's dial address is one TCP host:port,
// or a unix socket (unix//path, as reverse_proxy writes it).
func checkDial(dial string) error {
	if strings.Contains(dial, "{") {
		return fmt.Errorf("placeholders are not supported in upstream addresses")
	}
	na, err := caddy.ParseNetworkAddress(dial)
	if err != nil {
		return err
	}
	if na.Network == "unix" {
		if na.Host == "" {
			return fmt.Errorf("a unix socket without a path: want unix//path/to/app.sock")
		}
		return nil
	}
	if na.Network != "tcp" {
		return fmt.Errorf("network %s: only TCP and unix socket upstreams are supported (want host:port or unix//path/to/app.sock)", na.Network)
	}
	if _, after, ok := strings.Cut(dial, "/"); ok {
		dial = after // tcp/host:port
	}
	_, port, err := net.SplitHostPort(dial)
	switch {
	case err != nil || port == "":
		return fmt.Errorf("missing port: want one host:port")
	case na.PortRangeSize() != 1:
		return fmt.Errorf("a port range where one address is meant: want one host:port per upstream (the Caddyfile expands ranges)")
	case na.StartPort == 0:
		return fmt.Errorf("port 0: want a port from 1 to 65535")
	}
	return nil
}

// checkName checks a pool name: it goes into metric labels and admin API
// paths, so printable, no white space, and short.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("must not be empty")
	case len(name) > 128:
		return fmt.Errorf("%d characters, more than 128", len(name))
	case strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("must not contain white space or control characters")
	}
	return nil
}
