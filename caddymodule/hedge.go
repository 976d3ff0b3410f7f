package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// Hedging (hedge <duration|auto>): a replayable request whose first
// attempt has no answer after the threshold gets a second attempt on a
// peer, a backend in service that the request has not tried; the first
// answer wins and the other attempt is cancelled. A hedge is an extra
// attempt: the pool's retry budget (budget.go) must allow it.
//
// The hedge is a copy of the first attempt's request (headers as
// reverse_proxy prepared them for the first backend, the body kept whole),
// sent to the peer's dial address. Its 1xx answers are not forwarded. The
// winner's answer goes to the client untouched; the loser is cancelled,
// and its cancellation is not evidence against its backend, only a reason
// to send that backend a heartbeat now. A hedge that fails by itself only
// asks for a heartbeat of its backend too.
//
// The threshold is checked by one timer per hedged request, reused with
// the request's hedger (no allocation): the timer costs a heap insertion
// and removal; reverse_proxy's own loop has no per-request clock to
// piggyback on.

// hedgeAuto is the hedge setting that derives the threshold from the
// pool's recent answer latencies (latency.go).
const hedgeAuto = "auto"

// Who answered first.
const (
	firstWon int32 = iota + 1
	hedgeWon
)

var (
	errHedgeWon  = errors.New("the hedge answered first")
	errHedgeLost = errors.New("the first attempt answered first")
)

// dialInfoKey is the context key under which reverse_proxy (v2.11.9) hands
// the dial address to its transport: the hedge replaces it with the peer's.
// checkDialInfoKey verifies at provision time that it still works.
const dialInfoKey caddy.CtxKey = "reverse_proxy.dial_info"

func checkDialInfoKey() error {
	di := reverseproxy.DialInfo{Address: "check:1"}
	if got, ok := reverseproxy.GetDialInfo(context.WithValue(context.Background(), dialInfoKey, di)); !ok || got.Address != di.Address {
		return fmt.Errorf("failover: hedge: this Caddy's reverse_proxy no longer takes its dial address from %q; hedging is not available with it", string(dialInfoKey))
	}
	return nil
}

// traceKey is the key of net/http/httptrace's client trace, learned by
// asking for one: a hedge must not carry the first attempt's trace, whose
// 1xx hook writes to the client's response.
var traceKey = func() any {
	var k keyRecorder
	httptrace.ContextClientTrace(&k)
	return k.key
}()

type keyRecorder struct {
	context.Context
	key any
}

func (k *keyRecorder) Value(key any) any { k.key = key; return nil }

// hedgeContext is the hedge's context: the request's (cancelled when the
// client leaves), with the peer's dial address and no client trace.
type hedgeContext struct {
	context.Context
	dial reverseproxy.DialInfo
}

func (c *hedgeContext) Value(key any) any {
	switch key {
	case any(dialInfoKey):
		return c.dial
	case traceKey:
		return nil
	}
	return c.Context.Value(key)
}

// provisionHedge reads the hedge setting (validated) and prepares the
// peers' dial addresses.
func (h *Handler) provisionHedge() error {
	switch h.Hedge {
	case "":
		return nil
	case hedgeAuto:
		h.hedgeAuto = true
	default:
		d, err := caddy.ParseDuration(h.Hedge)
		if err != nil {
			return fmt.Errorf("failover: hedge %q: %v", h.Hedge, err)
		}
		h.hedgeAfter = d
	}
	if err := checkDialInfoKey(); err != nil {
		return err
	}
	// a dynamic pool may grow past one member
	h.hedging = len(h.Upstreams) > 1 || h.DynamicUpstreamsRaw != nil
	return nil
}

// dialInfo is what reverse_proxy puts in the context of a request it sends
// to u: a hedge sends its copy to the peer's. Members get theirs when they
// join (at provision, or at a lookup), not per hedge.
func dialInfo(u *reverseproxy.Upstream) (reverseproxy.DialInfo, error) {
	na, err := caddy.ParseNetworkAddress(u.Dial)
	if err != nil {
		return reverseproxy.DialInfo{}, fmt.Errorf("failover: upstream %q: %v", u.Dial, err)
	}
	return reverseproxy.DialInfo{Upstream: u, Network: na.Network, Address: na.JoinHostPort(0),
		Host: na.Host, Port: strconv.Itoa(int(na.StartPort))}, nil
}

