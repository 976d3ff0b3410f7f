package caddymodule

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App runs what failover handlers need while their config runs: heartbeat
// probers, spawned processes, restarts. Handlers register with it when
// they are provisioned; nothing runs until the whole config has started.
//
// Caddy provisions a config (caddy validate stops there), then starts its
// apps one by one, and only then stops the config it replaces. A failed
// start stops the apps already started. So the app applies its handlers'
// settings to the shared pools and processes when Caddy reports the config
// started (its "started" event): a reload that fails never touches what the
// running config uses. The app is loaded by the first failover handler;
// it has no settings of its own.
type App struct {
	handlers []*Handler
	log      *zap.Logger
	ctx      caddy.Context
	events   *caddyevents.App
	// storage is Caddy's configured storage, which the instances sharing
	// pools share: handed to the handlers when the config starts, never
	// touched before
	storage certmagic.Storage
	// started counts the handlers started; only the goroutine that loads
	// the config touches it
	started int
}

// CaddyModule returns the Caddy module information. A pointer receiver:
// Caddy's events app calls it on the running app while it commits.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "failover",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision subscribes to Caddy's "started" event.
func (a *App) Provision(ctx caddy.Context) error {
	a.log, a.ctx, a.storage = ctx.Logger(), ctx, ctx.Storage()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("failover: loading the events app: %v", err)
	}
	a.events = ev.(*caddyevents.App)
	return a.events.On("started", started{a})
}

// started is the app's handler of Caddy's "started" event.
type started struct{ a *App }

func (s started) Handle(context.Context, caddy.Event) error {
	s.a.commit()
	return nil
}

// add registers a provisioned handler. Handlers of one config that share a
// pool (same upstreams and heartbeat settings) must agree on everything
// the pool does on their behalf; else which one wins would depend on the
// order of the config.
func (a *App) add(h *Handler) error {
	for _, o := range a.handlers {
		if o.poolKey == h.poolKey && o.sharedSettings != h.sharedSettings {
			return fmt.Errorf("failover: two failover handlers front the same upstreams %v with the same heartbeat settings but different restart, spawn or slow_start settings; give them the same settings (they share one pool) or different health settings", h.upstreamsName())
		}
		for _, addr := range h.spawnAddrs {
			for _, oa := range o.spawnAddrs {
				if addr == oa && o.spawnKey != h.spawnKey {
					return fmt.Errorf("failover: backend %s is spawned by two failover handlers with different spawn settings; one process cannot run two commands", addr)
				}
			}
		}
	}
	a.handlers = append(a.handlers, h)
	return nil
}

// upstreamsName names the handler's upstreams in an error: its addresses,
// or its dynamic source.
func (h *Handler) upstreamsName() string {
	if h.dyn != nil {
		return "(dynamic " + h.sourceJSON + ")"
	}
	return fmt.Sprint(h.addrs)
}

// Start does nothing: see commit.
func (a *App) Start() error { return nil }

// Stop does nothing: a stopped config's handlers retire at Cleanup, once
// the server has stopped sending them requests (see Handler.retire).
func (a *App) Stop() error { return nil }

// commit starts the handlers' pools and processes, and applies their
// settings to the pools and processes they share with the config they
// replace.
func (a *App) commit() {
	emitter.Store(&eventSink{a.ctx, a.events})
	names := a.names()
	rolled := map[string]bool{}
	for _, h := range a.handlers[a.started:] {
		name := h.Name
		if name == "" {
			name = names[h]
		}
		h.obs.setName(name)
		h.storage = a.storage
		h.start(!rolled[h.spawnKey])
		rolled[h.spawnKey] = true
	}
	a.started = len(a.handlers)
}

// names gives every handler of the config its default pool name: the site
// and path it serves (from the route's host and path matchers), else the
// server's name; a name taken twice gets #2, #3...
func (a *App) names() map[*Handler]string {
	names := map[*Handler]string{}
	app, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return names
	}
	servers := app.(*caddyhttp.App).Servers
	taken := map[string]int{}
	var walk func(srv string, routes caddyhttp.RouteList, site, path string)
	walk = func(srv string, routes caddyhttp.RouteList, site, path string) {
		for _, r := range routes {
			s, p := site, path
			for _, set := range r.MatcherSets {
				for _, m := range set {
					switch m := m.(type) {
					case *caddyhttp.MatchHost:
						s = strings.Join(*m, ",")
					case caddyhttp.MatchHost:
						s = strings.Join(m, ",")
					case *caddyhttp.MatchPath:
						p = strings.Join(*m, ",")
					case caddyhttp.MatchPath:
						p = strings.Join(m, ",")
					}
				}
			}
			for _, hd := range r.Handlers {
				switch x := hd.(type) {
				case *Handler:
					name := s
					if name == "" {
						name = srv
					}
					name += p
					if taken[name]++; taken[name] > 1 {
						name = fmt.Sprintf("%s#%d", name, taken[name])
					}
					names[x] = name
				case *caddyhttp.Subroute:
					walk(srv, x.Routes, s, p)
				}
			}
		}
	}
	for _, srv := range slices.Sorted(maps.Keys(servers)) {
		walk(srv, servers[srv].Routes, "", "")
	}
	return names
}

var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
