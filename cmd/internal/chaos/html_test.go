package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crashonly/caddy-failover/internal/testenv"
)

// syntheticRun makes a 6s run of three backends: steady answers, a crash of
// b2 at 1s (ejected 2ms later, restarted at 1.2s), a hang of b1 at 3s
// (ejected at 3.45s, killed at 4.5s) with a few failures around it.
func syntheticRun(t *testing.T, name string, withStates bool) *Run {
	t.Helper()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	res := &Results{Start: t0, End: at(6000)}
	for i := 0; i < 6000; i += 2 {
		r := Request{Method: "GET", ID: fmt.Sprint(i), Start: at(i), Latency: 2 * time.Millisecond, Status: 200}
		switch {
		case i >= 3000 && i < 3100 && i%20 == 0:
			r.Err, r.Status = ErrStatus, 502
		case i >= 3100 && i < 3200 && i%50 == 0:
			r.Err, r.Status = ErrTransport, 0
		}
		if i%10 == 0 {
			r.Method = "POST"
		}
		res.Requests = append(res.Requests, r)
	}
	faults := []FaultEvent{
		{Fault: Fault{At: time.Second, Kind: FaultCrash, Backend: 1}, Time: at(1000), Action: "SIGKILL", Pids: []int{11}},
		{Fault: Fault{At: 3 * time.Second, Kind: FaultHang, Backend: 0}, Time: at(3000), Action: "SIGSTOP", Pids: []int{10}},
		{Fault: Fault{At: 3 * time.Second, Kind: FaultHang, Backend: 0}, Time: at(4500), Action: "SIGKILL after hang", Pids: []int{10}},
	}
	restarts := []RestartEvent{
		{Backend: 1, ID: "b2", OldPid: 11, NewPid: 21, ExitedAt: at(1001), Time: at(1200)},
		{Backend: 0, ID: "b1", OldPid: 10, NewPid: 20, ExitedAt: at(4501), Time: at(4700)},
	}
	var trans []Transition
	source := ""
	if withStates {
		source = "synthetic"
		tr := func(b int, state, reason string, ms int) Transition {
			return Transition{Backend: b, State: state, Reason: reason, Since: at(ms), Seen: at(ms + 5), From: SourceFailover}
		}
		trans = []Transition{
			tr(0, StateHealthy, "", -500), tr(1, StateHealthy, "", -500), tr(2, StateHealthy, "", -500),
			tr(1, StateEjected, "crash", 1002), tr(1, StateHealthy, "", 1450),
			tr(0, StateEjected, "hang", 3450), tr(0, StateRestarting, "hang", 3460), tr(0, StateProbation, "", 4900), tr(0, StateHealthy, "", 5400),
		}
	}
	rep, err := Analyze(res)
	if err != nil {
		t.Fatal(err)
	}
	rep.AddFaults(t0, 3, faults, restarts, trans, source)
	return &Run{
		Name: name, Block: "failover {{upstreams}}", Backends: []string{"b1", "b2", "b3"}, Start: t0,
		Report: rep, Faults: faults, Restarts: restarts, Transitions: trans,
		Timeline: BuildTimeline(res, 3, 100*time.Millisecond, faults, restarts, trans),
	}
}

func TestSyntheticRunReport(t *testing.T) {
	r := syntheticRun(t, "failover", true).Report
	if r.CrashToEject.Observed != 1 || r.CrashToEject.P50 != Duration(2*time.Millisecond) {
		t.Errorf("crash → eject %+v", r.CrashToEject)
	}
	if r.HangToEject.Observed != 1 || r.HangToEject.P50 != Duration(450*time.Millisecond) {
		t.Errorf("hang → eject %+v", r.HangToEject)
	}
	if r.HangToRestart.Observed != 1 || r.HangToRestart.P50 != Duration(460*time.Millisecond) {
		t.Errorf("hang → restart %+v", r.HangToRestart)
	}
	if r.FaultsApplied != 2 || r.Restarts != 2 || r.FailuresByStatus["502"] != 5 || r.FailuresByKind[ErrTransport] != 2 {
		t.Errorf("faults %d restarts %d failures %v %v", r.FaultsApplied, r.Restarts, r.FailuresByStatus, r.FailuresByKind)
	}
	if got := syntheticRun(t, "stock", false).Report; got.CrashToEject.String() != "n/a (0 of 1)" || got.HangToRestart.Short() != "n/a" {
		t.Errorf("without states: %v / %v", got.CrashToEject, got.HangToRestart.Short())
	}
}

