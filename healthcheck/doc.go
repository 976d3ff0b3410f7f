// Package healthcheck is the health engine of caddy-failover. It knows nothing
// of Caddy: one state machine per backend, heartbeat probes over a held
// keep-alive connection (which doubles as a crash watch), passive reports from
// live traffic, and a pool that wakes waiters the moment a backend is ready.
package healthcheck
