package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// backendBin is the examples/backend binary built once by TestMain.
var backendBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "chaos-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		backendBin = filepath.Join(dir, "backend")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := BuildBinary(ctx, "./examples/backend", backendBin); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}())
}

// startBackends starts n backends on free ports sharing one records file and
// closes them when the test ends.
func startBackends(t *testing.T, n int, args ...string) ([]*Backend, string) {
	t.Helper()
	ports, err := FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	records := filepath.Join(t.TempDir(), "records")
	var bs []*Backend
	for i, port := range ports {
		b, err := StartBackend(t.Context(), BackendConfig{
			Bin:     backendBin,
			Addr:    fmt.Sprintf("127.0.0.1:%d", port),
			ID:      fmt.Sprintf("b%d", i+1),
			Records: records,
			Args:    args,
			Stdout:  testWriter{t},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		bs = append(bs, b)
	}
	return bs, records
}

// testWriter sends child output to the test log (shown on failure or -v).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

var testClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// call sends one request and returns the status and body.
func call(client *http.Client, method, url, requestID string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(""))
	if err != nil {
		return 0, "", err
	}
	if requestID != "" {
		req.Header.Set("X-Request-Id", requestID)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func url(b *Backend, path string) string { return "http://" + b.Config().Addr + path }

// waitChan fails the test if ch is not closed within d.
func waitChan(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
	}
}

// eventually polls cond every 20ms until it holds, failing after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBackendEndpoints(t *testing.T) {
	bs, records := startBackends(t, 1)
	b := bs[0]

	code, body, err := call(testClient, "GET", url(b, "/health"), "")
	if err != nil || code != 200 || body != "ok" {
		t.Fatalf("GET /health = %d %q %v", code, body, err)
	}
	code, body, err = call(testClient, "GET", url(b, "/work?ms=5"), "")
	if want := fmt.Sprintf("backend=b1 pid=%d\n", b.Pid()); err != nil || code != 200 || body != want {
		t.Fatalf("GET /work = %d %q %v, want 200 %q", code, body, err, want)
	}
	for _, tc := range []struct {
		method, path, id string
		code             int
	}{
		{"POST", "/work", "", 405},
		{"GET", "/work?ms=x", "", 400},
		{"GET", "/order", "", 405},
		{"POST", "/order", "", 400},
		{"POST", "/order", "has space", 400},
		{"GET", "/crash", "", 405},
	} {
		if code, body, err := call(testClient, tc.method, url(b, tc.path), tc.id); err != nil || code != tc.code {
			t.Errorf("%s %s (id %q) = %d %q %v, want %d", tc.method, tc.path, tc.id, code, body, err, tc.code)
		}
	}

	for _, m := range []string{"POST", "PUT"} {
		code, body, err = call(testClient, m, url(b, "/order"), "id-"+m)
		if err != nil || code != 200 || body != "ok b1\n" {
			t.Fatalf("%s /order = %d %q %v", m, code, body, err)
		}
	}
	got, err := os.ReadFile(records)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("id-POST %d\nid-PUT %[1]d\n", b.Pid()); string(got) != want {
		t.Fatalf("records = %q, want %q", got, want)
	}
}

func TestBackendCrashEndpointExits2(t *testing.T) {
	bs, _ := startBackends(t, 1)
	b := bs[0]
	if _, _, err := call(testClient, "POST", url(b, "/crash"), ""); err == nil {
		t.Error("POST /crash got an answer")
	}
	waitChan(t, b.Exited(), 5*time.Second, "exit after /crash")
	if code := b.ExitCode(); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
}

func TestBackendStopCont(t *testing.T) {
	bs, _ := startBackends(t, 1)
	b := bs[0]
	short := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	_, _, err := call(short, "GET", url(b, "/health"), "")
	if !isTimeout(err) {
		t.Fatalf("GET /health of a stopped backend: %v, want a timeout", err)
	}
	if err := b.Cont(); err != nil {
		t.Fatal(err)
	}
	if code, _, err := call(testClient, "GET", url(b, "/health"), ""); err != nil || code != 200 {
		t.Fatalf("GET /health after SIGCONT = %d %v", code, err)
	}
	// Close kills a stopped process too.
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b.Running() {
		t.Fatal("still running after Close")
	}
	if err := b.Restart(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Restart after Close: %v, want ErrClosed", err)
	}
}

func TestBackendCrashAfterAndHangAfter(t *testing.T) {
	t.Run("crash-after", func(t *testing.T) {
		bs, _ := startBackends(t, 1, "-crash-after", "2")
		b := bs[0]
		for i := range 2 {
			// /health does not count.
			if code, _, err := call(testClient, "GET", url(b, "/health"), ""); err != nil || code != 200 {
				t.Fatalf("GET /health = %d %v", code, err)
			}
			if code, _, err := call(testClient, "GET", url(b, "/work"), ""); err != nil || code != 200 {
				t.Fatalf("GET /work #%d = %d %v", i+1, code, err)
			}
		}
		waitChan(t, b.Exited(), 5*time.Second, "exit after 2 requests")
		if code := b.ExitCode(); code != 2 {
			t.Fatalf("exit code %d, want 2", code)
		}
	})
	t.Run("hang-after", func(t *testing.T) {
		bs, _ := startBackends(t, 1, "-hang-after", "1")
		b := bs[0]
		if code, _, err := call(testClient, "GET", url(b, "/work"), ""); err != nil || code != 200 {
			t.Fatalf("GET /work = %d %v", code, err)
		}
		short := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
		if _, _, err := call(short, "GET", url(b, "/health"), ""); !isTimeout(err) {
			t.Fatalf("GET /health of a hung backend: %v, want a timeout", err)
		}
	})
	t.Run("hang endpoint", func(t *testing.T) {
		bs, _ := startBackends(t, 1)
		b := bs[0]
		short := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
		if _, _, err := call(short, "POST", url(b, "/hang"), ""); !isTimeout(err) {
			t.Fatalf("POST /hang: %v, want a timeout", err)
		}
		if _, _, err := call(short, "GET", url(b, "/health"), ""); !isTimeout(err) {
			t.Fatalf("GET /health of a hung backend: %v, want a timeout", err)
		}
	})
}

func TestStartBackendFailsOnBusyPort(t *testing.T) {
	bs, _ := startBackends(t, 1)
	_, err := StartBackend(t.Context(), BackendConfig{Bin: backendBin, Addr: bs[0].Config().Addr})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("StartBackend on a busy port: %v", err)
	}
}

