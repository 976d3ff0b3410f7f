package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves failover's routes on Caddy's admin endpoint (with its
// access rules):
//
//	GET  /failover/pools                          every pool, every backend
//	POST /failover/backends/<host:port>/drain     ?wait=30s: 200 once idle, 202 if not
//	POST /failover/backends/<host:port>/maint
//	POST /failover/backends/<host:port>/ready
//	POST /failover/backends/<host:port>/restart   drain, restart, back in service
//	POST /failover/pools/<name>/rolling-restart   one backend at a time; 202
//	GET  /failover/pools/<name>/rolling-restart   its progress
//
// A backend in several pools is acted on in all of them; the answer names
// them. Admin modules are made anew on every config load, so it reads the
// package-level pools.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.failover",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/failover/pools", Handler: caddy.AdminHandlerFunc(servePools)},
		{Pattern: "/failover/pools/", Handler: caddy.AdminHandlerFunc(servePool)},
		{Pattern: "/failover/backends/", Handler: caddy.AdminHandlerFunc(serveBackend)},
	}
}

// PoolStatus is one pool as the admin API shows it.
type PoolStatus struct {
	// Name names the pool in metrics, events and this API.
	Name string `json:"name"`
	// ID is unique per pool for the life of the process: a reload that
	// keeps a pool keeps its ID.
	ID uint64 `json:"id"`
	// Held is the number of requests waiting for a backend now.
	Held int64 `json:"held"`
	// Budget is the pool's retry budget for hedges and rescues.
	Budget BudgetStatus `json:"budget"`
	// HedgeAuto is the threshold of hedge auto now, once the pool has
	// seen enough answers of handlers that hedge auto.
	HedgeAuto string          `json:"hedge_auto,omitempty"`
	Backends  []BackendStatus `json:"backends"`
}

