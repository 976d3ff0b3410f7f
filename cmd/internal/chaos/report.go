package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that marshals to JSON as a number of
// milliseconds (fields holding one are named *_ms).
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).Round(time.Microsecond).String() }

// MarshalJSON writes milliseconds, e.g. 1.5 for 1500µs.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(float64(d) / float64(time.Millisecond))
}

// UnmarshalJSON reads milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return err
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// Report is what clients experienced during a load run, and what the
// backends executed.
type Report struct {
	Wall      Duration `json:"wall_ms"`   // from the load's start to its last answer
	Total     int      `json:"total"`     // requests, canceled ones excluded
	Succeeded int      `json:"succeeded"` // 2xx with the whole body
	Failed    int      `json:"failed"`
	Canceled  int      `json:"canceled"` // cut off because the run was interrupted

	FailuresByKind   map[string]int `json:"failures_by_kind"`   // ErrStatus, ErrTransport, ErrTimeout
	FailuresByStatus map[string]int `json:"failures_by_status"` // the ErrStatus ones by code: "502", "503", …
	FailuresByMethod map[string]int `json:"failures_by_method"` // GET, POST

	SuccessRatio float64 `json:"success_ratio"`  // Succeeded / Total
	Nines        Nines   `json:"nines"`          // the success ratio in nines; null: no failure
	Throughput   float64 `json:"throughput_rps"` // Total / Wall
	Goodput      float64 `json:"goodput_rps"`    // Succeeded / Wall

	// Latency over all requests except canceled ones, failures included:
	// it is what clients waited for.
	LatencyP50  Duration `json:"latency_p50_ms"`
	LatencyP99  Duration `json:"latency_p99_ms"`
	LatencyP999 Duration `json:"latency_p999_ms"`
	LatencyMax  Duration `json:"latency_max_ms"`
	// LatencyMaxOK is the longest a successful request took.
	LatencyMaxOK Duration `json:"latency_max_ok_ms"`

	// LongestGap is the longest stretch of wall time, including the edges of
	// the run, in which no successful request completed; it starts
	// LongestGapAt after the load's start.
	LongestGap   Duration `json:"longest_gap_ms"`
	LongestGapAt Duration `json:"longest_gap_at_ms"`

	// Orders (POST /order) and their records. The record counts are zero
	// when Analyze got no record files.
	Posts             int `json:"posts"`           // sent, canceled ones included
	PostsSucceeded    int `json:"posts_succeeded"` // acknowledged with 2xx
	RecordLines       int `json:"record_lines"`
	MalformedRecords  int `json:"malformed_records"`
	ExecutedTwice     int `json:"executed_twice"`      // request ids on more than one record line: unsafe replays
	ExtraExecutions   int `json:"extra_executions"`    // record lines beyond the first, summed over those ids
	FailedButExecuted int `json:"failed_but_executed"` // POSTs the client saw fail that did execute
	OKButNotRecorded  int `json:"ok_but_not_recorded"` // acknowledged POSTs without a record (should be 0)

	// Legitimately slow GETs (LoadConfig.SlowRatio): sent, and failed.
	SlowGets       int `json:"slow_gets"`
	SlowGetsFailed int `json:"slow_gets_failed"`

	// A few example ids, for digging into logs.
	ExecutedTwiceIDs     []string `json:"executed_twice_ids,omitempty"`
	FailedButExecutedIDs []string `json:"failed_but_executed_ids,omitempty"`

	// How the proxy reacted to the faults; filled in by AddFaults.
	Faults
}

// Nines is a success ratio counted in nines: -log10(1 - ratio), so 99.9% is
// 3 nines and 99.97% is 3.5. A run without a failure has infinitely many,
// which JSON writes as null.
type Nines float64

// NinesOf converts a success ratio in [0, 1].
func NinesOf(ratio float64) Nines {
	switch {
	case ratio >= 1:
		return Nines(math.Inf(1))
	case ratio <= 0:
		return 0
	}
	return Nines(-math.Log10(1 - ratio))
}

func (n Nines) String() string {
	if math.IsInf(float64(n), 1) {
		return "∞"
	}
	return strconv.FormatFloat(float64(n), 'f', 2, 64)
}

