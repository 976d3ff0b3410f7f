package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/spawn"
	"github.com/crashonly/caddy-failover/healthcheck"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the failover handler; the health defaults live in healthcheck.
const (
	DefaultHold           = 10 * time.Second
	DefaultRequestBuffers = 64 << 10
	DefaultMaxHeld        = 1024
)

// DefaultRetryMethods are the idempotent methods of RFC 9110 §9.2.2.
var DefaultRetryMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}

// Handler is a reverse proxy that hides crashes, hangs and restarts of its
// backends from clients. It is Caddy's reverse_proxy (every reverse_proxy
// field is accepted, inline) with its own health engine, a selection policy
// that only picks backends in service and holds requests while none is, and
// a transport wrapper that turns a failure into a replay exactly when that
// is safe.
type Handler struct {
	reverseproxy.Handler

	// Heartbeats sent to every backend. Defaults: GET / every 250ms with a
	// 200ms timeout, ejected after 2 misses, readmitted after 1 pass.
	Health *HealthConfig `json:"health,omitempty"`

	// Longest time a request waits for a backend when none is in service,
	// before it is answered 503 with Retry-After. Default 10s.
	Hold caddy.Duration `json:"hold,omitempty"`

	// Most requests held at once; past it, 503 at once. This also bounds
	// the memory held request bodies take. Default 1024.
	MaxHeld int `json:"max_held,omitempty"`

	// Extra attempts a request may make after its first, each on a backend
	// it has not tried. Attempts that provably never reached a backend
	// (connection refused) do not count. Default: every backend once.
	Retries *int `json:"retries,omitempty"`

	// Methods replayed on another backend after a failure that may have
	// reached the first one. Default: GET HEAD OPTIONS TRACE PUT DELETE.
	RetryMethods []string `json:"retry_methods,omitempty"`

	// Also replay requests that carry an Idempotency-Key header: the route
	// promises its backends honour the key.
	IdempotencyKey bool `json:"idempotency_key,omitempty"`

	// Restart asks a supervisor to restart hung backends: a module in the
	// failover.restarters namespace (http, exec, signal, supervisord).
	// Default: the built-in supervisor when spawn is set, else none.
	RestartRaw json.RawMessage `json:"restart,omitempty" caddy:"namespace=failover.restarters inline_key=restarter"`

	// A hung backend is restarted once it has not answered for this long,
	// counted from its last good answer. Default 1s.
	RestartAfter caddy.Duration `json:"restart_after,omitempty"`

	// How long one restart may take (its lease) before it is requested
	// again. Default 30s.
	RestartTimeout caddy.Duration `json:"restart_timeout,omitempty"`

	// Most backends restarting at once. Default half the pool, at least 1.
	MaxRestarting int `json:"max_restarting,omitempty"`

	// Also restart backends whose process is gone. Default: only when the
	// restarter's supervisor does not restart exited processes itself.
	RestartCrashed *bool `json:"restart_crashed,omitempty"`

	// Spawn runs the backends: the built-in supervisor, one process per
	// backend, restarted when it exits or hangs, kept across reloads.
	// The upstreams are then the spawned backends'.
	Spawn *spawn.Config `json:"spawn,omitempty"`

	// Ramp a readmitted backend's share of new requests linearly over this
	// time. Default off.
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	pool      *healthcheck.Pool
	poolKey   string
	backends  []*healthcheck.Backend
	methods   map[string]struct{}
	hold      time.Duration
	maxHeld   int64
	retries   int
	ownsInner *reverseproxy.HTTPTransport
	spawned   *spawn.Group
	spawnCfg  spawn.Config // as acquired: the key to release
	logger    *zap.Logger
	// the embedded reverse_proxy was provisioned (its Cleanup needs that)
	proxyProvisioned bool
}

