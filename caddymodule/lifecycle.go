package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

// start runs the handler once its config has started: it applies the
// handler's settings to its pool, starts its spawned processes and its
// pool's probers (both no-ops when they run already), and replaces the
// processes that an earlier config started with another command, one at a
// time (roll, when this handler is the one to do it).
func (h *Handler) start(roll bool) {
	log := h.logger.Named("health")
	h.obs.log.Store(log)
	h.obs.start()
	pol := h.restartPolicy()
	h.pool.Apply(healthcheck.Settings{
		Restart:   pol,
		SlowStart: time.Duration(h.SlowStart),
		Log:       log,
	})
	var storage certmagic.Storage // nil: not shared
	if h.clustered() {
		storage = h.storage
	}
	h.cl.configure(storage, h.obs.Name(), pol)
	var changed []int
	if h.spawned != nil {
		addrs := h.spawned.Addrs()
		h.spawned.SetOnExit(func(i int, err error) { reportExit(addrs[i], err) })
		var err error
		if changed, err = h.spawned.Start(); err != nil {
			h.logger.Error("spawn", zap.Error(err))
		}
	}
	h.ops.setReplace(h.replaceFunc())
	h.pool.Start()
	if h.dyn != nil {
		h.dyn.start(h.source)
	}
	if roll && len(changed) > 0 {
		startRoll(h.spawnAddrs, h.spawned, h.logger)
	}
}

// reportExit tells every pool that probes addr that its process exited: it
// is gone (a draining backend's exit is graceful, and the engine knows it).
func reportExit(addr string, err error) {
	if err == nil {
		err = errors.New("the backend process exited")
	}
	backendsAt(addr, func(_ *healthcheck.Pool, b *healthcheck.Backend) { b.Report(healthcheck.Gone, err) })
}

// Rolls replace spawned processes one at a time, at most one roll per
// set of processes: a newer config's roll cancels an older one's.
var (
	rollsMu sync.Mutex
	rolls   = map[string]context.CancelFunc{}
)

func startRoll(addrs []string, g *spawn.Group, log *zap.Logger) {
	key := fmt.Sprint(addrs)
	ctx, cancel := context.WithCancel(context.Background())
	rollsMu.Lock()
	if prev := rolls[key]; prev != nil {
		prev()
	}
	rolls[key] = cancel
	rollsMu.Unlock()
	go func() {
		defer func() {
			rollsMu.Lock()
			if ctx.Err() == nil {
				delete(rolls, key)
			}
			rollsMu.Unlock()
			cancel()
		}()
		if err := roll(ctx, g); err != nil && ctx.Err() == nil {
			log.Error("spawn: rolling out the new command stopped; the backends not yet replaced run the old one", zap.Error(err))
		}
	}()
}

// roll replaces, one at a time, every backend of g that runs another
// command than g's (see cycle). A graceful exit of a draining backend is
// not a crash: no false ejection, no restart.
func roll(ctx context.Context, g *spawn.Group) error {
	for i, addr := range g.Addrs() {
		if g.Current(i) {
			continue
		}
		if err := cycle(ctx, addr, false, func(ctx context.Context) error { return g.Replace(ctx, i) }); err != nil {
			return fmt.Errorf("backend %s: %w", addr, err)
		}
	}
	return nil
}

// cycleStep bounds each step of a cycle: the drain of a backend's
// requests, and its return to service.
const cycleStep = 30 * time.Second

// cycle takes the backend at addr out of service in every pool that has
// it, waits until no request is in flight on it, replaces its process
// (replace), and brings it back: it returns to the normal lifecycle when
// the replacement answers a heartbeat (on a new connection: the old
// process may answer until it exits), and cycle waits until it is in
// service again (healthy: through slow start too). A backend that does not
// come back is returned to the normal lifecycle all the same.
func cycle(ctx context.Context, addr string, healthy bool, replace func(context.Context) error) error {
	each := func(f func(*healthcheck.Pool, *healthcheck.Backend)) { backendsAt(addr, f) }
	each(func(p *healthcheck.Pool, b *healthcheck.Backend) { p.Drain(b) })
	step, cancel := context.WithTimeout(ctx, cycleStep)
	each(func(p *healthcheck.Pool, b *healthcheck.Backend) { _ = p.WaitIdle(step, b) })
	cancel()
	step, cancel = context.WithTimeout(ctx, cycleStep)
	defer cancel()
	err := replace(step)
	if err == nil {
		each(func(p *healthcheck.Pool, b *healthcheck.Backend) { p.ReturnOnNewProcess(b) })
		err = waitInService(step, addr, healthy)
	}
	if err != nil {
		each(func(p *healthcheck.Pool, b *healthcheck.Backend) { p.Return(b) })
	}
	return err
}

