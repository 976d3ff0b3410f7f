package caddymodule

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/caddymodule/restart"
	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

// restarter lets the engine call a restarter module.
type restarter struct{ r restart.Restarter }

func (a restarter) Restart(ctx context.Context, b *healthcheck.Backend, reason healthcheck.Reason, lastGood time.Time) error {
	return a.r.Restart(ctx, restart.Target{Backend: b.Addr, Index: b.Index, Reason: reason.String(), Since: lastGood})
}

// provisionRestarts loads the restarter (or takes the built-in supervisor's)
// and installs the restart policy on the pool. A pool shared across a
// reload gets the newest config's policy: it is provisioned before the old
// config is cleaned up.
func (h *Handler) provisionRestarts(ctx caddy.Context, builtin restart.Restarter) error {
	var r restart.Restarter
	switch {
	case h.RestartRaw != nil:
		mod, err := ctx.LoadModule(h, "RestartRaw")
		if err != nil {
			return fmt.Errorf("failover: loading restarter: %v", err)
		}
		r = mod.(restart.Restarter)
	case builtin != nil:
		r = builtin
	default:
		h.pool.SetRestartPolicy(healthcheck.RestartPolicy{})
		return nil
	}
	crashed := true
	if w, ok := r.(restart.ExitWatcher); ok && w.RestartsOnExit() {
		crashed = false // its supervisor restarts exited processes anyway
	}
	if h.RestartCrashed != nil {
		crashed = *h.RestartCrashed
	}
	h.pool.SetRestartPolicy(healthcheck.RestartPolicy{
		Restarter:     restarter{r},
		After:         time.Duration(h.RestartAfter),
		Lease:         time.Duration(h.RestartTimeout),
		MaxRestarting: h.MaxRestarting,
		Crashed:       crashed,
	})
	return nil
}

func (h *Handler) validateRestarts() error {
	switch {
	case h.RestartAfter < 0:
		return fmt.Errorf("failover: restart_after %v: must not be negative", time.Duration(h.RestartAfter))
	case h.RestartTimeout < 0:
		return fmt.Errorf("failover: restart_timeout %v: must not be negative", time.Duration(h.RestartTimeout))
	case h.MaxRestarting < 0:
		return fmt.Errorf("failover: max_restarting %d: must be 1 or more", h.MaxRestarting)
	case h.SlowStart < 0:
		return fmt.Errorf("failover: slow_start %v: must not be negative", time.Duration(h.SlowStart))
	}
	return nil
}

// provisionSpawn starts (or, across a reload, joins) the built-in
// supervisor's processes, whose addresses become the upstreams. It returns
// the supervisor as a restarter.
func (h *Handler) provisionSpawn() (restart.Restarter, error) {
	if h.Spawn == nil {
		return nil, nil
	}
	if len(h.Upstreams) > 0 {
		return nil, fmt.Errorf("failover: spawn gives the upstreams (its ports or to); do not list them as well")
	}
	if err := h.Spawn.Validate(); err != nil {
		return nil, fmt.Errorf("failover: %v", err)
	}
	for _, a := range h.Spawn.Addrs() {
		h.Upstreams = append(h.Upstreams, &reverseproxy.Upstream{Dial: a})
	}
	g, err := spawn.Acquire(*h.Spawn, h.logger.Named("spawn"))
	if err != nil {
		return nil, fmt.Errorf("failover: spawn: %v", err)
	}
	h.spawned, h.spawnCfg = g, *h.Spawn
	return spawnRestarter{g}, nil
}

// spawnRestarter restarts a spawned backend: kill its process group, start
// it again. Exits it restarts by itself.
type spawnRestarter struct{ g *spawn.Group }

func (s spawnRestarter) Restart(ctx context.Context, t restart.Target) error {
	return s.g.Restart(ctx, t.Index)
}

func (spawnRestarter) RestartsOnExit() bool { return true }