// BackendStatus is one backend of a pool as the admin API shows it.
type BackendStatus struct {
	healthcheck.Snapshot
	// Pid of the process, when failover's built-in supervisor runs it.
	Pid int `json:"pid,omitempty"`
	// Ejections by reason, replays of requests that failed on it, restart
	// requests made for it: since the pool was made.
	Ejections map[string]uint64 `json:"ejections"`
	Replays   uint64            `json:"replays"`
	Restarts  uint64            `json:"restarts"`
}

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func servePools(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method not allowed")
	}
	out := []PoolStatus{}
	pools.Range(func(_, v any) bool {
		out = append(out, v.(runningPool).status())
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return writeJSON(w, http.StatusOK, out)
}

func (rp runningPool) status() PoolStatus {
	ps := PoolStatus{Name: rp.obs.Name(), ID: rp.ID(), Held: rp.held.Load(), Budget: rp.budget.status()}
	if d := rp.lat.after(); d > 0 {
		ps.HedgeAuto = d.String()
	}
	for i, s := range rp.Snapshot() {
		bs := BackendStatus{Snapshot: s, Ejections: map[string]uint64{},
			Replays: rp.obs.replays[i].Load(), Restarts: rp.obs.restarts[i].Load(), Pid: spawnedPid(s.Addr)}
		for reason := range rp.obs.ejections[i] {
			if n := rp.obs.ejections[i][reason].Load(); n > 0 {
				bs.Ejections[healthcheck.Reason(reason).String()] = n
			}
		}
		ps.Backends = append(ps.Backends, bs)
	}
	return ps
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// servePool serves /failover/pools/<name>/rolling-restart.
func servePool(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, "/failover/pools/")
	name, ok := strings.CutSuffix(rest, "/rolling-restart")
	if !ok || name == "" {
		return apiError(http.StatusNotFound, "unknown path %s: expected /failover/pools/<name>/rolling-restart", r.URL.Path)
	}
	rp, found := poolNamed(name)
	if !found {
		return apiError(http.StatusNotFound, "no failover pool named %q (see GET /failover/pools)", name)
	}
	switch r.Method {
	case http.MethodGet:
		rr, ok := rp.rollingStatus()
		if !ok {
			return apiError(http.StatusNotFound, "pool %q has had no rolling restart", name)
		}
		return writeJSON(w, http.StatusOK, rr)
	case http.MethodPost:
		rr, err := rp.startRollingRestart()
		switch {
		case errors.Is(err, errRollingRestart):
			return apiError(http.StatusConflict, "pool %q: %v (started %s; GET this URL for its progress)", name, err, rr.Started.Format(time.RFC3339))
		case err != nil:
			return apiError(http.StatusConflict, "pool %q: %v", name, err)
		}
		return writeJSON(w, http.StatusAccepted, rr)
	}
	return apiError(http.StatusMethodNotAllowed, "method not allowed: GET or POST")
}

func poolNamed(name string) (runningPool, bool) {
	var found runningPool
	ok := false
	pools.Range(func(_, v any) bool {
		rp := v.(runningPool)
		if rp.Started() && rp.obs.Name() == name {
			found, ok = rp, true
			return false
		}
		return true
	})
	return found, ok
}

// BackendAction is the answer to an action on a backend.
type BackendAction struct {
	Backend string   `json:"backend"`
	Action  string   `json:"action"`
	Pools   []string `json:"pools"`
	// InFlight is the number of requests still in flight on the backend
	// (drain), across its pools.
	InFlight int `json:"in_flight"`
}

// maxDrainWait bounds ?wait= of a drain.
const maxDrainWait = 10 * time.Minute

// serveBackend serves POST /failover/backends/<host:port>/<action>.
func serveBackend(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, "/failover/backends/")
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return apiError(http.StatusNotFound, "unknown path %s: expected /failover/backends/<host:port>/drain|maint|ready|restart", r.URL.Path)
	}
	addr, action := rest[:i], rest[i+1:]
	if r.Method != http.MethodPost {
		return apiError(http.StatusMethodNotAllowed, "method not allowed: POST")
	}
	type member struct {
		rp runningPool
		b  *healthcheck.Backend
	}
	var members []member
	pools.Range(func(_, v any) bool {
		rp := v.(runningPool)
		if !rp.Started() {
			return true
		}
		for _, b := range rp.Backends() {
			if b.Addr == addr {
				members = append(members, member{rp, b})
			}
		}
		return true
	})
	if len(members) == 0 {
		return apiError(http.StatusNotFound, "no failover pool has backend %q (see GET /failover/pools)", addr)
	}
	out := BackendAction{Backend: addr, Action: action}
	for _, m := range members {
		out.Pools = append(out.Pools, m.rp.obs.Name())
	}
	switch action {
	case "drain":
		wait := 30 * time.Second
		if v := r.URL.Query().Get("wait"); v != "" {
			d, err := caddy.ParseDuration(v)
			if err != nil || d < 0 || d > maxDrainWait {
				return apiError(http.StatusBadRequest, "wait %q: expected a duration from 0s to %v", v, maxDrainWait)
			}
			wait = d
		}
		for _, m := range members {
			m.rp.Drain(m.b)
		}
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		defer cancel()
		for _, m := range members {
			_ = m.rp.WaitIdle(ctx, m.b)
		}
		for _, m := range members {
			out.InFlight += m.b.Active()
		}
		if out.InFlight > 0 {
			return writeJSON(w, http.StatusAccepted, out)
		}
	case "maint":
		for _, m := range members {
			m.rp.Maint(m.b)
		}
	case "ready":
		for _, m := range members {
			m.rp.Return(m.b)
		}
	case "restart":
		replace := members[0].rp.ops.replacer()
		if replace == nil {
			return apiError(http.StatusConflict, "backend %s: %v", addr, errNoRestarter)
		}
		b := members[0].b
		if err := cycle(r.Context(), addr, false, func(ctx context.Context) error { return replace(ctx, b) }); err != nil {
			return apiError(http.StatusBadGateway, "backend %s: restart: %v", addr, err)
		}
	default:
		return apiError(http.StatusNotFound, "unknown action %q: expected drain, maint, ready or restart", action)
	}
	return writeJSON(w, http.StatusOK, out)
}

var _ caddy.AdminRouter = adminAPI{}

func spawnedPid(addr string) int { return spawn.PidAt(addr) }