// TestHTMLReportRendersInChromium renders a report of two synthetic runs and
// opens it in headless Chromium: the page's script must have drawn its four
// charts (Chart.js sizes every canvas it draws on), and a screenshot must
// show them, with the healthy and ejected bands in their colours.
func TestHTMLReportRendersInChromium(t *testing.T) {
	chromium := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			chromium = p
			break
		}
	}
	if chromium == "" {
		testenv.Missing(t, "chromium is not installed (Debian: apt-get install -y chromium)")
	}
	dir := t.TempDir()
	page := Page{
		Title: "chaos report test", Generated: time.Now(), Command: "go test", Machine: "test", Scenario: "synthetic",
		Runs: []*Run{syntheticRun(t, "failover", true), syntheticRun(t, "reverse_proxy", false)},
	}
	var buf bytes.Buffer
	if err := WriteHTML(&buf, page); err != nil {
		t.Fatal(err)
	}
	html := filepath.Join(dir, "report.html")
	if err := os.WriteFile(html, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "sourceMappingURL") {
		t.Error("the report refers to a source map")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Chromium takes seconds to start here: dump the DOM and take the
	// screenshot at once, each with its own profile.
	browse := func(profile string, args ...string) ([]byte, error) {
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
			"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions", "--hide-scrollbars",
			"--user-data-dir=" + filepath.Join(dir, profile), "--window-size=1280,2400"}
		cmd := exec.CommandContext(ctx, chromium, append(append(base, args...), "file://"+html)...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("chromium %v: %v\n%s", args, err, stderr.Bytes())
		}
		return out, nil
	}
	shot := filepath.Join(dir, "shot.png")
	var shotErr error
	var wg sync.WaitGroup
	wg.Go(func() { _, shotErr = browse("profile-shot", "--screenshot="+shot) })
	domBytes, domErr := browse("profile-dom", "--dump-dom")
	wg.Wait()
	if err := errors.Join(domErr, shotErr); err != nil {
		t.Fatal(err)
	}

	dom := string(domBytes)
	if !strings.Contains(dom, `data-rendered="4"`) {
		m := regexp.MustCompile(`<body[^>]*>`).FindString(dom)
		t.Fatalf("the page did not report 4 charts drawn: %s", m)
	}
	// Chart.js sets this inline style on every canvas it renders to.
	sized := regexp.MustCompile(`<canvas[^>]*style="display: block; box-sizing: border-box;[^"]*height: \d+px; width: \d+px;`)
	if n := len(sized.FindAllString(dom, -1)); n != 4 {
		t.Errorf("%d canvases drawn by Chart.js, want 4", n)
	}

	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	near := func(r, g, b uint32, want [3]uint32) bool {
		d := func(a, b uint32) uint32 {
			if a > b {
				return a - b
			}
			return b - a
		}
		return d(r>>8, want[0]) < 12 && d(g>>8, want[1]) < 12 && d(b>>8, want[2]) < 12
	}
	var total, ink, green, red int
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			total++
			if r>>8 < 240 || g>>8 < 240 || b>>8 < 240 {
				ink++
			}
			if near(r, g, b, [3]uint32{0x2c, 0xa0, 0x2c}) {
				green++
			}
			if near(r, g, b, [3]uint32{0xd6, 0x27, 0x28}) {
				red++
			}
		}
	}
	t.Logf("screenshot %v: %d of %d pixels not white, %d healthy green, %d ejected red", bounds.Size(), ink, total, green, red)
	if ink < total/20 {
		t.Errorf("the screenshot is nearly blank: %d of %d pixels not white", ink, total)
	}
	if green < 5000 || red < 200 {
		t.Errorf("state bands missing from the screenshot: %d healthy-green and %d ejected-red pixels", green, red)
	}
	if os.Getenv("CHAOS_KEEP_SCREENSHOT") != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(os.Getenv("CHAOS_KEEP_SCREENSHOT"), data, 0o644)
		os.WriteFile(os.Getenv("CHAOS_KEEP_SCREENSHOT")+".html", buf.Bytes(), 0o644)
	}
}
