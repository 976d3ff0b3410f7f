package caddymodule

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/crashonly/caddy-failover/caddymodule/restart"
	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
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
//		dynamic <source> [...]  # instead of upstreams: a, srv, multi, ...
//		name <name>
//		health_uri <path>
//		health_interval <duration>
//		health_timeout <duration>
//		health_fails <n>
//		health_passes <n>
//		health_status <code|2xx>
//		health_method <method>
//		health_headers {
//			<name> [<values...>]
//		}
//		health_request_body <body>
//		health_port <port>
//		hold <duration>
//		max_held <n>
//		retries <n>
//		retry_methods <methods...>
//		idempotency_key [generate]
//		hedge <duration|auto>
//		request_buffers <size>
//		spawn <command> [<args...>] { ... }
//		restart <restarter> ...
//		restart_after <duration>
//		restart_timeout <duration>
//		max_restarting <n>
//		restart_crashed [on|off]
//		cluster [on|off]
//		slow_start <duration>
//		# any other reverse_proxy subdirective
//	}
//
// failover's own subdirectives are taken out; everything else is handed to
// reverse_proxy's parser, so it reads exactly as it does there. Each of
// failover's own subdirectives may be given once, but for retry_methods,
// whose lists add up. Values are checked against the bounds in validate.go.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	head := []caddyfile.Token{d.Token()}
	for d.NextArg() {
		head = append(head, d.Token())
	}
	var rest []caddyfile.Token
	seen := make(map[string]bool)
	sawTo := false
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] && sub != "retry_methods" {
			return d.Errf("%s: already specified (give it once)", line(d))
		}
		own, err := h.unmarshalOwn(d)
		if err != nil {
			return err
		}
		if own {
			seen[sub] = true
			continue
		}
		if sub == "dynamic" {
			seen[sub] = true // reverse_proxy takes a second one silently
			if len(head) > 1 || sawTo {
				return d.Errf("%s: %v", line(d), errStaticAndDynamic)
			}
		}
		sawTo = sawTo || sub == "to"
		rest = append(rest, d.NextSegment()...)
	}
	toks := head
	if len(rest) > 0 {
		open, closing := head[0], head[0]
		open.Text, open.Line = "{", head[len(head)-1].Line
		closing.Text, closing.Line = "}", rest[len(rest)-1].Line+1
		toks = append(append(append(toks, open), rest...), closing)
	}
	if err := h.Handler.UnmarshalCaddyfile(caddyfile.NewDispenser(toks)); err != nil {
		return err
	}
	// what only the whole block tells
	hd := caddyfile.NewDispenser(head)
	hd.Next()
	if n := len(h.Upstreams); n > MaxUpstreams {
		return hd.Errf("%d upstreams: a pool may have at most %d (each gets heartbeats; is a port range too wide?)", n, MaxUpstreams)
	}
	if err := checkHeldBodies(h.MaxHeld, h.RequestBuffers); err != nil {
		return hd.Errf("%v", err)
	}
	if _, err := h.Health.engineConfig(); err != nil { // health_request_body with health_method
		return hd.Errf("%v", err)
	}
	if err := h.checkHealthPort(); err != nil {
		return hd.Errf("%v", err)
	}
	if h.DynamicUpstreamsRaw != nil {
		if len(h.Upstreams) > 0 { // 'to' after dynamic
			return hd.Errf("%v", errStaticAndDynamic)
		}
		if _, err := sourceRefresh(h.DynamicUpstreamsRaw); err != nil {
			return hd.Errf("%v", err)
		}
	}
	if h.Cluster != nil && *h.Cluster && h.RestartRaw == nil {
		return hd.Errf("cluster on: needs restart (spawned backends are each instance's own; without a restarter there are no restarts to share)")
	}
	return nil
}

// parseHealthHeaders reads health_headers' block, as reverse_proxy does:
// a line per header, its values after its name (none: one empty value).
func parseHealthHeaders(d *caddyfile.Dispenser) (http.Header, error) {
	if d.NextArg() {
		return nil, d.Errf("health_headers %q: takes a block, { <name> [<values...>] } per line", d.Val())
	}
	hdr := make(http.Header)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		values := d.RemainingArgs()
		if len(values) == 0 {
			values = []string{""}
		}
		hdr[name] = append(hdr[name], values...)
		if err := (healthcheck.Config{Headers: http.Header{name: hdr[name]}}).Validate(); err != nil {
			return nil, d.Errf("health_headers: %v", err)
		}
	}
	if len(hdr) == 0 {
		return nil, d.Errf("health_headers: expected a block with at least one header, { <name> [<values...>] } per line")
	}
	return hdr, nil
}

