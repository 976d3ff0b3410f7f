package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Backend states as the failover admin API names them.
const (
	StateUnknown    = "unknown"
	StateHealthy    = "healthy"
	StateEjected    = "ejected"
	StateRestarting = "restarting"
	StateProbation  = "probation"
	StateSuspected  = "suspected"
)

// InService reports whether a backend in this state gets requests.
func InService(state string) bool { return state == StateHealthy || state == StateProbation }

// State is a backend state as the admin API prints it.
type State string

func (s State) String() string { return string(s) }

// Reason says why a backend left service, as the admin API prints it.
type Reason string

func (r Reason) String() string { return string(r) }

// BackendStatus is one backend in GET /failover/pools (the JSON of
// healthcheck.Snapshot, read without importing the engine).
type BackendStatus struct {
	Address  string    `json:"address"`
	State    State     `json:"state"`
	Reason   Reason    `json:"reason,omitempty"`
	Since    time.Time `json:"since"` // the engine's own time of the last transition
	Beats    uint64    `json:"beats"`
	InFlight int       `json:"in_flight"`
}

// PoolStatus is one pool in GET /failover/pools.
type PoolStatus struct {
	ID       uint64          `json:"id"`
	Held     int64           `json:"held"`
	Backends []BackendStatus `json:"backends"`
}

// UpstreamStatus is one upstream in stock reverse_proxy's
// GET /reverse_proxy/upstreams: requests in flight and passive failures
// remembered (there is no active-health field).
type UpstreamStatus struct {
	Address     string `json:"address"`
	NumRequests int    `json:"num_requests"`
	Fails       int    `json:"fails"`
}

