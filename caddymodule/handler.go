package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/restart"
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

	// Name of the pool in metrics, events and the admin API. Default: the
	// site and path the handler serves (from its route's matchers), or
	// its server's name.
	Name string `json:"name,omitempty"`

	// Heartbeats sent to every backend. Defaults: GET / every 250ms with a
	// 200ms timeout, ejected after 2 misses, readmitted after 1 pass.
	Health *HealthConfig `json:"health,omitempty"`

	// Longest time a request waits for a backend when none is in service,
	// before it is answered 503 with Retry-After. Default 10s.
	Hold caddy.Duration `json:"hold,omitempty"`

	// Most requests held at once by the pool (handlers that front the same
	// upstreams with the same health settings share one); past it, 503 at
	// once. This also bounds the memory held request bodies take.
	// Default 1024.
	MaxHeld int `json:"max_held,omitempty"`

	// Extra attempts a request may make after its first, each on a backend
	// it has not tried. Attempts that provably never reached a backend
	// (connection refused) do not count. Default: every backend once.
	Retries *int `json:"retries,omitempty"`

	// Methods replayed on another backend after a failure that may have
	// reached the first one. Default: GET HEAD OPTIONS TRACE PUT DELETE.
	RetryMethods []string `json:"retry_methods,omitempty"`

	// Also replay requests that carry an Idempotency-Key header: the route
	// promises its backends keep the key's contract (execute a key at most
	// once, answer a repeat with the stored result: docs/idempotency.md).
	// true honours keys clients send; "generate" also gives a new key (a
	// random UUID) to every request whose method is not in retry_methods
	// that carries none, before its first attempt. Default false.
	IdempotencyKey IdempotencyKeys `json:"idempotency_key,omitempty"`

	// Hedge sends a replayable request that has had no answer after this
	// duration a second time, to a backend in service it has not tried;
	// the first answer wins and the other attempt is cancelled. "auto":
	// after the 95th percentile of the pool's recent answer latencies, at
	// least 10ms. Hedges and rescued replays together stay within the
	// pool's retry budget: 20% of its requests plus 10/s, over 10s.
	// Default off.
	Hedge string `json:"hedge,omitempty"`

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

	// Share restarts with the other Caddy instances that front a pool of
	// the same name and use the same storage (Caddy's storage option): one
	// restart per fault across them, one rolling restart per pool, and a
	// backend one restarts leaves the others' service at once. Default: on
	// with restart; off with spawn, whose processes are each instance's own.
	Cluster *bool `json:"cluster,omitempty"`

	// Spawn runs the backends: the built-in supervisor, one process per
	// backend, restarted when it exits or hangs, kept across reloads.
	// The upstreams are then the spawned backends'.
	Spawn *spawn.Config `json:"spawn,omitempty"`

	// Ramp a readmitted backend's share of new requests linearly over this
	// time. Default off.
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	pool    *healthcheck.Pool
	poolKey string
	// members is what the selector picks from: the handler's own for a
	// static pool, the pool's for a dynamic one
	members *atomic.Pointer[members]
	addrs   []string
	// the dynamic pool and source (and its JSON), if the upstreams are
	// dynamic
	dyn        *dynamicPool
	source     *upstreamSource
	sourceJSON string
	methods    map[string]struct{}
	hold       time.Duration
	maxHeld    int64
	retries    int
	// hedging: hedgeAfter, or auto from lat (hedge.go)
	hedging    bool
	hedgeAuto  bool
	hedgeAfter time.Duration
	// budget bounds hedges and rescues; lat tracks answer latencies;
	// both are the pool's
	budget *budget
	lat    *latencies
	// held counts the requests its pool holds now, for max_held
	held *atomic.Int64
	obs  *observer // the pool's metrics, events and counters
	ops  *poolOps  // the pool's operator actions
	cl   *member   // the pool's part in the cluster (peers.go)
	// storage is Caddy's, shared with other instances; set when the config
	// starts (App.commit), used only with Cluster on
	storage   certmagic.Storage
	ownsInner *reverseproxy.HTTPTransport
	restarter restart.Restarter // nil: none
	spawned   *spawn.Group
	// spawnAddrs and spawnKey identify the processes spawned, if any;
	// sharedSettings is everything a pool shared by two handlers of one
	// config does on their behalf (see App.add)
	spawnAddrs     []string
	spawnKey       string
	sharedSettings string
	logger         *zap.Logger
	// the embedded reverse_proxy was provisioned (its Cleanup needs that)
	proxyProvisioned bool

	// counts of requests; retired is closed when the config is cleaned
	// up (see retire)
	count   *counts
	retired chan struct{}
	idle    chan struct{}
}

