package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// A dynamic pool takes its members from one of Caddy's upstream sources
// (dynamic a, srv, multi, or any module of http.reverse_proxy.upstreams).
// reverse_proxy would ask the source on every request and send traffic to
// whatever it answers at once; failover looks the source up in the
// background instead, at the source's refresh interval, from the moment the
// config has started (never in Provision: caddy validate looks nothing up),
// and changes the pool only by what changed:
//
//   - a new address is a new backend, probed, in service after its first
//     good heartbeat;
//   - an address no longer answered is drained (its requests in flight
//     finish), then dropped;
//   - an address answered again keeps its backend and all its state;
//   - a failed lookup, or one that answers nothing usable, keeps the last
//     good set.
//
// The pool is shared, like a static one, by every handler with the same
// source and heartbeat settings, across reloads.

// Lookups of a dynamic pool.
const (
	// DefaultLookupRefresh is the interval of a source that sets none
	// (Caddy's default for a and srv).
	DefaultLookupRefresh = time.Minute
	// lookupTimeout bounds one lookup.
	lookupTimeout = 5 * time.Second
	// memberDrain bounds the drain of a member that left: past it, it is
	// dropped with requests still in flight (they go on, unprobed).
	memberDrain = cycleStep
)

// dynamicPool keeps a pool's membership in step with its upstream source.
type dynamicPool struct {
	pool *healthcheck.Pool
	obs  *observer
	// members is what the selectors of the pool's handlers pick from
	members atomic.Pointer[members]
	// source is the source of the config that started last
	source atomic.Pointer[upstreamSource]

	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the lookup loop and the removals
}

// upstreamSource is a loaded source and how often to look it up.
type upstreamSource struct {
	reverseproxy.UpstreamSource
	every time.Duration
	log   *zap.Logger
}

func newDynamicPool(p *healthcheck.Pool, obs *observer) *dynamicPool {
	d := &dynamicPool{pool: p, obs: obs}
	d.members.Store(&members{})
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// start makes src the pool's source and, the first time, starts the
// lookups: one at once, then one every src.every.
func (d *dynamicPool) start(src *upstreamSource) {
	d.source.Store(src)
	d.once.Do(func() {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.run()
		}()
	})
}

// stop ends the lookups and drops at once the members still draining.
func (d *dynamicPool) stop() {
	d.once.Do(func() {}) // never start after a stop
	d.cancel()
	d.wg.Wait()
}

func (d *dynamicPool) run() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		d.refresh()
		// counted from the end of this lookup: the source's own cache
		// (a and srv keep an answer for refresh) has expired by then
		t.Reset(d.source.Load().every)
	}
}

// refresh looks the source up once and applies what changed.
func (d *dynamicPool) refresh() {
	src := d.source.Load()
	ctx, cancel := context.WithTimeout(d.ctx, lookupTimeout)
	defer cancel()
	ups, err := src.GetUpstreams(lookupRequest(ctx))
	if d.ctx.Err() != nil {
		return
	}
	addrs := d.usable(ups, src.log)
	if err != nil || len(addrs) == 0 {
		if err == nil {
			err = fmt.Errorf("no usable upstream in %d answered", len(ups))
		}
		src.log.Warn("dynamic upstreams: lookup failed; keeping the last good set",
			zap.String("pool", d.obs.Name()), zap.Int("members", len(d.members.Load().backends)), zap.Error(err))
		return
	}
	d.apply(addrs, src.log)
}

// lookupRequest is the request a source is asked with: a source takes
// one, for its placeholders; there is none in the background, so request
// placeholders are empty (global ones, like {env.*}, work).
func lookupRequest(ctx context.Context) *http.Request {
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	return r
}

// usable returns the addresses of ups a pool can take, each once, in
// order, at most MaxUpstreams.
func (d *dynamicPool) usable(ups []*reverseproxy.Upstream, log *zap.Logger) []string {
	addrs := make([]string, 0, len(ups))
	for _, u := range ups {
		switch err := checkDial(u.Dial); {
		case err != nil:
			log.Warn("dynamic upstreams: skipping an address", zap.String("pool", d.obs.Name()),
				zap.String("upstream", u.Dial), zap.Error(err))
		case slices.Contains(addrs, u.Dial):
		case len(addrs) == MaxUpstreams:
			log.Warn("dynamic upstreams: too many; the pool takes the first", zap.String("pool", d.obs.Name()),
				zap.Int("answered", len(ups)), zap.Int("max", MaxUpstreams))
			return addrs
		default:
			addrs = append(addrs, u.Dial)
		}
	}
	return addrs
}

