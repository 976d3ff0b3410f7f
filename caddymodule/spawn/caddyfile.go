package spawn

import (
	"errors"
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

// UnmarshalCaddyfile sets up the config from Caddyfile tokens. The
// dispenser must be positioned on the "spawn" token:
//
//	spawn <command> [<args...>] {
//		ports <from>-<to>|<port>...
//		to <host:port|host:from-to...>
//		env <key> <value>
//		pass_env <names...>|*
//		dir <path>
//		stop_timeout <duration>
//	}
//
// ports and to may be repeated and add backends; exactly one of them must be
// used. {host}, {port} and {hostport} mean the backend's (see
// placeholders.Unshorthand). It checks everything but the file system (see
// Validate).
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextArg() {
		c.Command = append(c.Command, placeholders.Unshorthand(d.Val()))
	}
	if len(c.Command) == 0 {
		return d.Err("spawn: missing command (spawn <command> [<args...>] { ports <from>-<to> })")
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if (sub == "dir" || sub == "stop_timeout") && seen[sub] {
			return d.Errf("spawn %s: already specified (give it once)", sub)
		}
		seen[sub] = true
		switch sub {
		case "ports":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("spawn ports: expected a port range like 9001-9004, or ports")
			}
			for _, a := range args {
				from, to, err := parsePortRange(a)
				if err != nil {
					return d.Errf("spawn ports %q: %v", a, err)
				}
				for p := from; p <= to; p++ {
					c.Ports = append(c.Ports, p)
				}
			}
		case "to":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("spawn to: expected at least one upstream host:port")
			}
			for _, a := range args {
				addrs, err := expandUpstream(a)
				if err != nil {
					return d.Errf("spawn to %q: %v", a, err)
				}
				c.Upstreams = append(c.Upstreams, addrs...)
			}
		case "env":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("%s: expected a name and a value (env <key> <value>)", line("spawn env", args))
			}
			k, v := args[0], placeholders.Unshorthand(args[1])
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return d.Errf("spawn env %q: not a variable name", k)
			}
			if _, dup := c.Env[k]; dup {
				return d.Errf("spawn env %s: set twice", k)
			}
			if c.Env == nil {
				c.Env = make(map[string]string)
			}
			c.Env[k] = v
		case "pass_env":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("spawn pass_env: expected variable names, or * for Caddy's whole environment")
			}
			c.PassEnv = append(c.PassEnv, args...)
		case "dir":
			args := d.RemainingArgs()
			if len(args) != 1 {
				return d.Errf("%s: expected one path", line("spawn dir", args))
			}
			c.Dir = placeholders.Unshorthand(args[0])
		case "stop_timeout":
			args := d.RemainingArgs()
			if len(args) != 1 {
				return d.Errf("%s: expected one duration", line("spawn stop_timeout", args))
			}
			dur, err := caddy.ParseDuration(args[0])
			if err != nil || dur <= 0 {
				return d.Errf("spawn stop_timeout %q: not a positive duration", args[0])
			}
			c.StopTimeout = caddy.Duration(dur)
		default:
			return d.Errf("spawn: unknown subdirective %q (expected ports, to, env, pass_env, dir or stop_timeout)", sub)
		}
	}
	if err := c.check(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// line is a subdirective with its arguments, for errors.
func line(sub string, args []string) string {
	return strings.Join(append([]string{sub}, args...), " ")
}

// expandUpstream expands "host:port" or "host:from-to" into addresses.
func expandUpstream(s string) ([]string, error) {
	host, ports, err := net.SplitHostPort(s)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return nil, errMissingHost
	}
	from, to, err := parsePortRange(ports)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, 0, to-from+1)
	for p := from; p <= to; p++ {
		addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(p)))
	}
	return addrs, nil
}

var errMissingHost = errors.New("missing host (write 127.0.0.1:9001, not :9001)")
