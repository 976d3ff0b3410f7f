package restart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/internal/placeholders"
)

func init() {
	caddy.RegisterModule(new(HTTP))
}

// defaultHTTPTimeout bounds an http restart request unless configured.
const defaultHTTPTimeout = 5 * time.Second

// maxErrorBody is how much of a failed answer's body an error quotes.
const maxErrorBody = 256

// HTTP asks for a restart with an HTTP request: to an orchestrator's API, a
// deploy hook, or a small agent next to the backend. The request carries
// the JSON body
//
//	{"backend": "127.0.0.1:9001", "index": 0, "reason": "hang", "since": "2025-01-02T15:04:05.123Z"}
//
// ("since", RFC 3339 in UTC, is left out when unknown) with Content-Type
// application/json. Any 2xx answer means the restart was requested; any
// other answer, or none within the timeout, is a failed restart. Redirects
// are never followed: a 3xx is a failed restart whose error says where it
// pointed (following one would send the headers, secrets included, to
// another host, and would turn a POST into a GET without its body).
type HTTP struct {
	// URL to send the request to, http or https. May use the placeholders
	// {backend} (host:port), {host}, {port}, {index} and {reason}.
	URL string `json:"url"`

	// Method of the request. Default: POST.
	Method string `json:"method,omitempty"`

	// Headers to add to the request. Names and values may use the same
	// placeholders as the URL. A "Host" header sets the request's host.
	Headers http.Header `json:"headers,omitempty"`

	// Timeout of the whole request, answer included. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// SupervisorRestartsOnExit says that whatever the URL reaches also
	// restarts a backend that exits on its own (Kubernetes, Nomad, ...),
	// so that a crashed backend needs no restart request. Default: false.
	SupervisorRestartsOnExit bool `json:"restarts_on_exit,omitempty"`

	client *http.Client
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*HTTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  Namespace + ".http",
		New: func() caddy.Module { return new(HTTP) },
	}
}

// Provision sets the defaults and makes the client.
func (h *HTTP) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Method == "" {
		h.Method = http.MethodPost
	}
	h.Method = strings.ToUpper(h.Method)
	h.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSHandshakeTimeout: defaultHTTPTimeout,
			// restarts are rare: a kept-alive connection would mostly be a
			// stale one by the time the next restart uses it
			DisableKeepAlives: true,
		},
		// a redirect is answered, not followed: see the type's doc
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// Validate checks the URL and the method.
func (h *HTTP) Validate() error {
	return h.validate()
}

