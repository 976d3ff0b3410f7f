package caddymodule

import (
	"context"
	"time"
)

// holdResult is how a hold ended.
type holdResult uint8

const (
	holdReady      holdResult = iota // a backend entered service: look again
	holdExpired                      // the hold budget ran out, or max_held was reached
	holdClientGone                   // the client left
	holdRetired                      // the config was replaced: hand the request over
)

// holdFor waits, within the request's hold budget, until a backend enters
// service (ready is closed), the client leaves, the budget runs out, or
// the handler retires (retired; nil: do not wake for that).
func (h *Handler) holdFor(ctx context.Context, st *requestState, ready <-chan struct{}, retired <-chan struct{}) holdResult {
	if st.holdUntil.IsZero() {
		st.holdUntil = time.Now().Add(h.hold)
	}
	remaining := time.Until(st.holdUntil)
	if remaining <= 0 {
		return holdExpired
	}
	if h.held.Add(1) > h.maxHeld {
		h.held.Add(-1)
		mHoldExpired.WithLabelValues(h.obs.Name()).Inc()
		return holdExpired
	}
	start := time.Now()
	t := time.NewTimer(remaining)
	res := holdExpired
	select {
	case <-ready:
		res = holdReady
	case <-retired:
		res = holdRetired
	case <-ctx.Done():
		res = holdClientGone
	case <-t.C:
	}
	t.Stop()
	h.held.Add(-1)
	name := h.obs.Name()
	mHoldSeconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
	if res == holdExpired {
		mHoldExpired.WithLabelValues(name).Inc()
	}
	return res
}