// MarshalJSON writes the number (3 decimals), or null for infinity.
func (n Nines) MarshalJSON() ([]byte, error) {
	if math.IsInf(float64(n), 0) || math.IsNaN(float64(n)) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(math.Round(float64(n)*1000)/1000, 'f', -1, 64)), nil
}

// UnmarshalJSON reads a number, or null as infinity.
func (n *Nines) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Nines(math.Inf(1))
		return nil
	}
	var f float64
	err := json.Unmarshal(b, &f)
	*n = Nines(f)
	return err
}

// maxExampleIDs bounds the id lists in a Report.
const maxExampleIDs = 10

// Analyze computes a Report from load results and the record files the
// backends appended executed orders to (lines "<request-id> <pid>"), or
// key stores they committed keyed orders to (see readRecords). The record
// files should be fresh for the run: every line counts.
func Analyze(res *Results, recordFiles ...string) (Report, error) {
	rep := Report{
		Wall:             Duration(res.End.Sub(res.Start)),
		FailuresByKind:   map[string]int{},
		FailuresByStatus: map[string]int{},
		FailuresByMethod: map[string]int{},
	}
	var latencies []time.Duration
	var okEnds []time.Time
	posts := map[string]Request{}
	for _, r := range res.Requests {
		if r.Method == http.MethodPost {
			rep.Posts++
			posts[r.ID] = r
		}
		if r.Slow && r.Err != ErrCanceled {
			rep.SlowGets++
			if !r.OK() {
				rep.SlowGetsFailed++
			}
		}
		switch {
		case r.Err == ErrCanceled:
			rep.Canceled++
			continue
		case r.OK():
			rep.Succeeded++
			okEnds = append(okEnds, r.End())
			rep.LatencyMaxOK = max(rep.LatencyMaxOK, Duration(r.Latency))
			if r.Method == http.MethodPost {
				rep.PostsSucceeded++
			}
		default:
			rep.Failed++
			rep.FailuresByKind[r.Err]++
			rep.FailuresByMethod[r.Method]++
			if r.Err == ErrStatus {
				rep.FailuresByStatus[strconv.Itoa(r.Status)]++
			}
		}
		rep.Total++
		latencies = append(latencies, r.Latency)
	}
	if rep.Total > 0 {
		rep.SuccessRatio = float64(rep.Succeeded) / float64(rep.Total)
		rep.Nines = NinesOf(rep.SuccessRatio)
	}
	if s := time.Duration(rep.Wall).Seconds(); s > 0 {
		rep.Throughput = float64(rep.Total) / s
		rep.Goodput = float64(rep.Succeeded) / s
	}

	slices.Sort(latencies)
	rep.LatencyP50 = Duration(percentile(latencies, 0.50))
	rep.LatencyP99 = Duration(percentile(latencies, 0.99))
	rep.LatencyP999 = Duration(percentile(latencies, 0.999))
	if n := len(latencies); n > 0 {
		rep.LatencyMax = Duration(latencies[n-1])
	}

	slices.SortFunc(okEnds, time.Time.Compare)
	prev := res.Start
	for _, t := range append(okEnds, res.End) {
		if gap := t.Sub(prev); gap > time.Duration(rep.LongestGap) {
			rep.LongestGap, rep.LongestGapAt = Duration(gap), Duration(prev.Sub(res.Start))
		}
		if t.After(prev) {
			prev = t
		}
	}

	if len(recordFiles) == 0 {
		return rep, nil
	}
	executed := map[string]int{}
	for _, name := range recordFiles {
		if err := readRecords(name, executed, &rep); err != nil {
			return rep, err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(executed)) {
		if n := executed[id]; n > 1 {
			rep.ExecutedTwice++
			rep.ExtraExecutions += n - 1
			if len(rep.ExecutedTwiceIDs) < maxExampleIDs {
				rep.ExecutedTwiceIDs = append(rep.ExecutedTwiceIDs, id)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(posts)) {
		r := posts[id]
		switch {
		case !r.OK() && r.Err != ErrCanceled && executed[id] > 0:
			rep.FailedButExecuted++
			if len(rep.FailedButExecutedIDs) < maxExampleIDs {
				rep.FailedButExecutedIDs = append(rep.FailedButExecutedIDs, id)
			}
		case r.OK() && executed[id] == 0:
			rep.OKButNotRecorded++
		}
	}
	return rep, nil
}

// readRecords counts the record lines of one file by request id. A
// directory is a backend's Idempotency-Key store (examples/backend
// -keys-dir): each of its committed results (*.done) is one execution, and
// its first line the record line.
func readRecords(name string, executed map[string]int, rep *Report) error {
	if fi, err := os.Stat(name); err == nil && fi.IsDir() {
		done, err := filepath.Glob(filepath.Join(name, "*.done"))
		if err != nil {
			return fmt.Errorf("chaos: reading records: %w", err)
		}
		for _, f := range done {
			if err := readLines(f, 1, executed, rep); err != nil {
				return err
			}
		}
		return nil
	}
	return readLines(name, -1, executed, rep)
}

// readLines counts the first max record lines of a file (-1: all).
func readLines(name string, max int, executed map[string]int, rep *Report) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("chaos: reading records: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 0; n != max && sc.Scan(); n++ {
		rep.RecordLines++
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			rep.MalformedRecords++
			continue
		}
		executed[fields[0]]++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("chaos: reading records %s: %w", name, err)
	}
	return nil
}

// percentile is the nearest-rank percentile of sorted values (0 if empty).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// String renders the report as a compact table.
func (r Report) String() string {
	var b strings.Builder
	row := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-22s "+format+"\n", append([]any{label}, args...)...)
	}
	row("requests", "%d in %v (%.1f req/s, %.1f ok/s)", r.Total, r.Wall, r.Throughput, r.Goodput)
	row("succeeded", "%d (%s, %s nines)", r.Succeeded, Percent(r.SuccessRatio), r.Nines)
	row("failed", "%d%s%s", r.Failed, counts(r.FailuresByKind), counts(r.FailuresByMethod))
	if len(r.FailuresByStatus) > 0 {
		row("  by status", "%s", strings.TrimSpace(counts(r.FailuresByStatus)))
	}
	if r.Canceled > 0 {
		row("canceled (run cut)", "%d", r.Canceled)
	}
	row("latency", "p50 %v  p99 %v  p99.9 %v  max %v (%v succeeded)", r.LatencyP50, r.LatencyP99, r.LatencyP999, r.LatencyMax, r.LatencyMaxOK)
	row("longest gap", "%v without a successful answer (from +%v)", r.LongestGap, r.LongestGapAt)
	if r.SlowGets > 0 {
		row("slow GETs", "%d sent, %d failed", r.SlowGets, r.SlowGetsFailed)
	}
	row("orders (POST)", "%d sent, %d acknowledged, %d record lines", r.Posts, r.PostsSucceeded, r.RecordLines)
	row("  executed twice", "%d%s", r.ExecutedTwice, ids(r.ExecutedTwiceIDs))
	row("  failed but executed", "%d%s", r.FailedButExecuted, ids(r.FailedButExecutedIDs))
	row("  ok but not recorded", "%d", r.OKButNotRecorded)
	if r.MalformedRecords > 0 {
		row("  malformed records", "%d", r.MalformedRecords)
	}
	if r.FaultsApplied > 0 || r.Restarts > 0 {
		row("faults applied", "%d; %d restarts by the supervisor%s", r.FaultsApplied, r.Restarts, nonZero(", %d failed", r.RestartsFailed))
		row("crash → eject", "%s", r.CrashToEject)
		row("hang → eject", "%s", r.HangToEject)
		row("hang → restart asked", "%s", r.HangToRestart)
		if r.StateSource == "" {
			row("", "(no backend states: the proxy exposes none)")
		}
	}
	return b.String()
}

// Percent formats a ratio as a percentage with enough decimals to show how
// far from 100% it is: 99.97%, 99.9991%, 100%.
func Percent(ratio float64) string {
	if ratio >= 1 {
		return "100%"
	}
	decimals := 2 // two significant digits of the miss, trailing zeros dropped
	if miss := 100 * (1 - ratio); miss < 1 {
		decimals = min(8, 1-int(math.Floor(math.Log10(miss))))
	}
	s := strconv.FormatFloat(100*ratio, 'f', decimals, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "%"
}

func nonZero(format string, n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(format, n)
}

// counts renders a map as "  [a 1, b 2]", sorted by key; empty for none.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return "  [" + strings.Join(parts, ", ") + "]"
}

func ids(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return "  e.g. " + strings.Join(list, " ")
}
