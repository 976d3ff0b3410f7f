package healthcheck

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"
)

// Defaults, chosen so that a hang is noticed in well under a second while a
// pool of a thousand backends costs a small fraction of one core.
const (
	DefaultInterval = 250 * time.Millisecond
	DefaultTimeout  = 200 * time.Millisecond
	DefaultFails    = 2
	DefaultPasses   = 1
)

// Config says how heartbeats are sent and judged. Zero fields take defaults
// (see WithDefaults).
type Config struct {
	// Path of the heartbeat request. Empty means "/" with any status below
	// 500 accepted: a backend that answers at all is alive.
	Path string
	// Host header of heartbeats; empty means the backend's address.
	Host string
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
	return c
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Interval < 0:
		return fmt.Errorf("interval %v is negative", c.Interval)
	case c.Timeout < 0:
		return fmt.Errorf("timeout %v is negative", c.Timeout)
	case c.Fails < 0:
		return fmt.Errorf("fails %d is negative", c.Fails)
	case c.SlowStart < 0:
		return fmt.Errorf("slow start %v is negative", c.SlowStart)
	case c.Passes < 0:
		return fmt.Errorf("passes %d is negative", c.Passes)
	case c.StatusMin > c.StatusMax, c.StatusMin < 0, c.StatusMax > 599:
		return fmt.Errorf("status range %d-%d is not a valid HTTP status range", c.StatusMin, c.StatusMax)
	case c.Path != "" && c.Path[0] != '/':
		return fmt.Errorf("path %q must start with /", c.Path)
	case strings.ContainsAny(c.Path, " \t\r\n"):
		return fmt.Errorf("path %q must not contain white space", c.Path)
	case strings.ContainsAny(c.Host, " \t\r\n/"):
		return fmt.Errorf("host %q is not a host name", c.Host)
	}
	return nil
}

func (c Config) statusOK(code int) bool { return code >= c.StatusMin && code <= c.StatusMax }
