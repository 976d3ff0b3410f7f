package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"slices"
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
	FailuresByMethod map[string]int `json:"failures_by_method"` // GET, POST

	SuccessRatio float64 `json:"success_ratio"`  // Succeeded / Total
	Throughput   float64 `json:"throughput_rps"` // Total / Wall
	Goodput      float64 `json:"goodput_rps"`    // Succeeded / Wall

	// Latency over all requests except canceled ones, failures included:
	// it is what clients waited for.
	LatencyP50  Duration `json:"latency_p50_ms"`
	LatencyP99  Duration `json:"latency_p99_ms"`
	LatencyP999 Duration `json:"latency_p999_ms"`
	LatencyMax  Duration `json:"latency_max_ms"`

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

	// A few example ids, for digging into logs.
	ExecutedTwiceIDs     []string `json:"executed_twice_ids,omitempty"`
	FailedButExecutedIDs []string `json:"failed_but_executed_ids,omitempty"`
}

// maxExampleIDs bounds the id lists in a Report.
const maxExampleIDs = 10

// Analyze computes a Report from load results and the record files the
// backends appended executed orders to (lines "<request-id> <pid>"). The
// record files should be fresh for the run: every line counts.
func Analyze(res *Results, recordFiles ...string) (Report, error) {
	rep := Report{
		Wall:             Duration(res.End.Sub(res.Start)),
		FailuresByKind:   map[string]int{},
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
		switch {
		case r.Err == ErrCanceled:
			rep.Canceled++
			continue
		case r.OK():
			rep.Succeeded++
			okEnds = append(okEnds, r.End())
			if r.Method == http.MethodPost {
				rep.PostsSucceeded++
			}
		default:
			rep.Failed++
			rep.FailuresByKind[r.Err]++
			rep.FailuresByMethod[r.Method]++
		}
		rep.Total++
		latencies = append(latencies, r.Latency)
	}
	if rep.Total > 0 {
		rep.SuccessRatio = float64(rep.Succeeded) / float64(rep.Total)
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

// readRecords counts the record lines of one file by request id.
func readRecords(name string, executed map[string]int, rep *Report) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("chaos: reading records: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
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
	row("succeeded", "%d (%.3f%%)", r.Succeeded, 100*r.SuccessRatio)
	row("failed", "%d%s%s", r.Failed, counts(r.FailuresByKind), counts(r.FailuresByMethod))
	if r.Canceled > 0 {
		row("canceled (run cut)", "%d", r.Canceled)
	}
	row("latency", "p50 %v  p99 %v  p99.9 %v  max %v", r.LatencyP50, r.LatencyP99, r.LatencyP999, r.LatencyMax)
	row("longest gap", "%v without a successful answer (from +%v)", r.LongestGap, r.LongestGapAt)
	row("orders (POST)", "%d sent, %d acknowledged, %d record lines", r.Posts, r.PostsSucceeded, r.RecordLines)
	row("  executed twice", "%d%s", r.ExecutedTwice, ids(r.ExecutedTwiceIDs))
	row("  failed but executed", "%d%s", r.FailedButExecuted, ids(r.FailedButExecutedIDs))
	row("  ok but not recorded", "%d", r.OKButNotRecorded)
	if r.MalformedRecords > 0 {
		row("  malformed records", "%d", r.MalformedRecords)
	}
	return b.String()
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