// apply makes addrs the members: new ones are added, those that stay are
// kept as they are, those that left are drained and dropped.
func (d *dynamicPool) apply(addrs []string, log *zap.Logger) {
	cur := d.members.Load()
	next := &members{
		backends:  make([]*healthcheck.Backend, 0, len(addrs)),
		upstreams: make([]*reverseproxy.Upstream, 0, len(addrs)),
		dials:     make([]reverseproxy.DialInfo, 0, len(addrs)),
	}
	var added, removed []string
	for _, a := range addrs {
		if i := slices.IndexFunc(cur.backends, func(b *healthcheck.Backend) bool { return b.Addr == a }); i >= 0 {
			next.backends = append(next.backends, cur.backends[i])
			next.upstreams = append(next.upstreams, cur.upstreams[i])
			next.dials = append(next.dials, cur.dials[i])
			continue
		}
		u := &reverseproxy.Upstream{Dial: a, Host: new(reverseproxy.Host)}
		di, _ := dialInfo(u) // usable checked a
		next.backends = append(next.backends, d.pool.Add(a))
		next.upstreams = append(next.upstreams, u)
		next.dials = append(next.dials, di)
		added = append(added, a)
	}
	d.members.Store(next)
	for _, b := range cur.backends {
		if !slices.Contains(addrs, b.Addr) {
			removed = append(removed, b.Addr)
			d.remove(b, log)
		}
	}
	if len(added)+len(removed) > 0 {
		log.Info("dynamic upstreams changed", zap.String("pool", d.obs.Name()),
			zap.Strings("added", added), zap.Strings("removed", removed), zap.Int("members", len(addrs)))
	}
}

// remove drains b, then drops it, in the background.
func (d *dynamicPool) remove(b *healthcheck.Backend, log *zap.Logger) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(d.ctx, memberDrain)
		defer cancel()
		if err := d.pool.Remove(ctx, b); err != nil && d.ctx.Err() == nil {
			log.Warn("dynamic upstreams: dropping a member that left with requests still in flight",
				zap.String("pool", d.obs.Name()), zap.String("backend", b.Addr), zap.Int("requests", b.Active()))
		}
		d.obs.forget(b)
	}()
}

// sourceRefresh returns the lookup interval of a source's JSON (the
// shortest refresh it or, for multi, its sources set; the default for
// none), and checks what failover needs of it.
func sourceRefresh(raw json.RawMessage) (time.Duration, error) {
	var src struct {
		Source  string            `json:"source"`
		Refresh caddy.Duration    `json:"refresh"`
		Port    string            `json:"port"`
		Sources []json.RawMessage `json:"sources"`
	}
	if err := json.Unmarshal(raw, &src); err != nil {
		return 0, fmt.Errorf("dynamic upstreams: %v", err)
	}
	if strings.Contains(string(raw), "{http.") {
		return 0, fmt.Errorf("dynamic upstreams: request placeholders ({http.*}) are not supported: a failover pool looks its source up in the background, for all requests")
	}
	every := time.Duration(src.Refresh)
	if every != 0 && (every < MinLookupRefresh || every > MaxLookupRefresh) {
		return 0, fmt.Errorf("dynamic %s: refresh %v: must be a duration from %s to %s", src.Source, every,
			fmtDuration(MinLookupRefresh), fmtDuration(MaxLookupRefresh))
	}
	if src.Source == "a" && src.Port == "" {
		return 0, fmt.Errorf("dynamic a: no port: failover dials each address at one port; want dynamic a <name> <port>")
	}
	if every == 0 && src.Source != "multi" {
		every = DefaultLookupRefresh
	}
	for _, s := range src.Sources {
		d, err := sourceRefresh(s)
		if err != nil {
			return 0, err
		}
		if every == 0 || d < every {
			every = d
		}
	}
	if every == 0 {
		every = DefaultLookupRefresh
	}
	return every, nil
}