// line is the current subdirective with the rest of its line, for errors.
func line(d *caddyfile.Dispenser) string {
	return strings.Join(append([]string{d.Val()}, d.RemainingArgs()...), " ")
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
	case "name":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if err := checkName(v); err != nil {
			return true, d.Errf("name %q: %v", v, err)
		}
		h.Name = v
	case "health_uri":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if err := checkHealthURI(v); err != nil {
			return true, d.Errf("health_uri %q: %v", v, err)
		}
		health().URI = v
	case "health_interval", "health_timeout", "hold", "restart_after", "restart_timeout", "slow_start":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return true, d.Errf("%s %q: not a duration like 250ms or 2s: %v", sub, v, err)
		}
		if err := checkDuration(sub, dur); err != nil {
			return true, d.Errf("%s %q: %v", sub, v, err)
		}
		switch sub {
		case "health_interval":
			health().Interval = caddy.Duration(dur)
		case "health_timeout":
			health().Timeout = caddy.Duration(dur)
		case "hold":
			h.Hold = caddy.Duration(dur)
		case "restart_after":
			h.RestartAfter = caddy.Duration(dur)
		case "restart_timeout":
			h.RestartTimeout = caddy.Duration(dur)
		default:
			h.SlowStart = caddy.Duration(dur)
		}
	case "health_fails", "health_passes", "health_port", "retries", "max_held", "max_restarting":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		n, err := strconv.Atoi(v)
		if err == nil {
			err = checkCount(sub, n)
		} else {
			err = checkCount(sub, -1) // the same message: what is allowed
		}
		if err != nil {
			return true, d.Errf("%s %q: %v", sub, v, err)
		}
		switch sub {
		case "health_fails":
			health().Fails = n
		case "health_passes":
			health().Passes = n
		case "health_port":
			health().Port = n
		case "retries":
			h.Retries = &n
		case "max_restarting":
			h.MaxRestarting = n
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
	case "health_method":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		v = strings.ToUpper(v) // as retry_methods
		if err := (healthcheck.Config{Method: v}).Validate(); err != nil {
			return true, d.Errf("health_method: %v", err)
		}
		health().Method = v
	case "health_headers":
		hdr, err := parseHealthHeaders(d)
		if err != nil {
			return true, err
		}
		health().Headers = hdr
	case "health_request_body":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if len(v) > healthcheck.MaxBody {
			return true, d.Errf("health_request_body: %d bytes, at most %d (64KiB) allowed", len(v), healthcheck.MaxBody)
		}
		health().Body = v // with a method that carries it: checked at the end
	case "health_body":
		return true, d.Errf("%s: reverse_proxy's expected response body is not checked by failover (a heartbeat is judged by its status: health_status); to send a request body, use health_request_body", line(d))
	case "retry_methods":
		methods := d.RemainingArgs()
		if len(methods) == 0 {
			return true, d.Errf("retry_methods: expected at least one method, like GET PUT")
		}
		for _, m := range methods {
			if err := checkMethod(m); err != nil {
				return true, d.Errf("retry_methods %q: %v", m, err)
			}
			m = strings.ToUpper(m)
			if slices.Contains(h.RetryMethods, m) {
				return true, d.Errf("retry_methods %q: listed twice", m)
			}
			h.RetryMethods = append(h.RetryMethods, m)
		}
	case "hedge":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		if err := checkHedge(v); err != nil {
			return true, d.Errf("hedge %q: %v", v, err)
		}
		h.Hedge = v
	case "idempotency_key":
		h.IdempotencyKey = KeysHonor
		if d.NextArg() {
			if d.Val() != "generate" {
				return true, d.Errf("idempotency_key %q: want no argument (honour keys clients send) or generate", d.Val())
			}
			h.IdempotencyKey = KeysGenerate
		}
		if d.NextArg() {
			return true, d.Errf("idempotency_key %q: takes at most one argument, generate", d.Val())
		}
	case "request_buffers":
		v, err := oneArg(d)
		if err != nil {
			return true, err
		}
		size, err := parseSize(v)
		if err != nil {
			return true, d.Errf("request_buffers %q: %v; want a whole number of bytes from 1 to 16MiB, like 64KiB", v, err)
		}
		if err := checkRequestBuffers(size); err != nil {
			return true, d.Errf("request_buffers %q: %v", v, err)
		}
		h.RequestBuffers = size
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
	case "restart_crashed", "cluster":
		on := true
		if d.NextArg() {
			switch v := d.Val(); v {
			case "on", "true":
			case "off", "false":
				on = false
			default:
				return true, d.Errf("%s %q: expected on or off", sub, v)
			}
			if d.NextArg() {
				return true, d.Errf("%s %q: takes at most one argument, on or off", sub, d.Val())
			}
		}
		if sub == "cluster" {
			h.Cluster = &on
		} else {
			h.RestartCrashed = &on
		}
	case "lb_policy", "lb_retries", "lb_try_duration", "lb_try_interval", "lb_retry_match",
		"health_upstream", "health_follow_redirects", "health_path",
		"fail_duration", "max_fails", "unhealthy_status", "unhealthy_latency", "unhealthy_request_count":
		return true, d.Errf("%s: managed by failover, not available in a failover block (see retries, hold and the health_* subdirectives)", line(d))
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
