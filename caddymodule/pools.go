package caddymodule

import (
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// pools holds the health pools of all loaded configs, keyed by what defines
// how their backends are probed. A reload that keeps a pool's key finds it
// here, running, with every backend's health: Caddy provisions the new
// config before it cleans up the old one, so the count never drops to zero
// in between. Settings that do not change probing (restart policy, slow
// start, logger) are applied to the pool in place when a config starts.
var pools = caddy.NewUsagePool()

// runningPool is a pool and what its handlers share of it: max_held counts
// the requests held by every handler of the pool.
type runningPool struct {
	*healthcheck.Pool
	held *atomic.Int64
	obs  *observer
	ops  *poolOps
	// budget bounds the extra attempts (hedges, rescues) of all its
	// handlers; lat is their answer latencies, for hedge auto
	budget *budget
	lat    *latencies
	dyn    *dynamicPool // nil: static upstreams
	cl     *member      // its part in the cluster of instances (peers.go)
}

func (p runningPool) Destruct() error {
	if p.dyn != nil {
		p.dyn.stop()
	}
	p.Close()
	p.cl.stop()
	p.obs.stop()
	name, shared := p.obs.Name(), false
	pools.Range(func(_, v any) bool {
		shared = v.(runningPool).obs.Name() == name
		return !shared
	})
	if !shared {
		forgetPool(name)
	}
	return nil
}

// poolKey is what defines a pool: its upstreams (for a dynamic pool, its
// source's config, not the addresses it answers) and how they are probed.
func poolKey(addrs []string, source string, cfg healthcheck.Config, tlsKey string) string {
	return fmt.Sprintf("%q dynamic=%q path=%q method=%q headers=%q body=%q port=%d interval=%v timeout=%v fails=%d passes=%d status=%d-%d tls=%s",
		addrs, source, cfg.Path, cfg.Method, cfg.Headers, cfg.Body, cfg.Port, cfg.Interval, cfg.Timeout, cfg.Fails, cfg.Passes, cfg.StatusMin, cfg.StatusMax, tlsKey)
}

// acquirePool returns the pool of key, making one that probes nothing
// until Start if no loaded config has it. A pool with a source (its JSON)
// is dynamic: it starts empty.
func acquirePool(addrs []string, source string, cfg healthcheck.Config, tlsKey string) (runningPool, string, error) {
	key := poolKey(addrs, source, cfg, tlsKey)
	v, _, err := pools.LoadOrNew(key, func() (caddy.Destructor, error) {
		p := healthcheck.NewPool(addrs, cfg, nil)
		obs := newObserver(p)
		m := newMember(p, obs)
		obs.restartOver = m.restartOver
		rp := runningPool{p, new(atomic.Int64), obs, new(poolOps), newBudget(), new(latencies), nil, m}
		p.SetRescueBudget(func() bool {
			if rp.budget.allow() {
				return true
			}
			mRescuesDenied.WithLabelValues(obs.Name()).Inc()
			return false
		})
		if source != "" {
			rp.dyn = newDynamicPool(p, rp.obs)
		}
		return rp, nil
	})
	if err != nil {
		return runningPool{}, "", err
	}
	return v.(runningPool), key, nil
}

func releasePool(key string) { _, _ = pools.Delete(key) }

// backendsAt calls f for every backend at addr in every started pool: a
// process's exit, or a roll of its slot, concerns all the pools that probe
// it, whichever config made them.
func backendsAt(addr string, f func(*healthcheck.Pool, *healthcheck.Backend)) {
	pools.Range(func(_, v any) bool {
		p := v.(runningPool).Pool
		if !p.Started() {
			return true
		}
		for _, b := range p.Backends() {
			if b.Addr == addr {
				f(p, b)
			}
		}
		return true
	})
}