func TestSupervisorRestartsKilledBackend(t *testing.T) {
	bs, _ := startBackends(t, 2)
	s := StartSupervisor(bs, SupervisorConfig{})
	defer s.Stop()

	old := bs[1].Pid()
	start := time.Now()
	if err := bs[1].Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	evs, err := s.WaitRestarts(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	if ev.Backend != 1 || ev.ID != "b2" || ev.OldPid != old || ev.NewPid == 0 || ev.NewPid == old || ev.Err != "" {
		t.Fatalf("restart event %+v (old pid %d)", ev, old)
	}
	if ev.NewPid != bs[1].Pid() {
		t.Fatalf("event new pid %d, backend pid %d", ev.NewPid, bs[1].Pid())
	}
	if d := ev.Time.Sub(start); d < 100*time.Millisecond {
		t.Fatalf("restarted after %v, before RestartSec", d)
	}
	code, body, err := call(testClient, "GET", url(bs[1], "/work"), "")
	if want := fmt.Sprintf("pid=%d", ev.NewPid); err != nil || code != 200 || !strings.Contains(body, want) {
		t.Fatalf("GET /work after restart = %d %q %v, want %s", code, body, err, want)
	}

	// A caller's own Restart is not doubled by the supervisor.
	if err := bs[0].Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := bs[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if evs, err = s.WaitRestarts(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if evs := s.Restarts(); len(evs) != 2 || evs[1].Backend != 0 {
		t.Fatalf("restarts %+v, want exactly one more, of backend 0", evs)
	}
}

func TestInjector(t *testing.T) {
	bs, _ := startBackends(t, 3)
	s := StartSupervisor(bs, SupervisorConfig{RestartSec: 50 * time.Millisecond})
	defer s.Stop()
	in := &Injector{Backends: bs, HangFor: 300 * time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()

	hungPid := bs[0].Pid()
	hungExited := bs[0].Exited()
	in.Run(ctx, []Fault{
		{At: 0, Kind: FaultHang, Backend: 0},
		{At: 10 * time.Millisecond, Kind: FaultCrash, Backend: 1},
	})
	// Run returned after the hang's SIGKILL.
	waitChan(t, hungExited, time.Second, "hung backend killed")
	evs := in.Events()
	byAction := map[string]FaultEvent{}
	for _, ev := range evs {
		byAction[ev.Action] = ev
	}
	stop, kill := byAction["SIGSTOP"], byAction["SIGKILL after hang"]
	if len(evs) != 3 || len(byAction) != 3 || stop.Pids[0] != hungPid || kill.Pids[0] != hungPid ||
		kill.Time.Sub(stop.Time) < 300*time.Millisecond || byAction["SIGKILL"].Backend != 1 {
		t.Fatalf("events %v, want SIGSTOP, SIGKILL, SIGKILL after hang (HangFor later)", evs)
	}
	if _, err := s.WaitRestarts(ctx, 2); err != nil {
		t.Fatal(err)
	}

	var exited []<-chan struct{}
	for _, b := range bs {
		eventually(t, 10*time.Second, "backend back", b.Running)
		exited = append(exited, b.Exited())
	}
	in.Apply(ctx, Fault{Kind: FaultOutage, Backend: -1})
	for i, ch := range exited {
		waitChan(t, ch, time.Second, fmt.Sprintf("backend %d killed by outage", i))
	}
	if ev := in.Events()[3]; len(ev.Pids) != 3 || ev.Err != "" {
		t.Fatalf("outage event %v", ev)
	}
	if _, err := s.WaitRestarts(ctx, 5); err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		eventually(t, 10*time.Second, "backend answers", func() bool {
			code, _, err := call(testClient, "GET", url(b, "/health"), "")
			return err == nil && code == 200
		})
	}
}

func TestInjectorKillsHungProcessWhenCanceled(t *testing.T) {
	bs, _ := startBackends(t, 1)
	in := &Injector{Backends: bs, HangFor: time.Hour}
	ctx, cancel := context.WithCancel(t.Context())
	in.Apply(ctx, Fault{Kind: FaultHang, Backend: 0})
	cancel()
	in.Wait()
	waitChan(t, bs[0].Exited(), time.Second, "hung backend killed on cancel")
}

func TestSchedule(t *testing.T) {
	a := Schedule(1, 20*time.Second, 3, nil, 2*time.Second)
	b := Schedule(1, 20*time.Second, 3, nil, 2*time.Second)
	c := Schedule(2, 20*time.Second, 3, nil, 2*time.Second)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatalf("seeds 1 and 2 gave the same schedule %v", a)
	}
	if len(a) != 9 {
		t.Fatalf("%d faults, want 9 (2s..18s)", len(a))
	}
	kinds := map[string]int{}
	for i, f := range a {
		if f.At != time.Duration(i+1)*2*time.Second {
			t.Errorf("fault %d at %v", i, f.At)
		}
		kinds[f.Kind]++
		if (f.Kind == FaultOutage) != (f.Backend == -1) || f.Backend >= 3 {
			t.Errorf("fault %v: bad backend", f)
		}
	}
	for _, k := range DefaultFaultKinds {
		if kinds[k] != 3 {
			t.Errorf("kind %s: %d faults, want 3 (%v)", k, kinds[k], a)
		}
	}
	if s := Schedule(1, 5*time.Second, 2, []string{FaultCrash}, time.Second); len(s) != 4 || s[3].Kind != FaultCrash {
		t.Errorf("crash-only schedule %v", s)
	}
	if s := Schedule(1, time.Second, 0, nil, time.Second); s != nil {
		t.Errorf("no backends: %v", s)
	}
	if err := ValidateKinds([]string{"crash", "nap"}); err == nil {
		t.Error("ValidateKinds accepted nap")
	}
}

func TestAnalyze(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	req := func(method, id string, startMs, latMs int, err string) Request {
		r := Request{Method: method, ID: id, Start: t0.Add(ms(startMs)), Latency: ms(latMs), Status: 200, Err: err}
		if err == ErrStatus {
			r.Status = 502
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		reqs    []Request
		end     int // ms
		records string
		check   func(t *testing.T, r Report)
	}{
		{
			name: "clean",
			reqs: []Request{req("GET", "g1", 0, 10, ""), req("POST", "p1", 5, 10, ""), req("GET", "g2", 20, 10, "")},
			end:  30, records: "p1 100\n",
			check: func(t *testing.T, r Report) {
				want := Report{Total: 3, Succeeded: 3, Posts: 1, PostsSucceeded: 1, RecordLines: 1,
					SuccessRatio: 1, LongestGap: Duration(ms(15)), LongestGapAt: Duration(ms(15)),
					LatencyP50: Duration(ms(10)), LatencyP99: Duration(ms(10)), LatencyP999: Duration(ms(10)), LatencyMax: Duration(ms(10))}
				if r.Total != want.Total || r.Succeeded != want.Succeeded || r.Failed != 0 || r.SuccessRatio != 1 ||
					r.PostsSucceeded != 1 || r.RecordLines != 1 || r.ExecutedTwice != 0 || r.OKButNotRecorded != 0 ||
					r.LongestGap != want.LongestGap || r.LongestGapAt != want.LongestGapAt || r.LatencyMax != want.LatencyMax ||
					math.Abs(r.Throughput-100) > 1e-9 {
					t.Errorf("got %+v", r)
				}
			},
		},
		{
			name: "replays and failures",
			reqs: []Request{
				req("POST", "p1", 0, 10, ""),           // executed twice: unsafe replay
				req("POST", "p2", 0, 15, ErrTransport), // failed but executed
				req("POST", "p3", 0, 20, ErrStatus),    // failed, not executed
				req("POST", "p4", 0, 5, ""),            // acknowledged, no record
				req("GET", "g1", 10, 990, ErrTimeout),
				req("POST", "p5", 100, 900, ErrCanceled), // executed but canceled: neither failed nor counted
				req("GET", "g2", 500, 100, ""),
			},
			end:     1000,
			records: "p1 100\np2 100\np1 101\nx1 100\np1 102\ngarbage\np5 101\n",
			check: func(t *testing.T, r Report) {
				if r.Total != 6 || r.Succeeded != 3 || r.Failed != 3 || r.Canceled != 1 {
					t.Errorf("counts %d/%d/%d/%d", r.Total, r.Succeeded, r.Failed, r.Canceled)
				}
				if fmt.Sprint(r.FailuresByKind) != "map[status:1 timeout:1 transport:1]" || fmt.Sprint(r.FailuresByMethod) != "map[GET:1 POST:2]" {
					t.Errorf("failures %v %v", r.FailuresByKind, r.FailuresByMethod)
				}
				if r.Posts != 5 || r.PostsSucceeded != 2 || r.RecordLines != 7 || r.MalformedRecords != 1 {
					t.Errorf("posts %d/%d, records %d/%d", r.Posts, r.PostsSucceeded, r.RecordLines, r.MalformedRecords)
				}
				if r.ExecutedTwice != 1 || r.ExtraExecutions != 2 || fmt.Sprint(r.ExecutedTwiceIDs) != "[p1]" {
					t.Errorf("executed twice %d (+%d) %v", r.ExecutedTwice, r.ExtraExecutions, r.ExecutedTwiceIDs)
				}
				if r.FailedButExecuted != 1 || fmt.Sprint(r.FailedButExecutedIDs) != "[p2]" || r.OKButNotRecorded != 1 {
					t.Errorf("failed but executed %d %v, ok not recorded %d", r.FailedButExecuted, r.FailedButExecutedIDs, r.OKButNotRecorded)
				}
				// successes end at 5, 10 and 600 ms; the run ends at 1000.
				if r.LongestGap != Duration(ms(590)) || r.LongestGapAt != Duration(ms(10)) {
					t.Errorf("gap %v at %v", r.LongestGap, r.LongestGapAt)
				}
				if r.LatencyMax != Duration(ms(990)) || r.LatencyP50 != Duration(ms(15)) {
					t.Errorf("latency p50 %v max %v", r.LatencyP50, r.LatencyMax)
				}
			},
		},
		{
			name: "no success at all",
			reqs: []Request{req("GET", "g1", 0, 100, ErrTransport), req("GET", "g2", 100, 400, ErrStatus)},
			end:  500,
			check: func(t *testing.T, r Report) {
				if r.SuccessRatio != 0 || r.LongestGap != Duration(ms(500)) || r.LongestGapAt != 0 {
					t.Errorf("ratio %v gap %v at %v", r.SuccessRatio, r.LongestGap, r.LongestGapAt)
				}
			},
		},
		{
			name:  "empty",
			check: func(t *testing.T, r Report) { _ = r.String() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &Results{Start: t0, End: t0.Add(ms(tc.end)), Requests: tc.reqs}
			var files []string
			if tc.records != "" {
				// Split the records over two files, as if from two hosts.
				lines := strings.SplitAfter(tc.records, "\n")
				half := len(lines) / 2
				for i, part := range []string{strings.Join(lines[:half], ""), strings.Join(lines[half:], "")} {
					f := filepath.Join(t.TempDir(), fmt.Sprint(i))
					if err := os.WriteFile(f, []byte(part), 0o644); err != nil {
						t.Fatal(err)
					}
					files = append(files, f)
				}
			}
			r, err := Analyze(res, files...)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
			if _, err := jsonRoundTrip(r); err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", r)
		})
	}
	if _, err := Analyze(&Results{}, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing record file: no error")
	}
}

// A key store directory counts one execution per committed result (its
// first line), beside a record file; other files in it are not records.
func TestAnalyzeKeyStore(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"a.done": "p1 100\n200\nok b1\n", "b.done": "p2 101\n200\nok b2\n",
		"a.lease.1": "host 100 5 0\n", "a.lease.2": "host 101 6 0\n", ".tmp.x": "p1 100\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	log := filepath.Join(t.TempDir(), "orders.log")
	if err := os.WriteFile(log, []byte("p2 102\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res := &Results{Start: t0, End: t0.Add(time.Second), Requests: []Request{
		{Method: "POST", ID: "p1", Start: t0, Status: 200}, {Method: "POST", ID: "p2", Start: t0, Status: 200},
	}}
	r, err := Analyze(res, log, dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.RecordLines != 3 || r.ExecutedTwice != 1 || fmt.Sprint(r.ExecutedTwiceIDs) != "[p2]" || r.OKButNotRecorded != 0 || r.MalformedRecords != 0 {
		t.Errorf("records %d, twice %d %v, not recorded %d, malformed %d", r.RecordLines, r.ExecutedTwice, r.ExecutedTwiceIDs, r.OKButNotRecorded, r.MalformedRecords)
	}
}

func TestRunLoadAgainstBackend(t *testing.T) {
	bs, records := startBackends(t, 1)
	var seen atomic.Int64
	res := RunLoad(t.Context(), LoadConfig{
		URL:         "http://" + bs[0].Config().Addr,
		Concurrency: 4,
		Duration:    10 * time.Second,
		MaxRequests: 300,
		PostRatio:   0.5,
		Seed:        7,
		WorkMs:      1,
		OnResult:    func(Request) { seen.Add(1) },
	})
	if len(res.Requests) != 300 || seen.Load() != 300 {
		t.Fatalf("%d requests (%d seen), want 300", len(res.Requests), seen.Load())
	}
	r, err := Analyze(res, records)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if r.Succeeded != 300 || r.Posts == 0 || r.Posts == 300 || r.RecordLines != r.Posts ||
		r.ExecutedTwice != 0 || r.OKButNotRecorded != 0 || r.FailedButExecuted != 0 {
		t.Fatalf("report %+v", r)
	}
	ids := map[string]bool{}
	for _, q := range res.Requests {
		if ids[q.ID] || !strings.HasPrefix(q.ID, "7-") {
			t.Fatalf("bad or duplicate id %q", q.ID)
		}
		ids[q.ID] = true
	}
}

func jsonRoundTrip(r Report) (Report, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return Report{}, err
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		return Report{}, err
	}
	if back.LongestGap != r.LongestGap || back.Total != r.Total {
		return back, fmt.Errorf("JSON round trip changed the report: %s", b)
	}
	return back, nil
}

func TestBackendStartupDelay(t *testing.T) {
	start := time.Now()
	bs, _ := startBackends(t, 1, "-startup-delay", "300ms")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("StartBackend returned after %v, before the startup delay", d)
	}
	if code, _, err := call(testClient, "GET", url(bs[0], "/health"), ""); err != nil || code != 200 {
		t.Fatalf("GET /health = %d %v", code, err)
	}
}
