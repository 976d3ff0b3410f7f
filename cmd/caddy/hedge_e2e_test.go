package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A backend in a stop-the-world pause (SIGSTOP): the GETs that land on it
// are hedged to its peer after the threshold and answered from there; none
// fails, and the pause's victim is cancelled, not counted against it.
func TestHedgeAroundAPause(t *testing.T) {
	r := newRig(t, 2)
	r.start("failover {{upstreams}} {\n\tname h\n\thealth_uri /health\n\thedge 20ms\n}")
	r.waitStates(10*time.Second, "healthy", "healthy")

	require.NoError(t, r.backends[0].Stop())
	paused := true
	defer func() {
		if paused {
			r.backends[0].Cont()
		}
	}()
	won := func() float64 {
		return metricsAt(t, r.admin, "caddy_failover_hedges_total", `pool="h"`, `result="won"`)
	}
	for i := 0; won() == 0; i++ {
		require.Less(t, i, 10, "10 GETs and no hedge won")
		code, _, _, err := r.get("/work")
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, code)
	}
	require.NoError(t, r.backends[0].Cont())
	paused = false

	assert.Equal(t, 0.0, metricsAt(t, r.admin, "caddy_failover_hedges_total", `pool="h"`, `result="denied"`))
	assert.Equal(t, 0.0, metricsAt(t, r.admin, "caddy_failover_replays_total", `pool="h"`), "hedged, not replayed")
	_, body := adminDo(t, r.admin, http.MethodGet, "/failover/pools", nil)
	assert.Regexp(t, `"budget":\{"requests":\d+,"extra":[1-9]`, body, "the hedge was spent from the budget")
}
