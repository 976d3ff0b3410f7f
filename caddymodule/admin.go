package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"

	"github.com/caddyserver/caddy/v2"

	"github.com/crashonly/caddy-failover/healthcheck"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves GET /failover/pools on Caddy's admin endpoint: every
// running pool with its backends' states. Admin modules are made anew on
// every config load, so it reads the package-level pools.
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
	return []caddy.AdminRoute{{Pattern: "/failover/pools", Handler: caddy.AdminHandlerFunc(servePools)}}
}

// PoolStatus is one pool as the admin API shows it.
type PoolStatus struct {
	// ID is unique per pool for the life of the process: a reload that
	// keeps a pool keeps its ID.
	ID uint64 `json:"id"`
	// Held is the number of requests waiting for a backend now.
	Held     int64                  `json:"held"`
	Backends []healthcheck.Snapshot `json:"backends"`
}

func servePools(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	out := []PoolStatus{}
	pools.Range(func(_, v any) bool {
		p := v.(runningPool)
		out = append(out, PoolStatus{ID: p.ID(), Held: p.held.Load(), Backends: p.Snapshot()})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(out)
}

var _ caddy.AdminRouter = adminAPI{}
