package chaos

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNinesAndPercent(t *testing.T) {
	for _, tc := range []struct {
		ratio   float64
		nines   string
		percent string
	}{
		{1, "∞", "100%"},
		{0.9997, "3.52", "99.97%"},
		{0.999, "3.00", "99.9%"},
		{0.99999, "5.00", "99.999%"},
		{0.9, "1.00", "90%"},
		{0.5, "0.30", "50%"},
		{0, "0.00", "0%"},
	} {
		n := NinesOf(tc.ratio)
		if n.String() != tc.nines || Percent(tc.ratio) != tc.percent {
			t.Errorf("ratio %v: nines %v percent %v, want %v %v", tc.ratio, n, Percent(tc.ratio), tc.nines, tc.percent)
		}
		b, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		var back Nines
		if err := json.Unmarshal(b, &back); err != nil || math.Abs(float64(back-n)) > 1e-3 && !math.IsInf(float64(n), 1) {
			t.Errorf("JSON %s -> %v (%v)", b, back, err)
		}
		if math.IsInf(float64(n), 1) && (string(b) != "null" || !math.IsInf(float64(back), 1)) {
			t.Errorf("infinite nines as JSON %s -> %v", b, back)
		}
	}
}

func TestRatioAndTable(t *testing.T) {
	for _, tc := range []struct {
		a, b float64
		want string
	}{
		{1, 2, "0.50×"}, {0, 0, "="}, {3, 0, "∞"}, {0, 3, "0.00×"}, {250, 2, "125×"}, {25, 2, "12.5×"},
		{math.Inf(1), 3, "∞"}, {3, math.Inf(1), "0×"}, {math.Inf(1), math.Inf(1), "="},
	} {
		if got := ratio(tc.a, tc.b); got != tc.want {
			t.Errorf("ratio(%v, %v) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
	a := Report{Total: 100, Succeeded: 100, Throughput: 100, LatencyP50: Duration(time.Millisecond), Nines: NinesOf(1),
		FailuresByKind: map[string]int{}, FailuresByStatus: map[string]int{}}
	b := Report{Total: 100, Succeeded: 97, Failed: 3, Throughput: 50, LatencyP50: Duration(2 * time.Millisecond), Nines: NinesOf(0.97),
		FailuresByKind: map[string]int{ErrStatus: 3}, FailuresByStatus: map[string]int{"502": 2, "503": 1}}
	rows := SummaryRows([]Report{a, b})
	text := FormatTable([]string{"failover", "stock"}, rows, "ratio")
	for _, want := range []string{"throughput (req/s)       100     50  2.00×", "latency p50           1ms    2ms  0.50×",
		"  status                  0  [502 2, 503 1] 3", "nines                     ∞   1.52      ∞"} {
		if !strings.Contains(strings.Join(strings.Fields(text), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("table lacks %q:\n%s", want, text)
		}
	}
	if one := FormatTable([]string{"x"}, SummaryRows([]Report{a}), "ratio"); strings.Contains(strings.Split(one, "\n")[0], "ratio") {
		t.Errorf("a single report has a ratio column:\n%s", one)
	}
}

func TestAddFaults(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tr := func(b int, state string, ms int) Transition {
		return Transition{Backend: b, State: state, Since: at(ms), Seen: at(ms + 7)}
	}
	faults := []FaultEvent{
		{Fault: Fault{Kind: FaultCrash, Backend: 0}, Time: at(100), Action: "SIGKILL"},
		{Fault: Fault{Kind: FaultCrash, Backend: 1}, Time: at(150), Action: "SIGKILL", Err: "chaos: process not running"},
		{Fault: Fault{Kind: FaultHang, Backend: 1}, Time: at(1000), Action: "SIGSTOP"},
		{Fault: Fault{Kind: FaultHang, Backend: 1}, Time: at(2500), Action: "SIGKILL after hang"},
		{Fault: Fault{Kind: FaultOutage, Backend: -1}, Time: at(3000), Action: "SIGKILL"},
		{Fault: Fault{Kind: FaultCrash, Backend: 0}, Time: at(3100), Action: "SIGKILL"}, // b1 is out already
	}
	trans := []Transition{
		tr(0, StateHealthy, -100), tr(1, StateHealthy, -100),
		tr(0, StateEjected, 101), tr(0, StateHealthy, 400),
		tr(1, StateEjected, 1480), tr(1, StateRestarting, 1490), tr(1, StateHealthy, 2700),
		tr(0, StateEjected, 3001), tr(1, StateEjected, 3004), // the outage
		tr(0, StateHealthy, 3300), tr(1, StateHealthy, 3300),
	}
	restarts := []RestartEvent{{Backend: 0, NewPid: 2}, {Backend: 1, Err: "boom"}}
	var r Report
	r.AddFaults(t0, 2, faults, restarts, trans, "test")
	f := r.Faults
	if f.FaultsApplied != 4 || f.Restarts != 1 || f.RestartsFailed != 1 {
		t.Errorf("applied %d restarts %d/%d", f.FaultsApplied, f.Restarts, f.RestartsFailed)
	}
	if f.CrashToEject.Faults != 3 || f.CrashToEject.Observed != 3 || f.CrashToEject.Min != Duration(time.Millisecond) ||
		f.CrashToEject.Max != Duration(4*time.Millisecond) {
		t.Errorf("crash → eject %+v", f.CrashToEject)
	}
	if f.HangToEject.Observed != 1 || f.HangToEject.P50 != Duration(480*time.Millisecond) ||
		f.HangToRestart.Observed != 1 || f.HangToRestart.P50 != Duration(490*time.Millisecond) {
		t.Errorf("hang %+v / %+v", f.HangToEject, f.HangToRestart)
	}
	last := f.Detections[len(f.Detections)-1]
	if len(f.Detections) != 5 || last.Before != StateEjected || last.Eject != nil {
		t.Errorf("detections %+v", f.Detections)
	}
	if d := f.Detections[0]; d.EjectSeen == nil || *d.EjectSeen != Duration(8*time.Millisecond) {
		t.Errorf("first detection %+v", d)
	}
	if !strings.Contains(r.String(), "crash → eject") {
		t.Errorf("report:\n%s", r)
	}

	// No state source: the latencies are unknown, not zero (and the crash
	// of a backend already out cannot be told apart).
	var none Report
	none.AddFaults(t0, 2, faults, nil, nil, "")
	if none.CrashToEject.Faults != 4 || none.CrashToEject.Observed != 0 || none.CrashToEject.Short() != "n/a" {
		t.Errorf("without states %+v", none.CrashToEject)
	}
}

func TestBuildTimeline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	res := &Results{Start: t0, End: at(1000), Requests: []Request{
		{Start: at(0), Latency: 50 * time.Millisecond},
		{Start: at(10), Latency: 60 * time.Millisecond},
		{Start: at(200), Latency: 50 * time.Millisecond, Err: ErrStatus, Status: 502},
		{Start: at(900), Latency: 300 * time.Millisecond, Err: ErrTimeout}, // ends after the end: last bucket
		{Start: at(500), Latency: 10 * time.Millisecond, Err: ErrCanceled},
	}}
	faults := []FaultEvent{
		{Fault: Fault{Kind: FaultHang, Backend: 0}, Time: at(300), Action: "SIGSTOP"},
		{Fault: Fault{Kind: FaultHang, Backend: 0}, Time: at(600), Action: "SIGKILL after hang"},
		{Fault: Fault{Kind: FaultOutage, Backend: -1}, Time: at(800), Action: "SIGKILL"},
	}
	restarts := []RestartEvent{{Backend: 0, Time: at(700), NewPid: 3}}
	trans := []Transition{
		{Backend: 0, State: StateHealthy, Since: at(-50)},
		{Backend: 0, State: StateEjected, Reason: "hang", Since: at(450)},
		{Backend: 1, State: StateHealthy, Since: at(-50)},
	}
	tl := BuildTimeline(res, 2, 100*time.Millisecond, faults, restarts, trans)
	if len(tl.OK) != 11 || tl.OK[0] != 2 || tl.Failed[ErrStatus][2] != 1 || tl.Failed[ErrTimeout][10] != 1 {
		t.Errorf("buckets ok %v failed %v", tl.OK, tl.Failed)
	}
	got := fmt.Sprint(tl.States)
	if want := "[{0 healthy  0 0.45} {0 ejected hang 0.45 1} {1 healthy  0 1}]"; got != want {
		t.Errorf("states %s, want %s", got, want)
	}
	got = fmt.Sprint(tl.Process)
	if want := "[{0 up  0 0.3} {0 hung  0.3 0.6} {0 down  0.6 0.7} {0 up  0.7 0.8} {1 up  0 0.8} {0 down  0.8 1} {1 down  0.8 1}]"; got != want {
		t.Errorf("process %s, want %s", got, want)
	}
	if len(tl.Faults) != 3 || tl.Faults[2].Backend != -1 {
		t.Errorf("faults %+v", tl.Faults)
	}
}

func TestParseHealthEvent(t *testing.T) {
	ev, ok := parseHealthEvent([]byte(`{"level":"debug","ts":1795590028.5736496,"logger":"events","msg":"event","name":"unhealthy","id":"x","origin":"http.handlers.reverse_proxy","data":{"host":"127.0.0.1:19001"}}`))
	if !ok || ev.name != "unhealthy" || ev.host != "127.0.0.1:19001" || ev.ts.UnixMicro() != 1795590028573650 {
		t.Errorf("got %+v %v (%d)", ev, ok, ev.ts.UnixMicro())
	}
	ev, ok = parseHealthEvent([]byte(`{"ts":"2026-01-01T00:00:01.5Z","msg":"event","name":"healthy","data":{"host":"h:1"}}`))
	if !ok || !ev.ts.Equal(time.Date(2026, 1, 1, 0, 0, 1, 5e8, time.UTC)) {
		t.Errorf("RFC 3339 ts: %+v %v", ev, ok)
	}
	for _, line := range []string{
		`{"ts":1,"msg":"event","name":"started","data":null}`,
		`{"ts":1,"msg":"handled request"}`,
		`not json`,
	} {
		if _, ok := parseHealthEvent([]byte(line)); ok {
			t.Errorf("parsed %s", line)
		}
	}
}

// TestStateWatcher runs a StateWatcher against fake admin endpoints: the
// failover API, then stock reverse_proxy's with an event log.
func TestStateWatcher(t *testing.T) {
	t0 := time.Now().Add(-time.Second).UTC()
	addrs := []string{"127.0.0.1:1", "127.0.0.1:2"}
	state := make(chan string, 1)
	state <- "healthy"
	failover := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/failover/pools" {
			http.NotFound(w, r)
			return
		}
		s := <-state
		state <- s
		fmt.Fprintf(w, `[{"id":7,"backends":[{"address":%q,"state":"healthy","since":%q,"beats":3,"in_flight":1},`+
			`{"address":%q,"state":%q,"reason":"crash","since":%q,"beats":2,"in_flight":0}]}]`,
			addrs[0], t0.Format(time.RFC3339Nano), addrs[1], s, t0.Add(time.Duration(len(s))*time.Millisecond).Format(time.RFC3339Nano))
	}))
	defer failover.Close()
	w := WatchStates(WatchConfig{Admin: strings.TrimPrefix(failover.URL, "http://"), Addrs: addrs, Interval: 5 * time.Millisecond})
	eventually(t, 5*time.Second, "failover mode", func() bool { return w.Mode() == ModeFailover && w.Current()[1].Known })
	<-state
	state <- "ejected"
	eventually(t, 5*time.Second, "ejection seen", func() bool { return w.Current()[1].State == "ejected" })
	trans := w.Stop()
	if len(trans) != 3 || trans[2].Backend != 1 || trans[2].Reason != "crash" || !trans[2].Since.Equal(t0.Add(7*time.Millisecond)) ||
		!strings.Contains(w.Source(), "failover admin API") || w.Current()[0].Beats != 3 {
		t.Errorf("transitions %+v, source %q, views %+v", trans, w.Source(), w.Current())
	}

	// Stock: passive fails from the API, active health from the event log.
	log := filepath.Join(t.TempDir(), "events.log")
	fails := make(chan int, 1)
	fails <- 0
	stock := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/failover/pools":
			fmt.Fprint(w, "[]")
		case "/reverse_proxy/upstreams":
			n := <-fails
			fails <- n
			fmt.Fprintf(w, `[{"address":%q,"num_requests":0,"fails":%d},{"address":%q,"num_requests":2,"fails":0}]`, addrs[0], n, addrs[1])
		default:
			http.NotFound(w, r)
		}
	}))
	defer stock.Close()
	w = WatchStates(WatchConfig{Admin: strings.TrimPrefix(stock.URL, "http://"), Addrs: addrs, Interval: 5 * time.Millisecond, EventLog: log})
	eventually(t, 5*time.Second, "stock mode", func() bool { return w.Mode() == ModeReverseProxy })
	<-fails
	fails <- 1
	eventually(t, 5*time.Second, "passive failure seen", func() bool { return w.Current()[0].State == StateEjected })
	<-fails
	fails <- 0
	eventually(t, 5*time.Second, "passive failure forgotten", func() bool { return w.Current()[0].State == StateHealthy })
	evTime := time.Now().Add(-time.Millisecond)
	line := fmt.Sprintf(`{"level":"debug","ts":%.6f,"logger":"events","msg":"event","name":"unhealthy","data":{"host":%q}}`+"\n",
		float64(evTime.UnixMicro())/1e6, addrs[1])
	if err := os.WriteFile(log, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "active unhealthy seen", func() bool {
		v := w.Current()
		return v[0].State == StateHealthy && v[1].State == StateEjected
	})
	trans = w.Stop()
	var got []string
	for _, tr := range trans {
		got = append(got, fmt.Sprintf("%d %s %s %s", tr.Backend, tr.State, tr.Reason, tr.From))
	}
	want := []string{"0 healthy  passive-failed", "1 healthy  passive-failed", "0 ejected passive-failed passive-failed",
		"0 healthy  passive-failed", "1 ejected active-check active-check"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stock transitions\n%q\nwant\n%q", got, want)
	}
	if last := trans[len(trans)-1]; last.Since.Sub(evTime).Abs() > time.Millisecond {
		t.Errorf("the active transition's time %v is not the event's %v", last.Since, evTime)
	}
}