// HealthConfig configures heartbeats; names follow reverse_proxy's.
type HealthConfig struct {
	// Path of the heartbeat request. Default "/" accepting any status
	// below 500 (a backend that answers is alive).
	URI string `json:"uri,omitempty"`
	// Time between beats, jittered by ±10%. Default 250ms.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Time one beat may take, connect included. Default 200ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Consecutive missed beats that eject a backend. Default 2.
	Fails int `json:"fails,omitempty"`
	// Consecutive good beats that readmit it. Default 1.
	Passes int `json:"passes,omitempty"`
	// Expected status: a code (200) or a class (2xx). Default 2xx when
	// uri is set.
	Status string `json:"status,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.failover",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision builds the health pool (or joins the one an unchanged earlier
// config left running), then provisions reverse_proxy with our selection
// policy and transport preset.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	builtin, err := h.provisionSpawn()
	if err != nil {
		return err
	}
	if err := h.checkManagedFields(); err != nil {
		return err
	}
	if err := h.Validate(); err != nil {
		return err
	}
	h.provisionRetryRules()

	inner, err := h.provisionInnerTransport(ctx)
	if err != nil {
		return err
	}
	addrs := make([]string, len(h.Upstreams))
	for i, u := range h.Upstreams {
		addrs[i] = u.Dial
	}
	cfg, err := h.Health.engineConfig()
	if err != nil {
		return err
	}
	cfg.SlowStart = time.Duration(h.SlowStart)
	ht, ok := inner.(*reverseproxy.HTTPTransport)
	if !ok {
		return fmt.Errorf("failover: transport %T: only the http transport is supported (heartbeats speak HTTP)", inner)
	}
	if ht.TLS != nil && ht.Transport != nil && ht.Transport.TLSClientConfig != nil {
		// heartbeats trust what the proxy trusts: CAs, client certs, server name
		cfg.TLS = ht.Transport.TLSClientConfig.Clone()
		cfg.TLS.NextProtos = []string{"http/1.1"}
	}
	h.pool, h.poolKey, err = acquirePool(addrs, cfg, h.logger)
	if err != nil {
		return err
	}
	h.backends = h.pool.Backends()
	if h.spawned != nil {
		backends := h.backends
		h.spawned.SetOnExit(func(i int, err error) { backends[i].Report(healthcheck.Gone, err) })
	}
	if err := h.provisionRestarts(ctx, builtin); err != nil {
		return err
	}

	n := len(h.backends)
	h.Transport = &transport{inner: inner, h: h}
	h.LoadBalancing = &reverseproxy.LoadBalancing{
		SelectionPolicy: &selector{h: h},
		// Caddy's loop ends after this many iterations; our selector ends
		// it sooner. Uncounted (refused) attempts are at most one per backend.
		Retries: h.retries + n + 1,
		// Replays are decided by the transport (DialError); nothing else
		// may be retried, not even a GET whose body could not be kept.
		RetryMatchRaw: caddyhttp.RawMatcherSets{caddy.ModuleMap{"not": json.RawMessage(`[{}]`)}},
	}
	if h.RequestBuffers == 0 {
		h.RequestBuffers = DefaultRequestBuffers
	}
	h.proxyProvisioned = true
	return h.Handler.Provision(ctx)
}

// checkManagedFields refuses reverse_proxy settings that failover owns and
// upstreams that are not one static TCP address each (see validate.go).
func (h *Handler) checkManagedFields() error { return h.checkUpstreams() }

// Validate checks failover's own settings against their bounds (see
// validate.go).
func (h *Handler) Validate() error { return h.validate() }

func (h *Handler) provisionRetryRules() {
	methods := h.RetryMethods
	if len(methods) == 0 {
		methods = DefaultRetryMethods
	}
	h.methods = make(map[string]struct{}, len(methods))
	for _, m := range methods {
		h.methods[m] = struct{}{}
	}
	h.hold = time.Duration(h.Hold)
	if h.hold == 0 {
		h.hold = DefaultHold
	}
	h.maxHeld = int64(h.MaxHeld)
	if h.maxHeld == 0 {
		h.maxHeld = DefaultMaxHeld
	}
	h.retries = len(h.Upstreams) - 1
	if h.Retries != nil {
		h.retries = *h.Retries
	}
}

// provisionInnerTransport loads the configured transport (default: Caddy's
// http transport) that our wrapper delegates to.
func (h *Handler) provisionInnerTransport(ctx caddy.Context) (http.RoundTripper, error) {
	if h.TransportRaw != nil {
		mod, err := ctx.LoadModule(&h.Handler, "TransportRaw")
		if err != nil {
			return nil, fmt.Errorf("failover: loading transport: %v", err)
		}
		h.TransportRaw = nil
		return mod.(http.RoundTripper), nil
	}
	t := new(reverseproxy.HTTPTransport)
	if err := t.Provision(ctx); err != nil {
		return nil, fmt.Errorf("failover: provisioning default transport: %v", err)
	}
	h.ownsInner = t
	return t, nil
}

// Cleanup releases the pool; its probers stop when no config uses it.
func (h *Handler) Cleanup() error {
	// Caddy cleans up a module whose Provision failed; reverse_proxy's
	// Cleanup panics unless its own Provision ran, and would release
	// upstream hosts it never took.
	var err error
	if h.proxyProvisioned {
		err = h.Handler.Cleanup()
	}
	if h.poolKey != "" {
		releasePool(h.poolKey)
	}
	if h.spawned != nil {
		spawn.Release(h.spawnCfg)
	}
	if h.ownsInner != nil {
		_ = h.ownsInner.Cleanup()
	}
	return err
}

var errNoBackend = errors.New("no backend in service")

// ServeHTTP gives the request its failover state and lets reverse_proxy
// run its loop, in which our selector and transport take the decisions.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	st := getRequestState()
	defer putRequestState(st)
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	if r.ContentLength == 0 {
		// no body (a server request's is never nil): spare reverse_proxy
		// wrapping and buffering it, as it would drop it later anyway
		r.Body = nil
	}
	err := h.Handler.ServeHTTP(w, r, next)
	switch {
	case r.Context().Err() != nil && err != nil:
		return caddyhttp.Error(499, r.Context().Err())
	case st.noBackend:
		w.Header().Set("Retry-After", h.retryAfter())
		return caddyhttp.Error(http.StatusServiceUnavailable, errNoBackend)
	}
	return err
}

// retryAfter is the Retry-After of a 503 that ends a hold: when the pool
// expects a backend back (from observed restart times), at least a second.
func (h *Handler) retryAfter() string {
	secs := int((h.pool.RetryAfter() + time.Second - 1) / time.Second)
	return strconv.Itoa(max(secs, 1))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
