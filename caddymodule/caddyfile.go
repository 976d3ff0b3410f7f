package caddymodule

import (
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/crashonly/caddy-failover/caddymodule/restart"
	"github.com/crashonly/caddy-failover/caddymodule/spawn"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("failover", parseCaddyfile)
	// ordered like reverse_proxy, so that no 'order' line is needed
	httpcaddyfile.RegisterDirectiveOrder("failover", httpcaddyfile.After, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	f := new(Handler)
	if err := f.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if err := f.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	return f, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	failover [<upstreams...>] {
//		to <upstreams...>
//		health_uri <path>
//		health_interval <duration>
//		health_timeout <duration>
//		health_fails <n>
//		health_passes <n>
//		health_status <code|2xx>
//		hold <duration>
//		max_held <n>
//		retries <n>
//		retry_methods <methods...>
//		idempotency_key
//		request_buffers <size>
//		# any other reverse_proxy subdirective
//	}
//
// failover's own subdirectives are taken out; everything else is handed to
// reverse_proxy's parser, so it reads exactly as it does there.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	head := []caddyfile.Token{d.Token()}
	for d.NextArg() {
		head = append(head, d.Token())
	}
	var rest []caddyfile.Token
	for d.NextBlock(0) {
		own, err := h.unmarshalOwn(d)
		if err != nil {
			return err
		}
		if !own {
			rest = append(rest, d.NextSegment()...)
		}
	}
	toks := head
	if len(rest) > 0 {
		open, closing := head[0], head[0]
		open.Text, open.Line = "{", head[len(head)-1].Line
		closing.Text, closing.Line = "}", rest[len(rest)-1].Line+1
		toks = append(append(append(toks, open), rest...), closing)
	}
	return h.Handler.UnmarshalCaddyfile(caddyfile.NewDispenser(toks))
}

// unmarshalOwn parses one of failover's own subdirectives, reporting false
// when the subdirective is reverse_proxy's.
func (h *Handler) unmarshalOwn(d *caddyfile.Dispenser) (bool, error) {
	sub := d.Val()
	health := func() *HealthConfig {
		if h.Health == nil {
			h.Health = new(HealthConfig)
		}
		return h.Health
	}
	switch sub {
	case "health_uri":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if !strings.HasPrefix(v, "/") {
			return true, d.Errf("health_uri %q: must be a path starting with /", v)
		}
		health().URI = v
	case "health_interval", "health_timeout", "hold":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return true, d.Errf("%s %q: not a duration: %v", sub, v, err)
		}
		if dur <= 0 {
			return true, d.Errf("%s %q: must be a positive duration", sub, v)
		}
		switch sub {
		case "health_interval":
			health().Interval = caddy.Duration(dur)
		case "health_timeout":
			health().Timeout = caddy.Duration(dur)
		default:
			h.Hold = caddy.Duration(dur)
		}
	case "health_fails", "health_passes", "retries", "max_held":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		least := 1
		if sub == "retries" {
			least = 0
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < least {
			return true, d.Errf("%s %q: must be a whole number of %d or more", sub, v, least)
		}
		switch sub {
		case "health_fails":
			health().Fails = n
		case "health_passes":
			health().Passes = n
		case "retries":
			h.Retries = &n
		default:
			h.MaxHeld = n
		}
	case "health_status":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if _, _, err := parseStatus(v); err != nil {
			return true, d.Errf("health_status %q: %v", v, err)
		}
		health().Status = v
	case "retry_methods":
		methods := d.RemainingArgs()
		if len(methods) == 0 {
			return true, d.Errf("retry_methods: expected at least one method")
		}
		for _, m := range methods {
			if !isToken(m) {
				return true, d.Errf("retry_methods %q: not an HTTP method", m)
			}
			h.RetryMethods = append(h.RetryMethods, strings.ToUpper(m))
		}
	case "idempotency_key":
		if d.NextArg() {
			return true, d.Errf("idempotency_key %q: takes no arguments", d.Val())
		}
		h.IdempotencyKey = true
	case "request_buffers":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		size, err := humanize.ParseBytes(v)
		if err != nil || size == 0 || size > math.MaxInt64 {
			return true, d.Errf("request_buffers %q: not a size like 64KiB or 1MB", v)
		}
		h.RequestBuffers = int64(size)
	case "restart":
		if !d.NextArg() {
			return true, d.Errf("restart: expected a restarter name (known: %s)", strings.Join(restart.KnownRestarters(), ", "))
		}
		raw, err := restart.ParseCaddyfile(d)
		if err != nil {
			return true, err
		}
		h.RestartRaw = raw
	case "spawn":
		h.Spawn = new(spawn.Config)
		if err := h.Spawn.UnmarshalCaddyfile(d); err != nil {
			return true, err
		}
	case "restart_after", "restart_timeout", "slow_start":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil || dur <= 0 {
			return true, d.Errf("%s %q: must be a positive duration", sub, v)
		}
		switch sub {
		case "restart_after":
			h.RestartAfter = caddy.Duration(dur)
		case "restart_timeout":
			h.RestartTimeout = caddy.Duration(dur)
		default:
			h.SlowStart = caddy.Duration(dur)
		}
	case "max_restarting":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return true, d.Errf("max_restarting %q: must be a whole number of 1 or more", v)
		}
		h.MaxRestarting = n
	case "restart_crashed":
		on := true
		if d.NextArg() {
			switch v := d.Val(); v {
			case "on", "true":
			case "off", "false":
				on = false
			default:
				return true, d.Errf("restart_crashed %q: expected on or off", v)
			}
		}
		h.RestartCrashed = &on
	case "lb_policy", "lb_retries", "lb_try_duration", "lb_try_interval", "lb_retry_match",
		"health_port", "health_upstream", "health_headers", "health_method", "health_request_body",
		"health_body", "health_follow_redirects", "health_path",
		"fail_duration", "max_fails", "unhealthy_status", "unhealthy_latency", "unhealthy_request_count",
		"dynamic":
		return true, d.Errf("%s: managed by failover, not available in a failover block (see retries, hold and the health_* subdirectives)",
			strings.Join(append([]string{sub}, d.RemainingArgs()...), " "))
	default:
		return false, nil
	}
	return true, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	sub := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: expected one argument", sub)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: expected one argument, got another: %q", sub, d.Val())
	}
	return v, nil
}

// isToken reports whether s is an RFC 9110 token, as methods are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c > 127 || c <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", c) {
			return false
		}
	}
	return true
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
