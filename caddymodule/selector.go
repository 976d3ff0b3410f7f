package caddymodule

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
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
func (s *selector) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
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
	for !st.stopped {
		if st.attempts-st.free > h.retries {
			break
		}
		ready := h.pool.Ready()
		if i := s.pick(st); i >= 0 {
			b := h.backends[i]
			st.tried = append(st.tried, tried{i, b.Gen()})
			st.current = b
			st.attempts++
			return pool[i]
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
// none, unless nothing else is left.
func (s *selector) pick(st *requestState) int {
	backends := s.h.backends
	n := len(backends)
	i := int(s.next.Add(1) % uint64(n))
	fallback := -1
	for range n {
		b := backends[i]
		if b.InService() && !st.hasTried(i, b.Gen()) {
			if !b.Quiet() && (!b.InProbation() || rand.Float64() < b.Share(time.Now())) {
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