// hedgeThreshold is how long a request waits before it is hedged now; 0:
// not yet (auto has seen too few answers).
func (h *Handler) hedgeThreshold() time.Duration {
	if h.hedgeAuto {
		return h.lat.after()
	}
	return h.hedgeAfter
}

// hedged counts a hedge's outcome.
func (h *Handler) hedged(result string) {
	mHedges.WithLabelValues(h.obs.Name(), result).Inc()
}

// roundTrip sends the attempt of a replayable request to b, hedged when the
// handler hedges and the request may be: no upgrade (a hedge cannot
// share a connection's takeover) and no proxy protocol header naming the
// client per connection. It returns the answer and the backend that gave
// it. A request reaches it only when replayable: its body, if any, is
// whole in memory.
func (t *transport) roundTrip(req *http.Request, parent context.Context, st *requestState, b *healthcheck.Backend) (*http.Response, *healthcheck.Backend, error) {
	h := t.h
	if !h.hedging || req.Header.Get("Upgrade") != "" {
		res, err := t.inner.RoundTrip(req)
		return res, b, err
	}
	var start time.Time
	if h.hedgeAuto { // auto learns from every answer's latency
		start = time.Now()
	}
	after := h.hedgeThreshold()
	if after == 0 {
		res, err := t.inner.RoundTrip(req)
		if err == nil {
			h.lat.record(time.Since(start))
		}
		return res, b, err
	}
	hg := hedgers.Get().(*hedger)
	defer hg.release()
	if !hg.arm(t, req, parent, st) {
		res, err := t.inner.RoundTrip(req)
		return res, b, err
	}
	hg.timer.Reset(after)
	res, err := t.inner.RoundTrip(req)
	hg.over.Store(true)
	if !hg.timer.Stop() {
		<-hg.decided // fire has run: wait until it no longer reads st
	}
	if !hg.launched {
		if err == nil && h.hedgeAuto {
			h.lat.record(time.Since(start))
		}
		return res, b, err
	}
	if err == nil && hg.winner.CompareAndSwap(0, firstWon) {
		hg.cancel(errHedgeLost)
		<-hg.done
		h.hedged("lost")
		if h.hedgeAuto {
			h.lat.record(time.Since(start))
		}
		return res, b, nil
	}
	if err == nil { // the hedge answered first
		answered(b, res)
		res.Body.Close()
	}
	<-hg.done // a failed first attempt waits for the hedge too
	if hg.winner.Load() == hedgeWon {
		switch cause := context.Cause(req.Context()); {
		case err != nil && cause == nil:
			// the first failed by itself (neither lost nor rescued):
			// evidence against b all the same
			t.failed(parent, b, st, err, false)
		case cause == errHedgeWon:
			// no evidence, but a question: b's heartbeat goes out now,
			// as its cancelled attempts no longer show it waiting (a
			// frozen backend's beats would otherwise wait for its
			// traffic's cover to run out)
			b.Probe()
		}
		h.hedged("won")
		if h.hedgeAuto {
			h.lat.record(time.Since(start))
		}
		return hg.res, hg.peer, nil
	}
	return nil, b, err
}

// hedger is one request's hedge: the timer that fires it and what the two
// attempts share. Pooled with its timer.
type hedger struct {
	timer *time.Timer

	// set by the request's goroutine before the timer is armed
	t           *transport
	st          *requestState
	req         *http.Request // the first attempt
	parent      context.Context
	cancelFirst context.CancelCauseFunc
	body        []byte
	over        atomic.Bool // the first attempt has returned

	// set by fire before it signals decided
	launched bool
	peer     *healthcheck.Backend
	cancel   context.CancelCauseFunc
	flight   healthcheck.Flight

	winner  atomic.Int32
	res     *http.Response // the hedge's answer when it won, set before done
	decided chan struct{}  // fire has decided whether to hedge
	done    chan struct{}  // the hedge attempt has ended
}

