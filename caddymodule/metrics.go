package caddymodule

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/crashonly/caddy-failover/healthcheck"
)

// The Prometheus metrics of failover, served in Caddy's /metrics. They are
// package-level, so that counters survive reloads, and registered in each
// config's registry when its failover app is provisioned. Labels are
// bounded: pool, backend, state, reason, cause, result, restarter; nothing
// per request.
var (
	mEjections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "ejections_total",
		Help: "Backends taken out of service, by reason (crash, hang, bad-status, lease-expired).",
	}, []string{"pool", "backend", "reason"})
	mEjectionDelay = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "ejection_delay_seconds",
		Help:    "Time from a backend's last good answer to its ejection: how long a failed backend stayed in service.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"pool", "reason"})
	mReplays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "replays_total",
		Help: "Requests replayed on another backend (or the same one's next life), by cause (refused, reset, eof, timeout, rescued, other).",
	}, []string{"pool", "cause"})
	mRescued = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "rescued_total",
		Help: "Requests in flight on a backend suspected or ejected for a hang, cancelled there and replayed at once.",
	}, []string{"pool"})
	mFalseSuspicions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "false_suspicions_total",
		Help: "Backends suspected of a hang that answered before being ejected: slow, or paused shorter than a heartbeat timeout.",
	}, []string{"pool", "backend"})
	mRescuesDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "rescues_denied_total",
		Help: "Requests in flight on a backend suspected or ejected for a hang that the retry budget did not let be replayed: they wait on, and are abandoned if the backend is ejected for the hang.",
	}, []string{"pool"})
	mAbandoned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "abandoned_total",
		Help: "Requests in flight on a backend ejected for a hang that could not be replayed (not idempotent, or refused by the retry budget): answered 502 at once rather than left waiting for the restart.",
	}, []string{"pool"})
	mHedges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "hedges_total",
		Help: "Hedged requests, by result: won (the hedge answered first), lost (the first attempt did), denied (the retry budget refused the hedge).",
	}, []string{"pool", "result"})
	mHoldSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "hold_seconds",
		Help:    "Time requests were held waiting for a backend in service.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"pool"})
	mHoldExpired = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "hold_expired_total",
		Help: "Requests answered 503 because no backend came into service within hold (or max_held was reached).",
	}, []string{"pool"})
	mRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "restarts_total",
		Help: "Restart requests made to a restarter, by result (ok, error).",
	}, []string{"pool", "restarter", "result"})
	mRestartDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "restart_duration_seconds",
		Help:    "Time from a restart request to the backend's return to service.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"pool"})
	mHeartbeats = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "heartbeats_total",
		Help: "Heartbeats sent, by result (pass, miss, wrong-status, gone, timeout, drain-announced).",
	}, []string{"pool", "result"})
	mHeartbeatLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "heartbeat_latency_seconds",
		Help:    "Time a heartbeat took to be answered.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	}, []string{"pool"})
	mPeerDeferred = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "restarts_left_to_peers_total",
		Help: "Restarts this instance did not ask for because another instance sharing the pool had them in hand (peer) or the pool's restart budget was full across the instances (budget).",
	}, []string{"pool", "why"})
	mPeerFacts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "peer_restarts_seen_total",
		Help: "Backends taken out of service, or no longer restarted by this instance, because another instance sharing the pool asked for their restart.",
	}, []string{"pool"})
	mStorageErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "failover", Name: "cluster_storage_errors_total",
		Help: "Failed reads, writes and locks of the storage shared with other instances; restarts go on locally meanwhile.",
	}, []string{"pool"})

	stateDesc = prometheus.NewDesc("caddy_failover_backend_state",
		"1 for the state each backend is in, 0 for the others.", []string{"pool", "backend", "state"}, nil)
	heldDesc = prometheus.NewDesc("caddy_failover_held",
		"Requests held now, waiting for a backend in service.", []string{"pool"}, nil)
	inFlightDesc = prometheus.NewDesc("caddy_failover_in_flight",
		"Requests in flight on each backend now.", []string{"pool", "backend"}, nil)
)

// states is every state, for the state gauge.
var states = []healthcheck.State{healthcheck.Unknown, healthcheck.Healthy, healthcheck.Probation,
	healthcheck.Suspected, healthcheck.Ejected, healthcheck.Restarting, healthcheck.Draining, healthcheck.Maint}

// poolCollector reports what is read from the pools at scrape time: states,
// held requests, requests in flight.
type poolCollector struct{}

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- stateDesc
	ch <- heldDesc
	ch <- inFlightDesc
}

func (poolCollector) Collect(ch chan<- prometheus.Metric) {
	pools.Range(func(_, v any) bool {
		rp := v.(runningPool)
		if !rp.Started() {
			return true
		}
		name := rp.obs.Name()
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(rp.held.Load()), name)
		for _, s := range rp.Snapshot() {
			for _, st := range states {
				v := 0.0
				if s.State == st {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, name, s.Addr, st.String())
			}
			ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(s.Active), name, s.Addr)
		}
		return true
	})
}

// registerMetrics registers failover's metrics in a config's registry.
func registerMetrics(reg *prometheus.Registry) error {
	for _, c := range []prometheus.Collector{mEjections, mEjectionDelay, mReplays, mRescued, mFalseSuspicions, mRescuesDenied, mAbandoned, mHedges, mHoldSeconds,
		mHoldExpired, mRestarts, mRestartDuration, mHeartbeats, mHeartbeatLatency,
		mPeerDeferred, mPeerFacts, mStorageErrors, poolCollector{}} {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return fmt.Errorf("failover: registering metrics: %v", err)
			}
		}
	}
	return nil
}

// forgetPool drops a released pool's series, so that pools a config no
// longer has do not linger in /metrics.
func forgetPool(name string) {
	l := prometheus.Labels{"pool": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		mEjections, mEjectionDelay, mReplays, mRescued, mFalseSuspicions, mRescuesDenied, mAbandoned, mHedges, mHoldSeconds, mHoldExpired,
		mRestarts, mRestartDuration, mHeartbeats, mHeartbeatLatency,
		mPeerDeferred, mPeerFacts, mStorageErrors,
	} {
		v.DeletePartialMatch(l)
	}
}
