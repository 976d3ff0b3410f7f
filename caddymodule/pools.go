package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// pools holds the health pools of all loaded configs, keyed by what defines
// them. A reload with an unchanged pool finds it here, running, with every
// backend's health: Caddy provisions the new config before it cleans up the
// old one, so the count never drops to zero in between.
var pools = caddy.NewUsagePool()

type runningPool struct{ *healthcheck.Pool }

func (p runningPool) Destruct() error {
	p.Close()
	return nil
}

func poolKey(addrs []string, cfg healthcheck.Config) string {
	tls := cfg.TLS != nil
	insecure := tls && cfg.TLS.InsecureSkipVerify
	return fmt.Sprintf("%q path=%q host=%q interval=%v timeout=%v fails=%d passes=%d status=%d-%d tls=%v insecure=%v",
		addrs, cfg.Path, cfg.Host, cfg.Interval, cfg.Timeout, cfg.Fails, cfg.Passes, cfg.StatusMin, cfg.StatusMax, tls, insecure)
}

func acquirePool(addrs []string, cfg healthcheck.Config, log *zap.Logger) (*healthcheck.Pool, string, error) {
	key := poolKey(addrs, cfg)
	v, _, err := pools.LoadOrNew(key, func() (caddy.Destructor, error) {
		p := healthcheck.NewPool(addrs, cfg, log.Named("health"))
		p.Start()
		return runningPool{p}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(runningPool).Pool, key, nil
}

func releasePool(key string) { _, _ = pools.Delete(key) }
