package caddymodule

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// engineConfig translates the JSON health settings for the engine. A nil
// config means all defaults.
func (c *HealthConfig) engineConfig() (healthcheck.Config, error) {
	if c == nil {
		return healthcheck.Config{}.WithDefaults(), nil
	}
	cfg := healthcheck.Config{
		Path:     c.URI,
		Interval: time.Duration(c.Interval),
		Timeout:  time.Duration(c.Timeout),
		Fails:    c.Fails,
		Passes:   c.Passes,
		Method:   c.Method,
		Headers:  c.Headers,
		Body:     c.Body,
		Port:     c.Port,
	}
	if c.Status != "" {
		lo, hi, err := parseStatus(c.Status)
		if err != nil {
			return cfg, fmt.Errorf("failover: health_status %q: %v", c.Status, err)
		}
		cfg.StatusMin, cfg.StatusMax = lo, hi
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("failover: health: %v", err)
	}
	return cfg.WithDefaults(), nil
}

// parseStatus reads an expected heartbeat status: a code (204) or a class
// (2xx), as reverse_proxy's health_status does.
func parseStatus(s string) (lo, hi int, err error) {
	if len(s) == 3 && strings.HasSuffix(s, "xx") {
		class := int(s[0] - '0')
		if class < 1 || class > 5 {
			return 0, 0, fmt.Errorf("status class must be 1xx to 5xx")
		}
		return class * 100, class*100 + 99, nil
	}
	code, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 || code < 100 || code > 599 {
		return 0, 0, fmt.Errorf("expected a status code from 100 to 599 or a class like 2xx")
	}
	return code, code, nil
}
