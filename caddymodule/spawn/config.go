package spawn

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

// Defaults and bounds.
const (
	// DefaultStopTimeout is how long a stopped group's processes get
	// between SIGTERM and SIGKILL.
	DefaultStopTimeout = 5 * time.Second

	// MaxBackends bounds the processes one spawn config may start.
	MaxBackends = 4096

	// loopback is the host of backends given as ports.
	loopback = "127.0.0.1"
)

// Config is the JSON of a failover handler's "spawn" field: the command
// that runs one backend, started once per backend.
//
// The command, its arguments, the values of env and dir may use the
// placeholders {port}, {host}, {backend} (host:port) and {index} (the
// backend's position, from 0), filled in per backend, and Caddy's global
// placeholders such as {env.HOME}. Placeholders that are not known are left
// as they are.
type Config struct {
	// The program and its arguments, run directly (no shell). A program
	// name without a slash is looked up in Caddy's PATH; a relative path
	// is relative to dir.
	Command []string `json:"command"`

	// One backend per port, listening on 127.0.0.1. Set either ports or
	// upstreams.
	Ports []int `json:"ports,omitempty"`

	// One backend per host:port address. Set either ports or upstreams.
	Upstreams []string `json:"upstreams,omitempty"`

	// Environment variables of the processes, on top of the base
	// environment (see pass_env), overriding variables of the same name.
	Env map[string]string `json:"env,omitempty"`

	// Variables of Caddy's own environment the processes get, on top of
	// the few every process gets (PATH, HOME, USER, LOGNAME, SHELL, LANG,
	// LC_ALL, TZ, TMPDIR, as systemd gives its services); ["*"] passes
	// Caddy's whole environment, secrets included. Default: none.
	PassEnv []string `json:"pass_env,omitempty"`

	// Working directory of the processes. Default: Caddy's.
	Dir string `json:"dir,omitempty"`

	// How long a process (and its process group) gets between SIGTERM and
	// SIGKILL when the group is stopped. Default 5s.
	StopTimeout caddy.Duration `json:"stop_timeout,omitempty"`
}

// Addrs returns the backends' dial addresses, host:port, in order: one per
// port on 127.0.0.1, or the upstreams as given.
func (c Config) Addrs() []string {
	if len(c.Ports) > 0 {
		addrs := make([]string, len(c.Ports))
		for i, p := range c.Ports {
			addrs[i] = net.JoinHostPort(loopback, strconv.Itoa(p))
		}
		return addrs
	}
	return append([]string(nil), c.Upstreams...)
}

func (c Config) stopTimeout() time.Duration {
	if c.StopTimeout > 0 {
		return time.Duration(c.StopTimeout)
	}
	return DefaultStopTimeout
}

// Validate reports what is wrong with the config, naming the value: every
// check of check, plus that dir exists and that the command can be found
// (unless they use placeholders, which are only known per backend).
func (c Config) Validate() error {
	if err := c.check(); err != nil {
		return err
	}
	dir := c.Dir
	if dir != "" && !strings.Contains(dir, "{") {
		fi, err := os.Stat(dir)
		switch {
		case err != nil:
			return fmt.Errorf("spawn dir %q: %w", dir, err)
		case !fi.IsDir():
			return fmt.Errorf("spawn dir %q: not a directory", dir)
		}
	}
	if prog := c.Command[0]; !strings.Contains(prog, "{") {
		path := prog
		if strings.ContainsRune(prog, '/') && !filepath.IsAbs(prog) && dir != "" && !strings.Contains(dir, "{") {
			path = filepath.Join(dir, prog) // as exec resolves it: relative to the working directory
		}
		if _, err := exec.LookPath(path); err != nil {
			return fmt.Errorf("spawn command %q: %w", prog, err)
		}
	}
	return nil
}

// check is Validate without looking at the file system.
func (c Config) check() error {
	if len(c.Command) == 0 || strings.TrimSpace(c.Command[0]) == "" {
		return errors.New("spawn: missing command")
	}
	switch {
	case len(c.Ports) > 0 && len(c.Upstreams) > 0:
		return fmt.Errorf("spawn: give either ports %v or upstreams %q, not both", c.Ports, c.Upstreams)
	case len(c.Ports) == 0 && len(c.Upstreams) == 0:
		return errors.New("spawn: no backends: give ports (ports <from>-<to>) or upstreams (to <host:port...>)")
	case len(c.Ports)+len(c.Upstreams) > MaxBackends:
		return fmt.Errorf("spawn: %d backends, more than %d", len(c.Ports)+len(c.Upstreams), MaxBackends)
	}
	for _, p := range c.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("spawn port %d: out of range 1-65535", p)
		}
	}
	for _, u := range c.Upstreams {
		host, port, err := net.SplitHostPort(u)
		if err != nil {
			return fmt.Errorf("spawn upstream %q: not host:port: %v", u, err)
		}
		if host == "" {
			return fmt.Errorf("spawn upstream %q: missing host", u)
		}
		if _, err := parsePort(port); err != nil {
			return fmt.Errorf("spawn upstream %q: %v", u, err)
		}
	}
	seen := make(map[string]bool)
	for _, a := range c.Addrs() {
		if seen[a] {
			return fmt.Errorf("spawn backend %s: listed twice (two processes cannot listen on one address)", a)
		}
		seen[a] = true
	}
	for k, v := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("spawn env %q: not a variable name", k)
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("spawn env %s: value contains a NUL byte", k)
		}
	}
	if err := checkPassEnv(c.PassEnv); err != nil {
		return err
	}
	if c.StopTimeout < 0 {
		return fmt.Errorf("spawn stop_timeout %v: must not be negative", time.Duration(c.StopTimeout))
	}
	return nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", n)
	}
	return n, nil
}

// parsePortRange parses "9001" or "9001-9004".
func parsePortRange(s string) (from, to int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if from, err = parsePort(a); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return from, from, nil
	}
	if to, err = parsePort(b); err != nil {
		return 0, 0, err
	}
	if from > to {
		return 0, 0, fmt.Errorf("the range is backwards (%d > %d)", from, to)
	}
	if to-from+1 > MaxBackends {
		return 0, 0, fmt.Errorf("%d ports, more than %d", to-from+1, MaxBackends)
	}
	return from, to, nil
}

// specs fills in the placeholders for every backend.
func (c Config) specs() []Spec {
	addrs := c.Addrs()
	base := c.baseEnv()
	specs := make([]Spec, len(addrs))
	for i, addr := range addrs {
		repl := placeholders.Backend(addr, i)
		s := Spec{Addr: addr, Index: i, Dir: repl.ReplaceKnown(c.Dir, ""), StopTimeout: c.stopTimeout()}
		s.Argv = make([]string, len(c.Command))
		for j, a := range c.Command {
			s.Argv[j] = repl.ReplaceKnown(a, "")
		}
		// exec.Cmd keeps the last of duplicate names: env wins, and the
		// orphan tag comes last so that nothing overrides it
		s.Env = slices.Clone(base)
		for _, k := range slices.Sorted(maps.Keys(c.Env)) {
			s.Env = append(s.Env, k+"="+repl.ReplaceKnown(c.Env[k], ""))
		}
		s.Env = append(s.Env, orphanTag())
		specs[i] = s
	}
	return specs
}