// TestRigExternal: a rig over backends run by something else starts none.
func TestRigExternal(t *testing.T) {
	r, err := NewRig(t.Context(), RigConfig{Dir: t.TempDir(), External: []string{"127.0.0.1:1", "127.0.0.1:2"}, Admin: "127.0.0.1:3", Port: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	text, err := r.Caddyfile("failover {{upstreams}} {\n\thealth_uri /health\n}")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Backends()) != 0 || r.URL("/x") != "http://127.0.0.1:4/x" || fmt.Sprint(r.IDs()) != "[b1 b2]" ||
		!strings.Contains(text, "\tadmin 127.0.0.1:3\n") || !strings.Contains(text, "\tfailover 127.0.0.1:1 127.0.0.1:2 {\n\t\thealth_uri /health\n\t}\n") {
		t.Errorf("rig %v %v %v\n%s", r.Backends(), r.URL("/x"), r.IDs(), text)
	}
	if _, err := r.StartCaddy(t.Context(), "x"); err == nil {
		t.Error("StartCaddy without CaddyBin: no error")
	}
	if _, err := r.ExpandBlock("failover {{.Nope}}"); err == nil {
		t.Error("unknown template key: no error")
	}
}

// TestRigBackends: a rig starts its backends, which share the records file.
func TestRigBackends(t *testing.T) {
	r, err := NewRig(t.Context(), RigConfig{BackendBin: backendBin, Dir: t.TempDir(), Backends: 2, Globals: EventLogOptions("/tmp/x.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i, b := range r.Backends() {
		code, _, err := call(testClient, "POST", url(b, "/order"), fmt.Sprint("o", i))
		if err != nil || code != 200 {
			t.Fatalf("POST b%d: %d %v", i+1, code, err)
		}
	}
	data, err := os.ReadFile(r.Records())
	if err != nil || strings.Count(string(data), "\n") != 2 {
		t.Errorf("records %q %v", data, err)
	}
	text, _ := r.Caddyfile("reverse_proxy {{.Upstreams}}")
	if !strings.Contains(text, "\tlog chaos_events {\n\t\toutput file /tmp/x.log\n") || !strings.Contains(text, "reverse_proxy "+r.Upstreams()) {
		t.Errorf("Caddyfile:\n%s", text)
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
	for _, b := range r.Backends() {
		if b.Running() {
			t.Errorf("%s still running after Close", b.Config().ID)
		}
	}
}
