package chaos

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Row is one line of a summary table: a label, one value per report and,
// when there are two reports, the ratio of the first to the second where a
// ratio means something ("" elsewhere).
type Row struct {
	Label  string   `json:"label"`
	Values []string `json:"values"`
	Ratio  string   `json:"ratio,omitempty"`
}

// SummaryRows tabulates reports side by side. With two reports the Ratio
// column is first / second for throughput, goodput, latencies, failures,
// the longest gap and nines.
func SummaryRows(reps []Report) []Row {
	var rows []Row
	add := func(label string, ratio func(a, b Report) string, value func(r Report) string) {
		row := Row{Label: label}
		for _, r := range reps {
			row.Values = append(row.Values, value(r))
		}
		if len(reps) == 2 && ratio != nil {
			row.Ratio = ratio(reps[0], reps[1])
		}
		rows = append(rows, row)
	}
	num := func(f func(Report) float64) func(a, b Report) string {
		return func(a, b Report) string { return ratio(f(a), f(b)) }
	}
	dur := func(f func(Report) Duration) func(a, b Report) string {
		return num(func(r Report) float64 { return float64(f(r)) })
	}

	add("requests", nil, func(r Report) string { return strconv.Itoa(r.Total) })
	add("throughput (req/s)", num(func(r Report) float64 { return r.Throughput }), func(r Report) string { return fmt.Sprintf("%.0f", r.Throughput) })
	add("goodput (ok/s)", num(func(r Report) float64 { return r.Goodput }), func(r Report) string { return fmt.Sprintf("%.0f", r.Goodput) })
	add("success ratio", nil, func(r Report) string { return Percent(r.SuccessRatio) })
	add("nines", func(a, b Report) string { return ratio(float64(a.Nines), float64(b.Nines)) }, func(r Report) string { return r.Nines.String() })
	add("failed", num(func(r Report) float64 { return float64(r.Failed) }), func(r Report) string { return strconv.Itoa(r.Failed) })
	add("  status", nil, func(r Report) string {
		s := strconv.Itoa(r.FailuresByKind[ErrStatus])
		if len(r.FailuresByStatus) > 0 {
			s = strings.TrimSpace(counts(r.FailuresByStatus)) + " " + s
		}
		return s
	})
	add("  transport error", nil, func(r Report) string { return strconv.Itoa(r.FailuresByKind[ErrTransport]) })
	add("  timeout", nil, func(r Report) string { return strconv.Itoa(r.FailuresByKind[ErrTimeout]) })
	add("  GET failed", nil, func(r Report) string { return strconv.Itoa(r.FailuresByMethod["GET"]) })
	add("  POST failed", nil, func(r Report) string { return strconv.Itoa(r.FailuresByMethod["POST"]) })
	add("latency p50", dur(func(r Report) Duration { return r.LatencyP50 }), func(r Report) string { return r.LatencyP50.String() })
	add("latency p99", dur(func(r Report) Duration { return r.LatencyP99 }), func(r Report) string { return r.LatencyP99.String() })
	add("latency p99.9", dur(func(r Report) Duration { return r.LatencyP999 }), func(r Report) string { return r.LatencyP999.String() })
	add("latency max", dur(func(r Report) Duration { return r.LatencyMax }), func(r Report) string { return r.LatencyMax.String() })
	add("  of those that succeeded", dur(func(r Report) Duration { return r.LatencyMaxOK }), func(r Report) string { return r.LatencyMaxOK.String() })
	add("longest gap w/o success", dur(func(r Report) Duration { return r.LongestGap }), func(r Report) string { return r.LongestGap.String() })
	add("slow GETs sent / failed", nil, func(r Report) string { return fmt.Sprintf("%d / %d", r.SlowGets, r.SlowGetsFailed) })
	add("POSTs sent / acked", nil, func(r Report) string { return fmt.Sprintf("%d / %d", r.Posts, r.PostsSucceeded) })
	add("POSTs executed twice", nil, func(r Report) string { return strconv.Itoa(r.ExecutedTwice) })
	add("POSTs failed, executed", nil, func(r Report) string { return strconv.Itoa(r.FailedButExecuted) })
	add("POSTs acked, not run", nil, func(r Report) string { return strconv.Itoa(r.OKButNotRecorded) })
	add("faults applied", nil, func(r Report) string { return strconv.Itoa(r.FaultsApplied) })
	add("crash → eject p50/max", nil, func(r Report) string { return r.CrashToEject.Short() })
	add("hang → eject p50/max", nil, func(r Report) string { return r.HangToEject.Short() })
	add("hang → restart asked", nil, func(r Report) string { return r.HangToRestart.Short() })
	add("restarts", nil, func(r Report) string { return strconv.Itoa(r.Restarts) })
	return rows
}

// ratio formats a / b as "0.97×"; "=" when both are zero, "∞" when only b
// is (or a is infinite), "-" when a ratio means nothing.
func ratio(a, b float64) string {
	switch {
	case math.IsNaN(a) || math.IsNaN(b):
		return "-"
	case math.IsInf(a, 1) && math.IsInf(b, 1), a == 0 && b == 0:
		return "="
	case math.IsInf(a, 1), b == 0:
		return "∞"
	case math.IsInf(b, 1):
		return "0×"
	}
	r := a / b
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f×", r)
	case r >= 10:
		return fmt.Sprintf("%.1f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// FormatTable renders rows as an aligned text table with one column per
// name and, if any row has one, a ratio column headed ratioHead.
func FormatTable(names []string, rows []Row, ratioHead string) string {
	hasRatio := false
	for _, r := range rows {
		hasRatio = hasRatio || r.Ratio != ""
	}
	head := append([]string{""}, names...)
	if hasRatio {
		head = append(head, ratioHead)
	}
	table := [][]string{head}
	for _, r := range rows {
		line := append([]string{r.Label}, r.Values...)
		if hasRatio {
			line = append(line, r.Ratio)
		}
		table = append(table, line)
	}
	width := make([]int, len(head))
	for _, line := range table {
		for i, c := range line {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, line := range table {
		for i, c := range line {
			pad := width[i] - utf8.RuneCountInString(c)
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString("  " + strings.Repeat(" ", pad) + c)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
