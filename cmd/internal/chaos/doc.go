// Package chaos runs real crash-only backends and a real Caddy on loopback,
// breaks the backends on a schedule, drives load through Caddy and measures
// what clients saw. It is shared by the demo (cmd/failover-demo) and by the
// end-to-end tests in cmd/caddy.
//
// The pieces, in the order a run uses them:
//
//   - [BuildBinary], [ModuleRoot], [FreePorts]: build ./cmd/caddy and
//     ./examples/backend, pick loopback ports.
//   - [StartBackend] and [Backend]: one examples/backend process with its
//     restart history; SIGKILL, SIGSTOP and SIGCONT it.
//   - [StartCaddy], [Caddy], [Caddyfile]: a Caddy process with an isolated
//     HOME, its admin endpoint and reload/stop through the caddy CLI.
//   - [StartSupervisor], [Supervisor]: a stand-in for systemd's
//     Restart=always/RestartSec=100ms until the plugin supervises on its own.
//   - [Schedule], [Injector]: a seeded, reproducible list of faults (crash,
//     hang, outage) and the thing that applies them at their time.
//   - [RunLoad], [Results]: a closed-loop client, every request recorded.
//   - [Analyze], [Report]: failures, replayed orders, latency and the longest
//     time without a successful answer.
//   - [NewRig], [Rig]: all of the above wired together: N backends sharing a
//     record file, the Caddy in front of them with a given site block, an
//     optional Supervisor, and the failover admin API ([Rig.Pools],
//     [Rig.WaitStates]). The demo and the end-to-end tests both use it.
//   - [WatchStates], [StateWatcher]: polls Caddy's admin API (every 10ms) and
//     records each backend's state transitions with their times: failover's
//     GET /failover/pools, or for stock reverse_proxy its passive failures
//     and active health events.
//   - [Report.AddFaults]: crash → eject, hang → eject and hang → restart
//     latencies from the faults and the transitions; [BuildTimeline],
//     [Run], [SummaryRows], [FormatTable] and [WriteHTML]: the timeline, the
//     side-by-side table and the self-contained HTML report with its charts
//     (Chart.js, vendored in assets/).
//
// Every process is started on 127.0.0.1 only, in its own process group (so a
// Ctrl-C in the terminal reaches the driver, which cleans up, and not the
// children directly) and, on Linux, with a parent-death signal, so nothing
// outlives a driver that dies. Every wait is bounded. The package is for
// Unix-like systems: it relies on SIGSTOP/SIGCONT.
package chaos
