package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/caddymodule/restart"
	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

// restarter lets the engine call a restarter module, and counts what it
// did. Every restart request passes through it: with cluster on, it first
// claims the restart's lease from the peers (member.claim), and leaves the
// restart to them when they have it in hand.
type restarter struct {
	r    restart.Restarter
	name string // the module's name: http, exec, signal, supervisord, spawn
	obs  *observer
	cl   *member // nil: not shared
}

func (a restarter) Restart(ctx context.Context, b *healthcheck.Backend, reason healthcheck.Reason, lastGood time.Time) error {
	if a.cl != nil {
		if err := a.cl.claim(ctx, b, reason, lastGood); err != nil {
			return err
		}
	}
	err := a.r.Restart(ctx, restart.Target{Backend: b.Addr, Index: b.Index, Reason: reason.String(), Since: lastGood})
	result := "ok"
	if err != nil {
		result = "error"
		if a.cl != nil {
			a.cl.release(b.Addr)
		}
	}
	a.obs.of(b.Index).restarts.Add(1)
	mRestarts.WithLabelValues(a.obs.Name(), a.name, result).Inc()
	return err
}

// restarterName is a restarter module's name for metrics.
func restarterName(r restart.Restarter) string {
	if m, ok := r.(caddy.Module); ok {
		return m.CaddyModule().ID.Name()
	}
	return "spawn"
}

// provisionRestarter loads the restarter module, if any, and records the
// settings a shared pool applies on the handler's behalf (App.add).
func (h *Handler) provisionRestarter(ctx caddy.Context) error {
	shared := struct {
		Restart              json.RawMessage
		After, Timeout, Slow caddy.Duration
		MaxRestarting        int
		Crashed, Cluster     *bool
		Spawn                string
	}{h.RestartRaw, h.RestartAfter, h.RestartTimeout, h.SlowStart, h.MaxRestarting, h.RestartCrashed, h.Cluster, h.spawnKey}
	b, err := json.Marshal(shared)
	if err != nil {
		return fmt.Errorf("failover: %v", err)
	}
	h.sharedSettings = string(b)
	if h.RestartRaw != nil {
		mod, err := ctx.LoadModule(h, "RestartRaw")
		if err != nil {
			return fmt.Errorf("failover: loading restarter: %v", err)
		}
		h.restarter = mod.(restart.Restarter)
	}
	return nil
}

// restartPolicy is the policy the pool applies for this handler once its
// config has started: the restarter's, or the built-in supervisor's.
func (h *Handler) restartPolicy() healthcheck.RestartPolicy {
	r := h.restarter
	if r == nil && h.spawned != nil {
		r = spawnRestarter{h.spawned}
	}
	if r == nil {
		return healthcheck.RestartPolicy{}
	}
	crashed := true
	if w, ok := r.(restart.ExitWatcher); ok && w.RestartsOnExit() {
		crashed = false // its supervisor restarts exited processes anyway
	}
	if h.RestartCrashed != nil {
		crashed = *h.RestartCrashed
	}
	return healthcheck.RestartPolicy{
		Restarter:     restarter{r, restarterName(r), h.obs, h.peers()},
		After:         time.Duration(h.RestartAfter),
		Lease:         time.Duration(h.RestartTimeout),
		MaxRestarting: h.MaxRestarting,
		Crashed:       crashed,
	}
}

// clustered reports whether the handler's pool shares its restarts with
// other instances: with a restarter module, unless cluster is off.
func (h *Handler) clustered() bool {
	return h.hasRestartModule() && (h.Cluster == nil || *h.Cluster)
}

// hasRestartModule: restart is set (its raw JSON is gone once loaded).
func (h *Handler) hasRestartModule() bool { return h.RestartRaw != nil || h.restarter != nil }

// peers is the pool's cluster member when restarts are shared, else nil.
func (h *Handler) peers() *member {
	if !h.clustered() {
		return nil
	}
	return h.cl
}

func (h *Handler) validateRestarts() error {
	switch {
	case h.Cluster != nil && *h.Cluster && !h.hasRestartModule():
		return fmt.Errorf("failover: cluster on needs a restart module: spawned backends are each instance's own, and without a restarter there are no restarts to share")
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

// provisionSpawnConfig checks the built-in supervisor's config, whose
// addresses become the upstreams. Nothing is started here.
func (h *Handler) provisionSpawnConfig() error {
	if h.Spawn == nil {
		return nil
	}
	if len(h.Upstreams) > 0 {
		return fmt.Errorf("failover: spawn gives the upstreams (its ports or to); do not list them as well")
	}
	if err := h.Spawn.Validate(); err != nil {
		return fmt.Errorf("failover: %v", err)
	}
	h.spawnAddrs = h.Spawn.Addrs()
	for _, a := range h.spawnAddrs {
		h.Upstreams = append(h.Upstreams, &reverseproxy.Upstream{Dial: a})
	}
	b, err := json.Marshal(h.Spawn)
	if err != nil {
		return fmt.Errorf("failover: spawn: %v", err)
	}
	h.spawnKey = string(b)
	return nil
}

// spawnRestarter restarts a spawned backend: kill its process group, start
// it again. Exits it restarts by itself.
type spawnRestarter struct{ g *spawn.Group }

func (s spawnRestarter) Restart(ctx context.Context, t restart.Target) error {
	return s.g.Restart(ctx, t.Index)
}

func (spawnRestarter) RestartsOnExit() bool { return true }
