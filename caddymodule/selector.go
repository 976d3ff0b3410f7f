package caddymodule

import (
	"context"
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
	held atomic.Int64 // requests holding now
}

// Select returns the backend for the next attempt, or nil to end the loop.
func (s *selector) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	st, _ := r.Context().Value(stateKey{}).(*requestState)
	if st == nil {
		st = getRequestState() // not through our ServeHTTP: no memory across attempts
		defer putRequestState(st)
	}
	h := s.h
	for !st.stopped {
		if st.attempts-min(st.unsent, len(h.backends)) > h.retries {
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
		if !s.hold(r.Context(), st, ready) {
			break
		}
	}
	st.stopped = true
	st.current = nil
	return nil
}

// pick returns the next backend in service that st has not failed on, or -1.
// A backend on probation (slow start) takes only its share of its turns,
// unless nothing else is left.
func (s *selector) pick(st *requestState) int {
	backends := s.h.backends
	n := len(backends)
	i := int(s.next.Add(1) % uint64(n))
	fallback := -1
	for range n {
		b := backends[i]
		if b.InService() && !st.hasTried(i, b.Gen()) {
			if !b.InProbation() || rand.Float64() < b.Share(time.Now()) {
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

// hold waits, within the request's hold budget, until a backend enters
// service (ready is closed), the client leaves, or the budget runs out. It
// reports whether to look for a backend again.
func (s *selector) hold(ctx context.Context, st *requestState, ready <-chan struct{}) bool {
	h := s.h
	if st.holdUntil.IsZero() {
		st.holdUntil = time.Now().Add(h.hold)
	}
	remaining := time.Until(st.holdUntil)
	if remaining <= 0 {
		st.noBackend = true
		return false
	}
	if s.held.Add(1) > h.maxHeld {
		s.held.Add(-1)
		st.noBackend = true
		return false
	}
	defer s.held.Add(-1)
	t := time.NewTimer(remaining)
	defer t.Stop()
	select {
	case <-ready:
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		st.noBackend = true
		return false
	}
}
