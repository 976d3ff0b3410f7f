package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// poolOps are the operator's actions on a pool that need more than the
// engine: replacing a backend's process, and rolling restarts.
type poolOps struct {
	mu      sync.Mutex
	replace func(ctx context.Context, b *healthcheck.Backend) error // nil: no restarter
	rolling *RollingRestart
}

// errNoRestarter: the pool's config has neither restart nor spawn.
var errNoRestarter = errors.New("the pool has no restarter (restart or spawn)")

func (o *poolOps) setReplace(f func(context.Context, *healthcheck.Backend) error) {
	o.mu.Lock()
	o.replace = f
	o.mu.Unlock()
}

func (o *poolOps) replacer() func(context.Context, *healthcheck.Backend) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.replace
}

// replaceFunc is how the handler's config replaces a backend's process on
// an operator's request: the built-in supervisor stops it gracefully
// (SIGTERM, SIGKILL after stop_timeout) and starts it again; a restarter
// is asked to restart it, and must return once the old process is gone.
func (h *Handler) replaceFunc() func(context.Context, *healthcheck.Backend) error {
	switch {
	case h.spawned != nil:
		g := h.spawned
		return func(ctx context.Context, b *healthcheck.Backend) error { return g.Replace(ctx, b.Index) }
	case h.restarter != nil:
		r := restarter{h.restarter, restarterName(h.restarter), h.obs, h.peers()}
		return func(ctx context.Context, b *healthcheck.Backend) error {
			return r.Restart(ctx, b, healthcheck.Manual, time.Now())
		}
	}
	return nil
}

// RollingRestart is a rolling restart's progress, as the admin API shows it.
type RollingRestart struct {
	Pool     string    `json:"pool"`
	State    string    `json:"state"` // running, done, failed
	Done     []string  `json:"done"`
	Current  string    `json:"current,omitempty"`
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
}

// errRollingRestart: one is already running on the pool.
var errRollingRestart = errors.New("a rolling restart of this pool is already running")

// rollingLease is how long a step of a rolling restart holds the pool's
// lease among the instances: a cycle's two bounded steps, and a margin.
const rollingLease = 2*cycleStep + 5*time.Second

// startRollingRestart restarts the pool's backends one at a time: drain,
// replace, wait until healthy (through slow start), next. It stops at the
// first backend that does not come back. Across the instances sharing the
// pool, one runs at a time: the one that takes the pool's lease.
func (rp runningPool) startRollingRestart() (RollingRestart, error) {
	o, asked := rp.ops, time.Now()
	if rr, err := o.canRoll(); err != nil {
		return rr, err
	}
	if peer := rp.cl.holdRolling(true, rollingLease, asked); peer != nil {
		return RollingRestart{Pool: rp.obs.Name(), State: "running", Done: []string{}, Started: peer.Since},
			fmt.Errorf("%w on another instance (%s), or ran since this request", errRollingRestart, peer.Holder)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.rolling != nil && o.rolling.State == "running" {
		return *o.rolling, errRollingRestart // started here meanwhile
	}
	rr := &RollingRestart{Pool: rp.obs.Name(), State: "running", Done: []string{}, Started: time.Now()}
	o.rolling = rr
	replace := o.replace
	go func() {
		var err error
		for i, b := range rp.Backends() {
			if i > 0 {
				rp.cl.holdRolling(false, rollingLease, time.Time{})
			}
			o.mu.Lock()
			rr.Current = b.Addr
			o.mu.Unlock()
			err = cycle(context.Background(), b.Addr, true, func(ctx context.Context) error { return replace(ctx, b) })
			if err != nil {
				err = fmt.Errorf("backend %s: %w", b.Addr, err)
				break
			}
			o.mu.Lock()
			rr.Done = append(rr.Done, b.Addr)
			o.mu.Unlock()
		}
		rp.cl.holdRolling(false, 0, time.Time{})
		o.mu.Lock()
		defer o.mu.Unlock()
		rr.Current, rr.Finished, rr.State = "", time.Now(), "done"
		if err != nil {
			rr.State, rr.Error = "failed", err.Error()
		}
	}()
	return *rr, nil
}

// canRoll says whether a rolling restart may start here.
func (o *poolOps) canRoll() (RollingRestart, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.replace == nil:
		return RollingRestart{}, errNoRestarter
	case o.rolling != nil && o.rolling.State == "running":
		return *o.rolling, errRollingRestart
	}
	return RollingRestart{}, nil
}

// rollingStatus is the pool's last rolling restart, if any.
func (rp runningPool) rollingStatus() (RollingRestart, bool) {
	rp.ops.mu.Lock()
	defer rp.ops.mu.Unlock()
	if rp.ops.rolling == nil {
		return RollingRestart{}, false
	}
	rr := *rp.ops.rolling
	rr.Done = append([]string(nil), rr.Done...)
	return rr, true
}
