package caddymodule

import (
	"net/http"
	"sync"
	"time"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// stateKey carries a request's failover state through reverse_proxy's loop
// to our selector and transport.
type stateKey struct{}

// tried is a backend a request failed on, in one of its lives: after an
// ejection and readmission (a new generation) it may be tried again.
type tried struct {
	b   *healthcheck.Backend
	gen uint64
}

// requestState is what the selector and transport remember of one request
// across reverse_proxy's attempts. Pooled: the hot path allocates none.
type requestState struct {
	tried    []tried
	current  *healthcheck.Backend
	attempts int // attempts started
	// free counts attempts that do not count against retries: those that
	// failed because their backend crashed or hung (or never got them)
	free      int
	holdUntil time.Time
	noBackend bool // ended because no backend came into service in time
	retired   bool // ended because the config was replaced while it held
	stopped   bool
	// replayable: the request may be sent again elsewhere (set at its
	// first selection; reverse_proxy has prepared its body by then)
	replayable bool
	flight     healthcheck.Flight
	// answer is the backend whose answer reverse_proxy is copying: it is
	// in flight there until the request ends (Acquire)
	answer   *healthcheck.Backend
	triedBuf [8]tried
}

var statePool = sync.Pool{New: func() any { return new(requestState) }}

func getRequestState() *requestState {
	st := statePool.Get().(*requestState)
	st.tried = st.triedBuf[:0]
	return st
}

// putRequestState ends the request: its answer has been copied (reverse_proxy
// copies it and closes its body before it returns), so its backend has one
// request fewer in flight.
func putRequestState(st *requestState) {
	if st.answer != nil {
		st.answer.ReleaseActive()
	}
	*st = requestState{}
	statePool.Put(st)
}

// answered records the backend that answered an attempt. reverse_proxy
// replays nothing that was answered, but should a later attempt be answered
// too, the earlier answer is over.
func (st *requestState) answered(b *healthcheck.Backend) {
	if st.answer != nil {
		st.answer.ReleaseActive()
	}
	st.answer = b
}

func (st *requestState) hasTried(b *healthcheck.Backend, gen uint64) bool {
	for _, t := range st.tried {
		if t.b == b && t.gen == gen {
			return true
		}
	}
	return false
}

// replayable reports whether a failed attempt of req may be replayed on
// another backend although it may have reached the first (design.md):
// an idempotent method, or an Idempotency-Key the route opted in to, and a
// body that reverse_proxy kept whole. Caddy keeps a body whole when it is
// shorter than request_buffers (a body of exactly that size is cut).
func (h *Handler) replayable(req *http.Request) bool {
	if _, ok := h.methods[req.Method]; !ok {
		if h.IdempotencyKey == KeysOff || req.Header.Get(KeyHeader) == "" {
			return false
		}
	}
	return req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 ||
		(req.ContentLength > 0 && req.ContentLength < h.RequestBuffers)
}
