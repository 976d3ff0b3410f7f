package caddymodule

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// selector is the selection policy failover presets on reverse_proxy. It
// runs on every attempt: round-robin over backends in service, never one
// this request already failed on (in that backend's current life), and when
// there is none it holds the request until a backend enters service.
type selector struct {
	h    *Handler
	next atomic.Uint64
}

// Select returns the backend for the next attempt, or nil to end the loop.
func (s *selector) Select(_ reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	st, _ := r.Context().Value(stateKey{}).(*requestState)
	if st == nil {
		st = getRequestState() // not through our ServeHTTP: no memory across attempts
		defer putRequestState(st)
	}
	h := s.h
	if st.stopped {
		// reverse_proxy tries again after a dial error (a replay) whatever
		// Select said, up to its retries; an address it cannot dial ends
		// its loop at once
		return endLoop
	}
	if st.attempts == 0 {
		st.replayable = h.replayable(r)
	}
	// a request that may not be replayed avoids hushed backends
	careful := !st.replayable
	for !st.stopped {
		m := h.members.Load()
		if st.attempts-st.free > m.retries(h.retries) {
			break
		}
		ready := h.pool.Ready()
		if i := s.pick(st, m.backends, careful); i >= 0 {
			b := m.backends[i]
			st.tried = append(st.tried, tried{b, b.Gen()})
			st.current = b
			st.attempts++
			return m.upstreams[i]
		}
		// A request without a body can still be handed to the config
		// that replaces this one; one whose body reverse_proxy has
		// taken stays, and is served by this config's backends.
		var retired <-chan struct{}
		if r.Body == nil {
			retired = h.retired
		}
		res := h.holdFor(r.Context(), st, ready, retired)
		if res == holdReady {
			continue
		}
		st.noBackend = res == holdExpired
		st.retired = res == holdRetired
		break
	}
	st.stopped = true
	st.current = nil
	return nil
}

// endLoop is an upstream reverse_proxy cannot make a dial address of.
var endLoop = &reverseproxy.Upstream{Dial: "failover.stopped:1-2"}

// pick returns the next backend in service that st has not failed on, or -1.
// A backend on probation (slow start) takes only its share of its turns,
// and a quiet one (requests wait on it, no answer lately: maybe frozen)
// none, unless nothing else is left; with careful (a request that may not
// be replayed), nor does a hushed one (healthcheck.Backend.Hushed).
func (s *selector) pick(st *requestState, backends []*healthcheck.Backend, careful bool) int {
	n := len(backends)
	if n == 0 {
		return -1
	}
	var now time.Time
	if careful {
		now = time.Now()
	}
	i := int(s.next.Add(1) % uint64(n))
	fallback := -1
	for range n {
		b := backends[i]
		if b.InService() && !st.hasTried(b, b.Gen()) {
			if !b.Quiet() && !(careful && b.Hushed(now)) && (!b.InProbation() || rand.Float64() < b.Share(time.Now())) {
				return i
			}
			if fallback < 0 {
				fallback = i
			}
		}
		if i++; i == n {
			i = 0
		}
	}
	return fallback
}

// members is a pool as the selector sees it: its backends and, in the
// same order, the upstreams reverse_proxy dials for them. A dynamic pool's
// is replaced whole when its membership changes, never changed in place,
// so that a request reads it with one atomic load.
type members struct {
	backends  []*healthcheck.Backend
	upstreams []*reverseproxy.Upstream
	// dials are the upstreams' dial addresses, for hedges (hedge.go); a
	// static pool's only when its handler hedges
	dials []reverseproxy.DialInfo
}

// everyBackend is the retries that allow one attempt on every member.
const everyBackend = -1

// retries is the most retries a request may make: n, or with everyBackend
// one per member but the first.
func (m *members) retries(n int) int {
	if n == everyBackend {
		return len(m.backends) - 1
	}
	return n
}
