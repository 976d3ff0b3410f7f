package restart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

func init() {
	caddy.RegisterModule(new(Supervisord))
}

// defaultSupervisordTimeout bounds a supervisord restart unless configured.
const defaultSupervisordTimeout = 10 * time.Second

// supervisordPoll is how often Restart asks supervisord whether the killed
// process is gone.
const supervisordPoll = 20 * time.Millisecond

// supervisord's fault codes (supervisor/xmlrpc.py, class Faults)
const (
	faultBadName        = 10
	faultAlreadyStarted = 60
	faultNotRunning     = 70
)

// Supervisord restarts a backend through supervisord's XML-RPC interface,
// over its unix socket ([unix_http_server]) or its HTTP port
// ([inet_http_server]); supervisord needs the [rpcinterface:supervisor]
// section, as its default config has.
//
// supervisord has no restart call ("supervisorctl restart" is stop, then
// start), and stopProcess is no good for a hung process: it sends the
// program's stopsignal (TERM), which a stopped or wedged process does not
// act on, and waits stopwaitsecs (10s by default) before it kills. So a
// restart is:
//
//  1. supervisor.getProcessInfo(name): the process must exist;
//  2. if it is RUNNING, STARTING or STOPPING, supervisor.signalProcess(name,
//     "KILL"): a SIGKILL works on a stopped (SIGSTOP) or hung process at
//     once;
//  3. getProcessInfo until supervisord has reaped that pid (milliseconds);
//  4. if supervisord has not started it again by itself (autorestart=false,
//     or it is STOPPED, EXITED or FATAL), supervisor.startProcess(name,
//     false), which returns without waiting for startsecs.
//
// With autorestart=unexpected (the default) or true, supervisord restarts
// the killed process itself, and step 4 finds it STARTING or RUNNING; a
// startProcess racing with that is answered ALREADY_STARTED, which is
// fine. Faults NOT_RUNNING and ALREADY_STARTED count as success; BAD_NAME
// and the others are errors. signalProcess signals only the program's main
// process; its children are left to the program's own handling.
//
// supervisord restarts processes that exit (autorestart), so this restarter
// reports RestartsOnExit.
type Supervisord struct {
	// Address of supervisord: the path of its unix socket (absolute or
	// relative, or as unix:///path), or the http:// or https:// URL of its
	// inet_http_server; a URL without a path gets /RPC2.
	Address string `json:"address"`

	// Process is the name of the backend's program in supervisord,
	// "name" or "group:name". May use the placeholders {backend}
	// (host:port), {host}, {port} and {index}.
	Process string `json:"process"`

	// Username for supervisord's HTTP basic authentication, if it has one.
	Username string `json:"username,omitempty"`

	// Password for supervisord's HTTP basic authentication.
	Password string `json:"password,omitempty"`

	// Timeout of the whole restart, all calls included. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	client *http.Client
	url    string
}

// CaddyModule returns the Caddy module information.
func (*Supervisord) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  Namespace + ".supervisord",
		New: func() caddy.Module { return new(Supervisord) },
	}
}

// Provision makes the XML-RPC client.
func (s *Supervisord) Provision(caddy.Context) error {
	rpcURL, socket, err := parseSupervisordAddress(s.Address)
	if err != nil {
		return err
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: defaultSupervisordTimeout,
		// restarts are rare, and supervisord restarts too: no stale
		// connections
		DisableKeepAlives: true,
	}
	if socket != "" {
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}
	}
	s.client = &http.Client{Transport: tr}
	s.url = rpcURL
	return nil
}

// Validate checks the address and the process name.
func (s *Supervisord) Validate() error {
	return s.validate()
}

func (s *Supervisord) validate() error {
	if _, _, err := parseSupervisordAddress(s.Address); err != nil {
		return err
	}
	if strings.TrimSpace(s.Process) == "" {
		return errors.New("restart supervisord: missing process name")
	}
	if s.Password != "" && s.Username == "" {
		return errors.New("restart supervisord: password without username")
	}
	if s.Timeout < 0 {
		return fmt.Errorf("restart supervisord: bad timeout %v", time.Duration(s.Timeout))
	}
	return nil
}

