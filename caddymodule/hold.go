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
		return holdExpired
	}
	defer h.held.Add(-1)
	t := time.NewTimer(remaining)
	defer t.Stop()
	select {
	case <-ready:
		return holdReady
	case <-retired:
		return holdRetired
	case <-ctx.Done():
		return holdClientGone
	case <-t.C:
		return holdExpired
	}
}
