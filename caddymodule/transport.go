package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// transport wraps the configured transport. It sees every attempt's outcome:
// it reports failures to the engine, registers replayable attempts so that
// an ejection for a hang can cancel them, and returns a DialError, which
// makes reverse_proxy retry, exactly when a replay is safe.
type transport struct {
	inner http.RoundTripper
	h     *Handler
	sel   *selector // picks a hedge's peer
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(stateKey{}).(*requestState)
	if st == nil || st.current == nil {
		return t.inner.RoundTrip(req)
	}
	b := st.current
	// a request is in flight on b until it ends (see putRequestState):
	// a drain waits for streamed answers too
	b.Acquire()
	res, by, err := t.attempt(req, st, b)
	if err != nil || res.StatusCode == http.StatusSwitchingProtocols {
		// an upgraded connection (its body is read and written by
		// reverse_proxy, unwrapped) lives as long as the client wants
		b.ReleaseActive()
		return res, err
	}
	if by != b { // a hedge answered (hedge.go): its backend was acquired for it
		b.ReleaseActive()
	}
	st.answered(by)
	return res, nil
}

// attempt sends one attempt of a request to b. It returns the answer and
// the backend that gave it: b, or a hedge's (hedge.go). The attempt is
// registered as a flight on b, with a context of its own, so that a hang
// of b cuts it (healthcheck.Flight): a replayable one is replayed at once,
// another answered 502 as soon as b is confirmed hung.
func (t *transport) attempt(req *http.Request, st *requestState, b *healthcheck.Backend) (*http.Response, *healthcheck.Backend, error) {
	replayable := st.replayable
	parent := req.Context()
	ctx, cancel := context.WithCancelCause(parent)
	st.flight.Cancel, st.flight.Replayable = cancel, replayable
	b.Begin(&st.flight)
	var (
		res *http.Response
		by  = b
		err error
	)
	if replayable {
		res, by, err = t.roundTrip(req.WithContext(ctx), parent, st, b)
	} else {
		res, err = t.inner.RoundTrip(req.WithContext(ctx))
	}
	if cut := b.End(&st.flight); cut != nil && parent.Err() == nil && by == b {
		// suspected or ejected for a hang while in flight: nothing reached
		// the client yet, so throw away whatever came
		if res != nil {
			res.Body.Close()
		}
		err := fmt.Errorf("%s: %w", b.Addr, cut)
		if cut == healthcheck.ErrAbandoned {
			mAbandoned.WithLabelValues(t.h.obs.Name()).Inc()
			return nil, b, err // a 502 (not a DialError: never replayed)
		}
		st.freeAttempt(t.h.hold)
		t.h.replayed(b, "rescued")
		mRescued.WithLabelValues(t.h.obs.Name()).Inc()
		return nil, b, reverseproxy.NewDialError(err)
	}
	if err != nil {
		cancel(nil)
		return nil, b, t.failed(parent, b, st, err, replayable)
	}
	answered(by, res)
	return res, by, nil
}

// answered records a live answer: the backend is not hung, and may be
// announcing its drain (Failover-Drain on any answer, not only on a
// heartbeat: under load, heartbeats are sparse).
func answered(b *healthcheck.Backend, res *http.Response) {
	b.Answered()
	if _, drain := res.Header[healthcheck.DrainHeader]; drain {
		b.Report(healthcheck.DrainAnnounced, nil)
	}
}

// failed reports a failed attempt and decides whether it is replayed. An
// attempt that failed because its backend crashed or hung does not count
// against retries: the request is replayed, on a peer or on the same
// backend's next life, until its hold runs out, whatever the pool size.
func (t *transport) failed(ctx context.Context, b *healthcheck.Backend, st *requestState, err error, replayable bool) error {
	if ctx.Err() != nil {
		return err // the client left: not the backend's fault
	}
	if _, ok := errors.AsType[reverseproxy.DialError](err); ok {
		// never reached the backend: reverse_proxy replays it, any method
		st.freeAttempt(t.h.hold)
		if refused(err) {
			b.Report(healthcheck.Gone, err)
			t.h.replayed(b, "refused")
		} else {
			b.Report(healthcheck.Miss, err)
			t.h.replayed(b, "dial")
		}
		return err
	}
	crashOrHang, cause := true, ""
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		b.Report(healthcheck.Gone, err)
		cause = "reset"
	case isTimeout(err):
		b.Report(healthcheck.Timeout, err)
		cause = "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// the connection closed without an answer: a crash, or an
		// idle-close race (which Go's transport replays itself for
		// idempotent requests); a beat tells which
		b.Probe()
		cause = "eof"
	default:
		crashOrHang = false
		b.Probe()
		cause = "other"
	}
	if !replayable {
		return err
	}
	if crashOrHang {
		st.freeAttempt(t.h.hold)
	}
	t.h.replayed(b, cause)
	return reverseproxy.NewDialError(err)
}

// replayed counts a replay of a request that failed on b.
func (h *Handler) replayed(b *healthcheck.Backend, cause string) {
	h.obs.of(b.Index).replays.Add(1)
	mReplays.WithLabelValues(h.obs.Name(), cause).Inc()
}

// freeAttempt records an attempt that does not count against retries. The
// replays it allows are bounded by the hold, counted from the first.
func (st *requestState) freeAttempt(hold time.Duration) {
	st.free++
	if st.holdUntil.IsZero() {
		st.holdUntil = time.Now().Add(hold)
	}
}

// refused reports a connection refused, or a unix socket's file gone.
// reverse_proxy's DialError (v2.11.9) does not unwrap, so past it the errno
// is known only by its text.
func refused(err error) bool {
	for _, errno := range [...]syscall.Errno{syscall.ECONNREFUSED, syscall.ENOENT} {
		if errors.Is(err, errno) || strings.HasSuffix(err.Error(), errno.Error()) {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// The optional interfaces reverse_proxy looks for on its transport.

func (t *transport) RequestHeaderOps() *headers.HeaderOps {
	if x, ok := t.inner.(reverseproxy.RequestHeaderOpsTransport); ok {
		return x.RequestHeaderOps()
	}
	return nil
}

func (t *transport) ProxyProtocolEnabled() bool {
	x, ok := t.inner.(reverseproxy.ProxyProtocolTransport)
	return ok && x.ProxyProtocolEnabled()
}

func (t *transport) RequiresContentLength() bool {
	x, ok := t.inner.(reverseproxy.ContentLengthRequiredTransport)
	return ok && x.RequiresContentLength()
}

func (t *transport) TLSEnabled() bool {
	x, ok := t.inner.(reverseproxy.TLSTransport)
	return ok && x.TLSEnabled()
}

// EnableTLS is required of a TLSTransport; TLS is configured on the inner
// transport when the Caddyfile is adapted, so it only delegates.
func (t *transport) EnableTLS(base *reverseproxy.TLSConfig) error {
	if x, ok := t.inner.(reverseproxy.TLSTransport); ok {
		return x.EnableTLS(base)
	}
	return fmt.Errorf("transport %T does not support TLS", t.inner)
}

var (
	_ http.RoundTripper                           = (*transport)(nil)
	_ reverseproxy.TLSTransport                   = (*transport)(nil)
	_ reverseproxy.RequestHeaderOpsTransport      = (*transport)(nil)
	_ reverseproxy.ProxyProtocolTransport         = (*transport)(nil)
	_ reverseproxy.ContentLengthRequiredTransport = (*transport)(nil)
)