// getJSON GETs http://admin+path and decodes the JSON answer into out.
func getJSON(ctx context.Context, client *http.Client, admin, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("chaos: GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, out)
}

// ReadPools reads GET /failover/pools from the admin endpoint at admin
// (host:port), on a connection of its own that it closes (so it leaves no
// idle connection, and no goroutine, in Caddy).
func ReadPools(ctx context.Context, admin string) ([]PoolStatus, error) {
	return readPools(ctx, adminClient, admin)
}

func readPools(ctx context.Context, client *http.Client, admin string) ([]PoolStatus, error) {
	var out []PoolStatus
	err := getJSON(ctx, client, admin, "/failover/pools", &out)
	return out, err
}

// ReadUpstreams reads stock reverse_proxy's GET /reverse_proxy/upstreams,
// like ReadPools.
func ReadUpstreams(ctx context.Context, admin string) ([]UpstreamStatus, error) {
	return readUpstreams(ctx, adminClient, admin)
}

func readUpstreams(ctx context.Context, client *http.Client, admin string) ([]UpstreamStatus, error) {
	var out []UpstreamStatus
	err := getJSON(ctx, client, admin, "/reverse_proxy/upstreams", &out)
	return out, err
}

// Transition is a change of a backend's state as the proxy saw it.
type Transition struct {
	Backend int    `json:"backend"` // index in WatchConfig.Addrs
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	// Since is when it happened: the failover engine's own transition time,
	// or the time of stock reverse_proxy's health event; for a passive
	// failure (which has no timestamp) the time the poll saw it.
	Since time.Time `json:"since"`
	Seen  time.Time `json:"seen"`   // when the watcher saw it
	From  string    `json:"source"` // SourceFailover, SourceActive, SourcePassive
}

// Transition sources.
const (
	SourceFailover = "failover"       // GET /failover/pools
	SourceActive   = "active-check"   // reverse_proxy "healthy"/"unhealthy" events
	SourcePassive  = "passive-failed" // reverse_proxy passive failures (GET /reverse_proxy/upstreams)
)

// Watch modes: what a StateWatcher found to poll.
const (
	ModeFailover     = "failover"      // the failover admin API
	ModeReverseProxy = "reverse_proxy" // stock reverse_proxy: passive fails + health events
)

// BackendView is a backend's latest state as a StateWatcher knows it.
type BackendView struct {
	Known    bool      `json:"known"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	Beats    uint64    `json:"beats"`     // failover: heartbeats answered
	InFlight int       `json:"in_flight"` // requests in flight to it
	Fails    int       `json:"fails"`     // stock: passive failures remembered
}

// WatchConfig describes what a StateWatcher polls.
type WatchConfig struct {
	Admin    string        // host:port of Caddy's admin endpoint (required)
	Addrs    []string      // backend dial addresses, in pool order (required)
	Interval time.Duration // between polls; default 10ms
	// EventLog is a Caddy log file that gets the "events" logger at debug
	// level (see EventLogOptions): stock reverse_proxy's active health
	// checks are visible only there. Empty: none.
	EventLog string
	// MaxFails is stock reverse_proxy's max_fails: an upstream with that
	// many passive failures remembered gets no requests. Default 1.
	MaxFails int
}

// EventLogOptions is a global-options block that makes Caddy write its
// events (among them reverse_proxy's "healthy" and "unhealthy") as JSON lines
// to path, for WatchConfig.EventLog. It costs nothing on the request path.
func EventLogOptions(path string) string {
	return fmt.Sprintf("log chaos_events {\n\toutput file %s\n\tformat json\n\tlevel DEBUG\n\tinclude events\n}", path)
}

// QuietAdminLog is a global-options block that keeps the admin endpoint's
// "received request" lines (one per StateWatcher poll) out of Caddy's log.
const QuietAdminLog = "log default {\n\texclude admin.api\n}"

// StateWatcher polls Caddy's admin endpoint and records every backend state
// transition with its time. Against `failover` it reads GET /failover/pools
// (state, reason and the engine's own transition time). Against stock
// reverse_proxy, which has no such API, it derives a state from what there
// is: an upstream is "ejected" while its active health check says unhealthy
// (reason "active-check", from the event log) or while it has MaxFails passive
// failures remembered (reason "passive-failed", from GET
// /reverse_proxy/upstreams).
type StateWatcher struct {
	cfg    WatchConfig
	client *http.Client // keeps its connection: a poll every 10ms must not dial each time
	index  map[string]int
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	mode   string
	views  []BackendView
	trans  []Transition
	polls  int
	errs   int
	last   error
	active []bool // stock: unhealthy per the last health event
	logOff int64
	logBuf []byte
}

// WatchStates starts polling; Stop ends it. With no Addrs it polls nothing.
func WatchStates(cfg WatchConfig) *StateWatcher {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Millisecond
	}
	if cfg.MaxFails <= 0 {
		cfg.MaxFails = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &StateWatcher{
		cfg: cfg, index: map[string]int{}, cancel: cancel, done: make(chan struct{}),
		client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}},
		views:  make([]BackendView, len(cfg.Addrs)), active: make([]bool, len(cfg.Addrs)),
	}
	for i, a := range cfg.Addrs {
		w.index[a] = i
	}
	if len(cfg.Addrs) == 0 {
		close(w.done) // nothing to watch
		return w
	}
	go w.loop(ctx)
	return w
}

func (w *StateWatcher) loop(ctx context.Context) {
	defer close(w.done)
	defer w.client.CloseIdleConnections()
	tick := time.NewTicker(w.cfg.Interval)
	defer tick.Stop()
	for {
		err := w.poll(ctx)
		w.mu.Lock()
		w.polls++
		if err != nil && ctx.Err() == nil {
			w.errs++
			w.last = err
		}
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Stop stops polling and returns every transition seen, in order.
func (w *StateWatcher) Stop() []Transition {
	w.cancel()
	<-w.done
	return w.Transitions()
}

// Mode is ModeFailover, ModeReverseProxy, or "" while nothing was found.
func (w *StateWatcher) Mode() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mode
}

// Source describes where the states come from, for reports.
func (w *StateWatcher) Source() string {
	switch w.Mode() {
	case ModeFailover:
		return "failover admin API (GET /failover/pools), polled every " + w.cfg.Interval.String()
	case ModeReverseProxy:
		s := "reverse_proxy passive failures (GET /reverse_proxy/upstreams), polled every " + w.cfg.Interval.String()
		if w.cfg.EventLog != "" {
			s += ", and its active health check events"
		}
		return s
	}
	return ""
}

// Current returns every backend's latest state.
func (w *StateWatcher) Current() []BackendView {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.views)
}

// Transitions returns the transitions so far, in the order seen.
func (w *StateWatcher) Transitions() []Transition {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.trans)
}

// Errors returns how many polls failed out of how many, and the last error.
func (w *StateWatcher) Errors() (failed, polls int, last error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs, w.polls, w.last
}

func (w *StateWatcher) poll(ctx context.Context) error {
	switch w.Mode() {
	case ModeFailover:
		return w.pollFailover(ctx)
	case ModeReverseProxy:
		return w.pollStock(ctx)
	}
	// Not known yet: failover first (a failover pool also shows up among
	// reverse_proxy's upstreams).
	errF := w.pollFailover(ctx)
	if w.Mode() != "" {
		return nil
	}
	ups, errS := readUpstreams(ctx, w.client, w.cfg.Admin)
	if errS == nil && slices.ContainsFunc(ups, func(u UpstreamStatus) bool { _, ok := w.index[u.Address]; return ok }) {
		w.mu.Lock()
		w.mode = ModeReverseProxy
		now := time.Now()
		for i := range w.views { // stock upstreams start healthy
			w.views[i] = BackendView{Known: true, State: StateHealthy, Since: now}
			w.trans = append(w.trans, Transition{Backend: i, State: StateHealthy, Since: now, Seen: now, From: SourcePassive})
		}
		w.mu.Unlock()
		return w.pollStock(ctx)
	}
	if errF != nil {
		return errF
	}
	return errS
}

// errNoPool: the failover API answered but has no pool with our backends.
var errNoPool = errors.New("chaos: no failover pool with these backends")

func (w *StateWatcher) pollFailover(ctx context.Context) error {
	pools, err := readPools(ctx, w.client, w.cfg.Admin)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, p := range pools {
		if !slices.ContainsFunc(p.Backends, func(b BackendStatus) bool { _, ok := w.index[b.Address]; return ok }) {
			continue
		}
		w.mu.Lock()
		w.mode = ModeFailover
		for _, b := range p.Backends {
			i, ok := w.index[b.Address]
			if !ok {
				continue
			}
			v := BackendView{Known: true, State: b.State.String(), Reason: b.Reason.String(), Since: b.Since, Beats: b.Beats, InFlight: b.InFlight}
			old := w.views[i]
			if !old.Known || old.State != v.State || old.Reason != v.Reason || !old.Since.Equal(v.Since) {
				since := v.Since
				if since.IsZero() {
					since = now
				}
				w.trans = append(w.trans, Transition{Backend: i, State: v.State, Reason: v.Reason, Since: since, Seen: now, From: SourceFailover})
			}
			w.views[i] = v
		}
		w.mu.Unlock()
		return nil
	}
	return errNoPool
}

func (w *StateWatcher) pollStock(ctx context.Context) error {
	events, logErr := w.readEvents()
	ups, err := readUpstreams(ctx, w.client, w.cfg.Admin)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range events {
		i, ok := w.index[ev.host]
		if !ok {
			continue
		}
		w.active[i] = ev.name == "unhealthy"
		w.setStock(i, ev.ts, now, SourceActive)
	}
	if err != nil {
		return err
	}
	for _, u := range ups {
		i, ok := w.index[u.Address]
		if !ok {
			continue
		}
		w.views[i].Fails, w.views[i].InFlight = u.Fails, u.NumRequests
		w.setStock(i, now, now, SourcePassive)
	}
	return logErr
}

// setStock recomputes backend i's derived stock state and records a
// transition if it changed. The caller holds w.mu.
func (w *StateWatcher) setStock(i int, since, seen time.Time, from string) {
	v := &w.views[i]
	state, reason := StateHealthy, ""
	switch {
	case w.active[i]:
		state, reason = StateEjected, SourceActive
	case v.Fails >= w.cfg.MaxFails:
		state, reason = StateEjected, SourcePassive
	}
	if v.Known && v.State == state && v.Reason == reason {
		return
	}
	v.Known, v.State, v.Reason, v.Since = true, state, reason, since
	w.trans = append(w.trans, Transition{Backend: i, State: state, Reason: reason, Since: since, Seen: seen, From: from})
}

type healthEvent struct {
	name, host string
	ts         time.Time
}

// readEvents reads the event log lines written since the last call and
// returns reverse_proxy's health events.
func (w *StateWatcher) readEvents() ([]healthEvent, error) {
	if w.cfg.EventLog == "" {
		return nil, nil
	}
	f, err := os.Open(w.cfg.EventLog)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(w.logOff, io.SeekStart); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 4<<20))
	if err != nil {
		return nil, err
	}
	w.logOff += int64(len(b))
	w.logBuf = append(w.logBuf, b...)
	var out []healthEvent
	for {
		nl := bytes.IndexByte(w.logBuf, '\n')
		if nl < 0 {
			break
		}
		line := w.logBuf[:nl]
		w.logBuf = w.logBuf[nl+1:]
		if ev, ok := parseHealthEvent(line); ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

// parseHealthEvent reads one JSON line of Caddy's events logger, e.g.
//
//	{"level":"debug","ts":1795590028.57,"logger":"events","msg":"event","name":"unhealthy","data":{"host":"127.0.0.1:19001"}}
func parseHealthEvent(line []byte) (healthEvent, bool) {
	var l struct {
		TS   json.RawMessage `json:"ts"`
		Msg  string          `json:"msg"`
		Name string          `json:"name"`
		Data struct {
			Host string `json:"host"`
		} `json:"data"`
	}
	if json.Unmarshal(line, &l) != nil || l.Msg != "event" || (l.Name != "healthy" && l.Name != "unhealthy") || l.Data.Host == "" {
		return healthEvent{}, false
	}
	ts, ok := parseLogTime(l.TS)
	if !ok {
		return healthEvent{}, false
	}
	return healthEvent{name: l.Name, host: l.Data.Host, ts: ts}, true
}

// parseLogTime reads zap's "ts": seconds since the epoch as a number (Caddy's
// default) or an RFC 3339 string.
func parseLogTime(raw json.RawMessage) (time.Time, bool) {
	if f, err := strconv.ParseFloat(string(raw), 64); err == nil {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e6))*1e3), true
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// RollingRestart asks failover's admin API at admin for a rolling restart of
// its (first) pool and waits, bounded by ctx, until it has ended.
func RollingRestart(ctx context.Context, admin string) error {
	res, err := http.Get("http://" + admin + "/failover/pools")
	if err != nil {
		return err
	}
	var ps []struct {
		Name string `json:"name"`
	}
	err = json.NewDecoder(res.Body).Decode(&ps)
	res.Body.Close()
	if err != nil || len(ps) == 0 {
		return fmt.Errorf("chaos: no failover pool at %s (%v)", admin, err)
	}
	url := "http://" + admin + "/failover/pools/" + ps[0].Name + "/rolling-restart"
	res, err = http.Post(url, "", nil)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		return fmt.Errorf("chaos: rolling restart: %s: %s", res.Status, b)
	}
	for {
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
		res, err := http.Get(url)
		if err != nil {
			return err
		}
		var rr struct{ State, Error string }
		err = json.NewDecoder(res.Body).Decode(&rr)
		res.Body.Close()
		if err != nil {
			return err
		}
		switch rr.State {
		case "done":
			return nil
		case "failed":
			return fmt.Errorf("chaos: rolling restart failed: %s", rr.Error)
		}
	}
}