// parseSupervisordAddress returns the URL to post XML-RPC calls to and,
// for a unix socket, the socket's path.
func parseSupervisordAddress(addr string) (rpcURL, socket string, err error) {
	switch {
	case addr == "":
		return "", "", errors.New("restart supervisord: missing address (a unix socket path or an http URL)")
	case strings.HasPrefix(addr, "unix://"):
		socket = strings.TrimPrefix(addr, "unix://")
		if socket == "" {
			return "", "", fmt.Errorf("restart supervisord: bad address %q: no socket path", addr)
		}
		return "http://supervisord/RPC2", socket, nil
	case strings.Contains(addr, "://"):
		u, err := url.Parse(addr)
		if err != nil {
			return "", "", fmt.Errorf("restart supervisord: bad address %q: %v", addr, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return "", "", fmt.Errorf("restart supervisord: bad address %q: want a socket path or http://host:port", addr)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/RPC2"
		}
		return u.String(), "", nil
	}
	return "http://supervisord/RPC2", addr, nil
}

// Restart kills the process through supervisord and makes sure that
// supervisord starts it again.
func (s *Supervisord) Restart(ctx context.Context, t Target) error {
	name := Replacer(t).ReplaceKnown(s.Process, "")
	timeout := restartTimeout(s.Timeout, defaultSupervisordTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := s.restart(rctx, name)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("supervisord restart of %s (process %q at %s): timed out after %v: %w", t.Backend, name, s.Address, timeout, err)
	}
	return fmt.Errorf("supervisord restart of %s (process %q at %s): %w", t.Backend, name, s.Address, err)
}

func (s *Supervisord) restart(ctx context.Context, name string) error {
	info, err := s.processInfo(ctx, name)
	if err != nil {
		return err
	}
	old := info.pid
	switch info.state {
	case "RUNNING", "STARTING", "STOPPING":
		_, err := s.call(ctx, "supervisor.signalProcess", name, "KILL")
		if err != nil && faultCode(err) != faultNotRunning {
			return fmt.Errorf("signalProcess KILL: %w", err)
		}
	}
	// wait for supervisord to reap the killed process
	for old != 0 && info.pid == old {
		t := time.NewTimer(supervisordPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("pid %d still there after KILL: %w", old, ctx.Err())
		case <-t.C:
		}
		if info, err = s.processInfo(ctx, name); err != nil {
			return err
		}
	}
	switch info.state {
	case "RUNNING", "STARTING", "BACKOFF":
		return nil // supervisord restarted it, or is retrying
	}
	// STOPPED, EXITED, FATAL: supervisord leaves it down
	if _, err := s.call(ctx, "supervisor.startProcess", name, false); err != nil && faultCode(err) != faultAlreadyStarted {
		return fmt.Errorf("startProcess (process was %s): %w", info.state, err)
	}
	return nil
}

// processInfo is what Restart needs of supervisor.getProcessInfo.
type processInfo struct {
	state string // statename: RUNNING, STOPPED, ...
	pid   int
}

func (s *Supervisord) processInfo(ctx context.Context, name string) (processInfo, error) {
	v, err := s.call(ctx, "supervisor.getProcessInfo", name)
	if err != nil {
		if faultCode(err) == faultBadName {
			return processInfo{}, fmt.Errorf("supervisord has no process named %q (use \"name\" or \"group:name\"): %w", name, err)
		}
		return processInfo{}, fmt.Errorf("getProcessInfo: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return processInfo{}, fmt.Errorf("getProcessInfo: answer is %T, not a struct", v)
	}
	state, _ := m["statename"].(string)
	pid, _ := m["pid"].(int64)
	if state == "" {
		return processInfo{}, errors.New("getProcessInfo: answer has no statename")
	}
	return processInfo{state: state, pid: int(pid)}, nil
}

// call makes one XML-RPC call to supervisord.
func (s *Supervisord) call(ctx context.Context, method string, params ...any) (any, error) {
	if s.client == nil {
		return nil, errors.New("supervisord restarter not provisioned")
	}
	body, err := encodeCall(method, params...)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/xml")
	req.Header.Set("User-Agent", "caddy-failover")
	if s.Username != "" {
		req.SetBasicAuth(s.Username, s.Password)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized && s.Username == "":
		return nil, fmt.Errorf("%s: supervisord wants a username and password", resp.Status)
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("%s: supervisord refused username %q or its password", resp.Status, s.Username)
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody+1))
		return nil, fmt.Errorf("%s %s: %s: %q", method, s.url, resp.Status, snippet(string(b), maxErrorBody))
	}
	return decodeResponse(io.LimitReader(resp.Body, 1<<20))
}

// RestartsOnExit reports true: supervisord restarts exited programs
// (autorestart, which defaults to "unexpected").
func (*Supervisord) RestartsOnExit() bool { return true }

// UnmarshalCaddyfile sets up the restarter from Caddyfile tokens:
//
//	restart supervisord <unix socket path | http URL> <process name> [{
//		username <username>
//		password <password>
//		timeout  <duration>
//	}]
func (s *Supervisord) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	const usage = "usage: restart supervisord <unix socket path | http URL> <process name> [{ username <u>; password <p> }]"
	d.Next() // restarter name
	if !d.NextArg() {
		return d.Errf("restart supervisord: missing address and process name (%s)", usage)
	}
	s.Address = d.Val()
	if !d.NextArg() {
		return d.Errf("restart supervisord: missing process name (%s)", usage)
	}
	s.Process = placeholders.Unshorthand(d.Val())
	if d.NextArg() {
		return d.Errf("restart supervisord: unexpected argument %q (%s)", d.Val(), usage)
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		if err := once(d, seen, "supervisord"); err != nil {
			return err
		}
		switch sub := d.Val(); sub {
		case "username", "password":
			if !d.NextArg() {
				return d.Errf("restart supervisord: %s needs a value", sub)
			}
			if sub == "username" {
				s.Username = d.Val()
			} else {
				s.Password = d.Val()
			}
			if err := noMoreArgs(d, "supervisord", sub); err != nil {
				return err
			}
		case "timeout":
			t, err := parseTimeout(d, "supervisord")
			if err != nil {
				return err
			}
			s.Timeout = t
		default:
			return d.Errf("restart supervisord: unknown subdirective %q (known: username, password, timeout)", sub)
		}
	}
	if err := s.validate(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Supervisord)(nil)
	_ caddy.Validator       = (*Supervisord)(nil)
	_ caddyfile.Unmarshaler = (*Supervisord)(nil)
	_ Restarter             = (*Supervisord)(nil)
	_ ExitWatcher           = (*Supervisord)(nil)
)