func (h *HTTP) validate() error {
	if h.URL == "" {
		return errors.New("restart http: missing URL")
	}
	// placeholders may stand in the host, where url.Parse rejects braces:
	// check the URL as it will look for some backend
	sample := Replacer(Target{Backend: "127.0.0.1:9000", Reason: "hang"}).ReplaceKnown(h.URL, "")
	u, err := url.Parse(sample)
	if err != nil {
		return fmt.Errorf("restart http: bad URL %q: %v", h.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("restart http: bad URL %q: want http://host/... or https://host/...", h.URL)
	}
	if h.Method != "" {
		if _, err := http.NewRequest(h.Method, sample, nil); err != nil {
			return fmt.Errorf("restart http: bad method %q", h.Method)
		}
	}
	if h.Timeout < 0 {
		return fmt.Errorf("restart http: bad timeout %v", time.Duration(h.Timeout))
	}
	return nil
}

// restartBody is the JSON body of an http restart request.
type restartBody struct {
	Backend string `json:"backend"`
	Index   int    `json:"index"`
	Reason  string `json:"reason"`
	Since   string `json:"since,omitempty"`
}

// Restart sends the restart request and waits for its answer.
func (h *HTTP) Restart(ctx context.Context, t Target) error {
	repl := Replacer(t)
	target := repl.ReplaceKnown(h.URL, "")
	body := restartBody{Backend: t.Backend, Index: t.Index, Reason: t.Reason}
	if !t.Since.IsZero() {
		body.Since = t.Since.UTC().Format(time.RFC3339Nano)
	}
	enc, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("http restart of %s: %v", t.Backend, err)
	}

	timeout := restartTimeout(h.Timeout, defaultHTTPTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	method := h.Method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequestWithContext(rctx, method, target, bytes.NewReader(enc))
	if err != nil {
		return fmt.Errorf("http restart of %s: %v", t.Backend, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caddy-failover")
	for name, values := range h.Headers {
		name = repl.ReplaceKnown(name, "")
		if strings.EqualFold(name, "Host") {
			if len(values) > 0 {
				req.Host = repl.ReplaceKnown(values[0], "")
			}
			continue
		}
		req.Header.Del(name)
		for _, v := range values {
			req.Header.Add(name, repl.ReplaceKnown(v, ""))
		}
	}

	client := h.client
	if client == nil { // not provisioned
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	logger := h.logger
	if logger == nil {
		logger = zap.NewNop()
	}
	logger = logger.With(zap.String("backend", t.Backend), zap.String("method", method), zap.String("url", target))
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("http restart of %s: %s %s: no answer within %v", t.Backend, method, target, timeout)
		} else {
			err = fmt.Errorf("http restart of %s: %w", t.Backend, err)
		}
		logger.Info("restart request got no answer", zap.Error(err))
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		// let the server finish its answer, within bounds
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		logger.Info("restart request answered", zap.Int("status", resp.StatusCode))
		return nil
	}
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		loc := snippet(resp.Header.Get("Location"), 200)
		logger.Info("restart request answered with a redirect, not followed", zap.Int("status", resp.StatusCode), zap.String("location", loc))
		return fmt.Errorf("http restart of %s: %s %s: %s, redirected to %q: redirects are not followed; configure the URL it points to",
			t.Backend, method, target, resp.Status, loc)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody+1))
	logger.Info("restart request answered", zap.Int("status", resp.StatusCode))
	if s := snippet(string(b), maxErrorBody); s != "" {
		return fmt.Errorf("http restart of %s: %s %s: %s: %q", t.Backend, method, target, resp.Status, s)
	}
	return fmt.Errorf("http restart of %s: %s %s: %s", t.Backend, method, target, resp.Status)
}

// RestartsOnExit reports whether the supervisor behind the URL restarts
// backends that exit on their own (the restarts_on_exit setting).
func (h *HTTP) RestartsOnExit() bool { return h.SupervisorRestartsOnExit }

// UnmarshalCaddyfile sets up the restarter from Caddyfile tokens:
//
//	restart http <url> [{
//		method <method>
//		header <name> <value>
//		timeout <duration>
//		restarts_on_exit
//	}]
func (h *HTTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // restarter name
	if !d.NextArg() {
		return d.Errf("restart http: missing URL (usage: restart http <url> [{ method <m>; header <name> <value>; timeout <d> }])")
	}
	h.URL = placeholders.Unshorthand(d.Val())
	if d.NextArg() {
		return d.Errf("restart http: unexpected argument %q after the URL", d.Val())
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		if err := once(d, seen, "http", "header"); err != nil {
			return err
		}
		switch sub := d.Val(); sub {
		case "method":
			if !d.NextArg() {
				return d.Errf("restart http: method needs a value")
			}
			h.Method = strings.ToUpper(d.Val())
			if err := noMoreArgs(d, "http", sub); err != nil {
				return err
			}
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("restart http: header takes a name and a value, got %d arguments", len(args))
			}
			if h.Headers == nil {
				h.Headers = make(http.Header)
			}
			name := placeholders.Unshorthand(args[0])
			h.Headers[name] = append(h.Headers[name], placeholders.Unshorthand(args[1]))
		case "timeout":
			t, err := parseTimeout(d, "http")
			if err != nil {
				return err
			}
			h.Timeout = t
		case "restarts_on_exit":
			if err := noMoreArgs(d, "http", sub); err != nil {
				return err
			}
			h.SupervisorRestartsOnExit = true
		default:
			return d.Errf("restart http: unknown subdirective %q (known: method, header, timeout, restarts_on_exit)", sub)
		}
	}
	if err := h.validate(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*HTTP)(nil)
	_ caddy.Validator       = (*HTTP)(nil)
	_ caddyfile.Unmarshaler = (*HTTP)(nil)
	_ Restarter             = (*HTTP)(nil)
	_ ExitWatcher           = (*HTTP)(nil)
)