// waitInService waits until every pool that probes addr has it in service,
// and with healthy, out of probation too.
func waitInService(ctx context.Context, addr string, healthy bool) error {
	for {
		var ready []<-chan struct{}
		ramping := false
		backendsAt(addr, func(p *healthcheck.Pool, b *healthcheck.Backend) {
			if !b.InService() {
				ready = append(ready, p.Ready())
			} else if healthy && b.InProbation() {
				ramping = true
			}
		})
		if len(ready) == 0 && !ramping {
			return nil
		}
		var wake <-chan struct{}
		if len(ready) > 0 {
			wake = ready[0]
		}
		select {
		case <-wake:
		case <-time.After(50 * time.Millisecond): // the end of slow start is no event
		case <-ctx.Done():
			return errors.New("not back in service after its replacement")
		}
	}
}

// retire ends the handler's part in the pool and processes it uses. Its
// held requests wake and go to the config that replaced it (redispatch);
// its pool and processes are released once its last request has ended, so
// that requests in flight finish on processes that still run: Caddy cleans
// up a replaced config right after it told its servers to shut down, while
// they may still be serving. A pool or process the new config shares stays.
func (h *Handler) retire() {
	if h.retired == nil || h.count.gone.Swap(true) {
		return // Provision failed before it could take anything
	}
	close(h.retired)
	if h.count.active.Load() == 0 {
		h.release()
		return
	}
	go func() {
		t := time.NewTimer(maxRetireWait)
		defer t.Stop()
		for h.count.active.Load() > 0 {
			select {
			case <-h.idle:
			case <-t.C:
				h.logger.Warn("releasing a replaced config's pool although requests are still in flight on it",
					zap.Int64("requests", h.count.active.Load()), zap.Duration("waited", maxRetireWait))
				h.release()
				return
			}
		}
		h.release()
	}()
}

// maxRetireWait bounds how long a replaced config's pool and processes
// wait for its last request. Caddy's own grace period is eternal unless
// set; a request stuck on a backend that nothing restarts must not keep
// them forever.
const maxRetireWait = 10 * time.Minute

func (h *Handler) release() {
	if h.poolKey != "" {
		releasePool(h.poolKey)
	}
	if h.spawned != nil {
		h.spawned.Release()
	}
	if h.ownsInner != nil {
		_ = h.ownsInner.Cleanup()
	}
}

// done ends a request in ServeHTTP; the last one of a retired handler
// wakes retire.
func (h *Handler) done() {
	if h.count.active.Add(-1) == 0 && h.count.gone.Load() {
		select {
		case h.idle <- struct{}{}:
		default:
		}
	}
}

// redispatch hands a request held by a replaced config to the server of
// the running config that has its name, as if it had arrived there. Its
// hold so far is not counted again: the new config's backends are others.
func (h *Handler) redispatch(w http.ResponseWriter, r *http.Request) error {
	old, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if old != nil && r.Context().Value(redispatchedKey{}) == nil {
		if app, err := caddy.ActiveContext().AppIfConfigured("http"); err == nil {
			if srv := app.(*caddyhttp.App).Servers[old.Name()]; srv != nil && srv != old {
				r = r.WithContext(context.WithValue(r.Context(), redispatchedKey{}, true))
				srv.ServeHTTP(w, r)
				return nil
			}
		}
	}
	return h.noBackend(w)
}

// redispatchedKey marks a request handed over once: never twice.
type redispatchedKey struct{}
