package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A backend announces its drain in a heartbeat answer (503 with
// Failover-Drain, as a process about to exit does): it leaves service,
// stays out when its process then closes its listener (refused is not a
// crash here), and comes back by itself when a new process on the same
// address answers without the header.
func TestAnnouncedDrainOverTheWire(t *testing.T) {
	var draining atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if draining.Load() {
			w.Header().Set(DrainHeader, "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	other := newBackend(t) // so that nothing here depends on being the last in service

	cfg := fast()
	cfg.Path, cfg.Fails = "/health", 1 // one bad beat would eject
	p, rec := newPool(t, []string{addr, other.addr()}, cfg)
	chs := beats(p)
	p.Start()
	rec.healthy(0)
	rec.healthy(1)

	draining.Store(true)
	tr := rec.waitFor(0, wait, "draining(announced)", to(0, Draining, Announced))
	assert.Equal(t, Healthy, tr.From)
	assert.Contains(t, tr.Cause, DrainHeader)
	b := p.Backends()[0]
	assert.False(t, b.InService())

	// the process exits: its listener and connections close
	skipBeats(chs[0])
	srv.Close()
	for {
		if bt := nextBeat(t, chs[0], "a refused beat"); bt.e == Gone {
			break
		}
	}
	requireState(t, b, Draining, Announced)
	assert.Zero(t, rec.ejections(0), "transitions:%s", rec)

	// a new process on the same address, not draining
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	draining.Store(false)
	srv2 := httptest.NewUnstartedServer(h)
	srv2.Listener.Close()
	srv2.Listener = ln
	srv2.Start()
	t.Cleanup(srv2.Close)
	tr = rec.healthy(0)
	assert.Equal(t, Draining, tr.From)
	var got []string
	for _, tr := range rec.list() {
		if tr.Index == 0 {
			got = append(got, tr.To.String()+"("+tr.Reason.String()+")")
		}
	}
	assert.Equal(t, []string{"healthy()", "draining(announced)", "healthy()"}, got)
}

// An announced drain lets requests in flight finish: none is rescued.
func TestAnnouncedDrainKeepsFlights(t *testing.T) {
	p, bs, _ := machine(t, 2, Config{})
	feed(p, bs[0], Pass)
	feed(p, bs[1], Pass)
	ctx, cancel := context.WithCancelCause(context.Background())
	f := &Flight{Cancel: cancel, Replayable: true}
	bs[0].Begin(f)
	feed(p, bs[0], DrainAnnounced)
	requireState(t, bs[0], Draining, Announced)
	assert.NoError(t, ctx.Err(), "the flight goes on")
	assert.NoError(t, bs[0].End(f), "not rescued")
}