// counts are a handler's request counts, behind a pointer: a module value
// is copied.
type counts struct {
	active atomic.Int64 // requests in ServeHTTP
	gone   atomic.Bool  // retired
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
	// Method of the heartbeat request, an RFC 9110 token. Default GET.
	Method string `json:"method,omitempty"`
	// Headers of the heartbeat request. A Host entry sets the Host header
	// (default: the address probed); User-Agent and Accept replace the
	// defaults; Content-Length and Transfer-Encoding are not allowed.
	Headers http.Header `json:"headers,omitempty"`
	// Body of the heartbeat request, sent with Content-Length, at most
	// 64KiB; only with a method that carries one, like POST or PUT.
	Body string `json:"body,omitempty"`
	// Port probed on each upstream's host instead of the upstream's own
	// (a separate health listener). Default: the upstream's port.
	Port int `json:"port,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.failover",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the config and builds what the handler needs, without
// effect on the world: the pool it joins (a running one, across a reload
// that keeps it, or a new one that probes nothing yet) and the spawned
// processes' slots, not started. The failover app starts them once the
// whole config has started (see App).
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.count = new(counts)
	h.retired = make(chan struct{})
	h.idle = make(chan struct{}, 1)
	if err := h.provisionSpawnConfig(); err != nil {
		return err
	}
	if err := h.checkManagedFields(); err != nil {
		return err
	}
	if err := h.Validate(); err != nil {
		return err
	}
	h.provisionRetryRules()
	if err := h.provisionHedge(); err != nil {
		return err
	}

	inner, err := h.provisionInnerTransport(ctx)
	if err != nil {
		return err
	}
	h.addrs = make([]string, len(h.Upstreams))
	for i, u := range h.Upstreams {
		h.addrs[i] = u.Dial
	}
	sourceKey, err := h.provisionSource(ctx)
	if err != nil {
		return err
	}
	cfg, err := h.Health.engineConfig()
	if err != nil {
		return err
	}
	ht, ok := inner.(*reverseproxy.HTTPTransport)
	if !ok {
		return fmt.Errorf("failover: transport %T: only the http transport is supported (heartbeats speak HTTP)", inner)
	}
	if h.hedging && ht.ProxyProtocol != "" {
		return fmt.Errorf("failover: hedge: not with the transport's proxy_protocol, whose header is per client connection")
	}
	tlsKey := ""
	if ht.TLS != nil && ht.Transport != nil && ht.Transport.TLSClientConfig != nil {
		// heartbeats trust what the proxy trusts: CAs, client certs, server name
		cfg.TLS = ht.Transport.TLSClientConfig.Clone()
		cfg.TLS.NextProtos = []string{"http/1.1"}
		b, err := json.Marshal(ht.TLS)
		if err != nil {
			return fmt.Errorf("failover: transport tls: %v", err)
		}
		tlsKey = string(b)
	}
	if err := h.provisionRestarter(ctx); err != nil {
		return err
	}
	rp, key, err := acquirePool(h.addrs, sourceKey, cfg, tlsKey)
	if err != nil {
		return err
	}
	h.pool, h.poolKey, h.held, h.obs, h.ops, h.dyn, h.cl = rp.Pool, key, rp.held, rp.obs, rp.ops, rp.dyn, rp.cl
	h.budget, h.lat = rp.budget, rp.lat
	if h.dyn != nil {
		h.members = &h.dyn.members
	} else {
		// reverse_proxy provisions these very upstreams in place
		h.members = new(atomic.Pointer[members])
		m := &members{backends: h.pool.Backends(), upstreams: h.Upstreams}
		if h.hedging {
			m.dials = make([]reverseproxy.DialInfo, len(h.Upstreams))
			for i, u := range h.Upstreams {
				if m.dials[i], err = dialInfo(u); err != nil {
					return err
				}
			}
		}
		h.members.Store(m)
	}
	if h.Spawn != nil {
		if h.spawned, err = spawn.Acquire(*h.Spawn, h.logger.Named("spawn")); err != nil {
			return fmt.Errorf("failover: spawn: %v", err)
		}
	}
	app, err := ctx.App("failover")
	if err != nil {
		return fmt.Errorf("failover: loading the failover app: %v", err)
	}
	if err := app.(*App).add(h); err != nil {
		return err
	}

	sel := &selector{h: h}
	h.Transport = &transport{inner: inner, h: h, sel: sel}
	h.LoadBalancing = &reverseproxy.LoadBalancing{
		SelectionPolicy: sel,
		// Caddy's loop ends after this many iterations; our selector ends
		// it sooner (see Select).
		Retries: math.MaxInt32,
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
// upstreams that are not one static TCP address or unix socket each (see
// validate.go).
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
	if h.DynamicUpstreamsRaw != nil {
		h.retries = everyBackend
	}
	if h.Retries != nil {
		h.retries = *h.Retries
	}
}

// provisionSource loads the dynamic upstream source, if any, for the
// pool to look up once the config has started (reverse_proxy does not get
// it: it would look it up on every request), and returns its key: the
// source's JSON.
func (h *Handler) provisionSource(ctx caddy.Context) (string, error) {
	if h.DynamicUpstreamsRaw == nil {
		return "", nil
	}
	key := string(h.DynamicUpstreamsRaw)
	every, err := sourceRefresh(h.DynamicUpstreamsRaw)
	if err != nil {
		return "", fmt.Errorf("failover: %v", err)
	}
	mod, err := ctx.LoadModule(&h.Handler, "DynamicUpstreamsRaw")
	if err != nil {
		return "", fmt.Errorf("failover: loading the dynamic upstream source: %v", err)
	}
	h.DynamicUpstreamsRaw, h.sourceJSON = nil, key
	h.source = &upstreamSource{UpstreamSource: mod.(reverseproxy.UpstreamSource), every: every, log: h.logger.Named("dynamic")}
	return key, nil
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

// Cleanup retires the handler: requests it holds go to the config that
// replaces it, and its pool and processes are released once its last
// request has ended (see retire).
func (h *Handler) Cleanup() error {
	// Caddy cleans up a module whose Provision failed; reverse_proxy's
	// Cleanup panics unless its own Provision ran, and would release
	// upstream hosts it never took.
	var err error
	if h.proxyProvisioned {
		err = h.Handler.Cleanup()
	}
	h.retire()
	return err
}

var errNoBackend = errors.New("no backend in service")

// ServeHTTP gives the request its failover state and lets reverse_proxy
// run its loop, in which our selector and transport take the decisions. A
// request that arrives while no backend is in service is held here, before
// reverse_proxy reads its body, so that it can still be handed to the
// config that replaces this one (see redispatch).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.count.active.Add(1)
	defer h.done()
	h.budget.record()
	st := getRequestState()
	defer putRequestState(st)
	if r.ContentLength == 0 {
		// no body (a server request's is never nil): spare reverse_proxy
		// wrapping and buffering it, as it would drop it later anyway
		r.Body = nil
	}
	// take the ready channel before looking: an admission in between
	// closes the one held, so no wake-up is lost
	if ready := h.pool.Ready(); !h.anyInService() {
		switch h.holdFor(r.Context(), st, ready, h.retired) {
		case holdRetired:
			return h.redispatch(w, r)
		case holdClientGone:
			return caddyhttp.Error(499, r.Context().Err())
		case holdExpired:
			return h.noBackend(w)
		}
	}
	if h.IdempotencyKey == KeysGenerate {
		h.giveKey(r)
	}
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	err := h.Handler.ServeHTTP(w, r, next)
	switch {
	case r.Context().Err() != nil && err != nil:
		return caddyhttp.Error(499, r.Context().Err())
	case st.retired:
		return h.redispatch(w, r)
	case st.noBackend:
		return h.noBackend(w)
	}
	return err
}

func (h *Handler) noBackend(w http.ResponseWriter) error {
	w.Header().Set("Retry-After", h.retryAfter())
	return caddyhttp.Error(http.StatusServiceUnavailable, errNoBackend)
}

// anyInService reports whether a backend is in service, without a lock.
func (h *Handler) anyInService() bool {
	for _, b := range h.members.Load().backends {
		if b.InService() {
			return true
		}
	}
	return false
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
