package healthcheck

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults, chosen so that a hang is noticed in well under a second while a
// pool of a thousand backends costs a small fraction of one core.
const (
	DefaultInterval = 250 * time.Millisecond
	DefaultTimeout  = 200 * time.Millisecond
	DefaultFails    = 2
	DefaultPasses   = 1
	DefaultMethod   = http.MethodGet
	// MaxBody bounds a heartbeat's request body.
	MaxBody = 64 << 10
)

// Config says how heartbeats are sent and judged. Zero fields take defaults
// (see WithDefaults).
type Config struct {
	// Path of the heartbeat request. Empty means "/" with any status below
	// 500 accepted: a backend that answers at all is alive.
	Path string
	// Method of heartbeats; empty means GET.
	Method string
	// Headers of heartbeats. A Host entry sets the Host header (default:
	// the address probed); User-Agent and Accept replace the defaults.
	// Content-Length and Transfer-Encoding are the heartbeat's own.
	Headers http.Header
	// Body of heartbeats, sent with Content-Length; only with a method
	// that carries one (not GET, HEAD, DELETE or TRACE). At most MaxBody.
	Body string
	// Port, when set, is probed on the backend's host instead of the
	// backend's own port (a separate health listener). TCP backends only:
	// a unix socket has no port (and keeps its own address).
	Port int
	// Interval between beats (jittered by ±10%).
	Interval time.Duration
	// Timeout for one beat, connect included.
	Timeout time.Duration
	// Fails is how many consecutive missed beats eject a backend.
	Fails int
	// Passes is how many consecutive good beats readmit one.
	Passes int
	// StatusMin and StatusMax bound the accepted status (inclusive).
	// Both zero: 2xx when Path is set, else anything below 500.
	StatusMin, StatusMax int
	// TLS, when set, makes heartbeats use TLS (for https upstreams).
	TLS *tls.Config
	// SlowStart, when set, ramps a readmitted backend's share of new
	// requests linearly over this time (probation). Not at startup.
	SlowStart time.Duration
}

// WithDefaults returns c with zero fields filled in.
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Fails == 0 {
		c.Fails = DefaultFails
	}
	if c.Passes == 0 {
		c.Passes = DefaultPasses
	}
	if c.StatusMin == 0 && c.StatusMax == 0 {
		if c.Path == "" {
			c.StatusMin, c.StatusMax = 100, 499
		} else {
			c.StatusMin, c.StatusMax = 200, 299
		}
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.Method == "" {
		c.Method = DefaultMethod
	}
	return c
}

// Bounds of a Config, checked by Validate (a zero field takes its default):
// beats more often than every 10ms cost more than they tell, and a backend
// that needs more than 100 beats to be judged is not being judged.
const (
	MinInterval  = 10 * time.Millisecond
	MinTimeout   = 10 * time.Millisecond
	MaxFails     = 100
	MaxPasses    = 100
	MaxSlowStart = time.Hour
)

// Validate reports settings that cannot work, naming the value and what is
// allowed.
func (c Config) Validate() error {
	switch {
	case c.Interval != 0 && c.Interval < MinInterval:
		return fmt.Errorf("interval %v: must be at least %v", c.Interval, MinInterval)
	case c.Timeout != 0 && c.Timeout < MinTimeout:
		return fmt.Errorf("timeout %v: must be at least %v", c.Timeout, MinTimeout)
	case c.Fails < 0 || c.Fails > MaxFails:
		return fmt.Errorf("fails %d: must be from 1 to %d", c.Fails, MaxFails)
	case c.Passes < 0 || c.Passes > MaxPasses:
		return fmt.Errorf("passes %d: must be from 1 to %d", c.Passes, MaxPasses)
	case c.SlowStart < 0 || c.SlowStart > MaxSlowStart:
		return fmt.Errorf("slow start %v: must be from 0 to %v", c.SlowStart, MaxSlowStart)
	case c.StatusMin > c.StatusMax, c.StatusMin < 0, c.StatusMax > 599:
		return fmt.Errorf("status range %d-%d: must be a range of HTTP statuses, within 100-599", c.StatusMin, c.StatusMax)
	case c.Path != "" && c.Path[0] != '/':
		return fmt.Errorf("path %q: must start with /", c.Path)
	case hasControl(c.Path) || strings.Contains(c.Path, " "):
		return fmt.Errorf("path %q: must not contain spaces or control characters", c.Path)
	case c.Method != "" && !httpguts.ValidHeaderFieldName(c.Method):
		return fmt.Errorf("method %q is not an HTTP method: want an RFC 9110 token such as GET, HEAD or POST", c.Method)
	case c.Method == http.MethodConnect:
		return fmt.Errorf("method CONNECT opens a tunnel, it cannot be a heartbeat: want a method such as GET, HEAD or POST")
	case len(c.Body) > MaxBody:
		return fmt.Errorf("body of %d bytes: at most %d (64KiB) allowed", len(c.Body), MaxBody)
	case c.Body != "" && !takesBody(c.method()):
		return fmt.Errorf("body with method %s, which carries none: want a method such as POST or PUT", c.method())
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("port %d: want a port from 1 to 65535 (0: the backend's own)", c.Port)
	}
	hosts := 0
	for name, values := range c.Headers {
		if err := checkHeader(name, values); err != nil {
			return err
		}
		if http.CanonicalHeaderKey(name) == "Host" {
			hosts += len(values)
		}
	}
	if hosts > 1 {
		return fmt.Errorf("header Host given %d times: want one host name", hosts)
	}
	return nil
}

// hasControl reports whether s has an ASCII control character (below 0x20,
// or DEL): in a request line or header it would end or corrupt it.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// checkHeader checks one heartbeat header and its values.
func checkHeader(name string, values []string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("header name %q is not an RFC 9110 token (letters, digits and !#$%%&'*+-.^_`|~)", name)
	}
	for _, v := range values {
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("header %s value %q: control characters (CR, LF, NUL...) are not allowed", name, v)
		}
	}
	switch http.CanonicalHeaderKey(name) {
	case "Content-Length", "Transfer-Encoding":
		return fmt.Errorf("header %s is set by the heartbeat itself, from its body", name)
	case "Host":
		for _, v := range values {
			if v == "" || !httpguts.ValidHostHeader(v) || strings.ContainsAny(v, " /") {
				return fmt.Errorf("header Host %q: want a host name, with or without a port", v)
			}
		}
	}
	return nil
}

func (c Config) method() string {
	if c.Method == "" {
		return DefaultMethod
	}
	return c.Method
}

// takesBody reports whether a heartbeat may carry a body with method m
// (RFC 9110 §9.3: GET, HEAD and DELETE content has no meaning, and TRACE
// must have none).
func takesBody(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodTrace, http.MethodConnect:
		return false
	}
	return true
}

func (c Config) statusOK(code int) bool { return code >= c.StatusMin && code <= c.StatusMax }