var hedgers = sync.Pool{New: func() any {
	hg := &hedger{decided: make(chan struct{}, 1), done: make(chan struct{}, 1)}
	hg.timer = time.AfterFunc(time.Hour, hg.fire)
	hg.timer.Stop()
	return hg
}}

// arm readies the hedge of req, whose first attempt's context carries its
// cancel in st.flight: it keeps the body for the second send, and sets the
// URL's scheme as the inner transport would, so that the first attempt does
// not write the request the hedge copies. false: the body could not be
// read whole; the first attempt goes alone.
func (hg *hedger) arm(t *transport, req *http.Request, parent context.Context, st *requestState) bool {
	hg.t, hg.st, hg.req, hg.parent, hg.cancelFirst = t, st, req, parent, st.flight.Cancel
	if ht, ok := t.inner.(*reverseproxy.HTTPTransport); ok {
		ht.SetScheme(req)
	}
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength <= 0 {
		return true
	}
	// a replayable body is whole in memory (shorter than request_buffers):
	// this copy is what both attempts send
	hg.body = make([]byte, req.ContentLength)
	n, err := io.ReadFull(req.Body, hg.body)
	req.Body = io.NopCloser(bytes.NewReader(hg.body[:n]))
	return err == nil
}

// fire runs when the first attempt has waited the threshold: it picks a
// peer, asks the budget, and sends the hedge there.
func (hg *hedger) fire() {
	t := hg.t
	if hg.over.Load() || hg.parent.Err() != nil {
		hg.decided <- struct{}{}
		return
	}
	m := t.h.members.Load()
	i := t.sel.pick(hg.st, m.backends, false) // hedges are of replayable requests
	if i < 0 {
		hg.decided <- struct{}{}
		return
	}
	if !t.h.budget.allow() {
		t.h.hedged("denied")
		hg.decided <- struct{}{}
		return
	}
	peer, di := m.backends[i], m.dials[i]
	ctx, cancel := context.WithCancelCause(&hedgeContext{Context: hg.parent, dial: di})
	req := hg.req.Clone(ctx)
	req.URL.Host = di.Address
	if req.URL.Scheme == "http" && di.Port == "80" || req.URL.Scheme == "https" && di.Port == "443" {
		req.URL.Host = di.Host // as reverse_proxy directs a request
	}
	if hg.body != nil {
		req.Body = io.NopCloser(bytes.NewReader(hg.body))
	}
	hg.peer, hg.cancel, hg.launched = peer, cancel, true
	hg.flight.Cancel, hg.flight.Replayable = cancel, true // hedges are of replayable requests only
	peer.Acquire()
	peer.Begin(&hg.flight)
	hg.decided <- struct{}{}

	res, err := t.inner.RoundTrip(req)
	cut := peer.End(&hg.flight) // the first attempt goes on: a cut hedge is only lost
	if err == nil && cut == nil && hg.winner.CompareAndSwap(0, hedgeWon) {
		hg.res = res // its backend is released when its body is closed
		hg.cancelFirst(errHedgeWon)
		hg.done <- struct{}{}
		return
	}
	switch {
	case err == nil:
		answered(peer, res) // alive, only late
		res.Body.Close()
	case cut == nil && context.Cause(ctx) != errHedgeLost && hg.parent.Err() == nil:
		peer.Probe() // failed by itself: a heartbeat tells why
	}
	cancel(nil)
	peer.ReleaseActive()
	hg.done <- struct{}{}
}

// release returns hg to the pool; its timer is stopped and its hedge, if
// any, ended.
func (hg *hedger) release() {
	hg.t, hg.st, hg.req, hg.parent, hg.cancelFirst, hg.body = nil, nil, nil, nil, nil, nil
	hg.launched, hg.peer, hg.cancel, hg.res = false, nil, nil, nil
	hg.flight = healthcheck.Flight{}
	hg.over.Store(false)
	hg.winner.Store(0)
	hedgers.Put(hg)
}
