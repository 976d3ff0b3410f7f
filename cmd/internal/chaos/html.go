package chaos

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"regexp"
	"strings"
	"time"
)

// The chart library, inlined into every report so that it opens offline
// (see assets/README.md).
var (
	//go:embed assets/chart.umd.min.js
	chartJS string
	//go:embed assets/chartjs-plugin-annotation.min.js
	annotationJS string
)

// sourceMapRE matches the source map comment of a minified file: the map is
// not shipped, so the browser must not look for it.
var sourceMapRE = regexp.MustCompile(`(?m)^//# sourceMappingURL=.*$`)

// Page is an HTML report of one or more runs of the same scenario.
type Page struct {
	Title     string
	Generated time.Time
	Command   string // how the runs were made
	Machine   string // where
	Scenario  string // what: duration, backends, load, faults, seed
	Runs      []*Run
	Notes     []string // shown under the summary
}

// pageView is what the template sees.
type pageView struct {
	Page
	Names   []string
	Rows    []Row
	Ratio   bool
	Charts  int
	Data    any
	ChartJS template.JS
	Plugin  template.JS
}

// WriteHTML writes a self-contained HTML report: the summary table (with
// ratios of the first run to the second when there are two), then for every
// run its site block, a chart of answers and failures per second and a chart
// of every backend's state over time (the proxy's view and the process's),
// with the faults marked, on the same time axis for all runs. The page sets
// <body data-rendered="N"> once its script has drawn its N charts.
func WriteHTML(w io.Writer, p Page) error {
	v := pageView{
		Page:    p,
		Ratio:   len(p.Runs) == 2,
		Charts:  2 * len(p.Runs),
		ChartJS: template.JS(sourceMapRE.ReplaceAllString(chartJS, "")),
		Plugin:  template.JS(sourceMapRE.ReplaceAllString(annotationJS, "")),
	}
	var reps []Report
	type runData struct {
		Name     string   `json:"name"`
		Backends []string `json:"backends"`
		Timeline Timeline `json:"timeline"`
	}
	var data []runData
	for _, r := range p.Runs {
		v.Names = append(v.Names, r.Name)
		reps = append(reps, r.Report)
		data = append(data, runData{r.Name, r.Backends, r.Timeline})
	}
	v.Rows = SummaryRows(reps)
	v.Data = data
	return pageTmpl.Execute(w, v)
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"ms": func(d *Duration) string {
		if d == nil {
			return ""
		}
		return fmt.Sprintf("%.1f ms", float64(*d)/float64(time.Millisecond))
	},
	"backendName": func(r *Run, i int) string {
		if i >= 0 && i < len(r.Backends) {
			return r.Backends[i]
		}
		return "all"
	},
	"sub":          func(label string) bool { return strings.HasPrefix(label, " ") },
	"statesHeight": func(r *Run) int { return 110 + 2*26*len(r.Backends) },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin: .1em 0; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { padding: .15em .8em; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; }
td.ratio { color: #0a58ca; }
td.sub { padding-left: 2em; color: #444; }
pre { background: #f6f8fa; padding: .6em .8em; overflow-x: auto; font-size: 12px; }
.traffic { position: relative; height: 240px; }
.states { position: relative; }
details { margin: .5em 0; }
.notes { color: #555; font-size: 13px; }
footer { margin-top: 3em; color: #777; font-size: 12px; }
</style>
</head>
<body data-rendered="0">
<h1>{{.Title}}</h1>
<p class="meta">{{.Generated.Format "2006-01-02 15:04:05 MST"}}{{if .Machine}} · {{.Machine}}{{end}}</p>
{{if .Command}}<p class="meta"><code>{{.Command}}</code></p>{{end}}
{{if .Scenario}}<p class="meta">{{.Scenario}}</p>{{end}}

<table id="summary">
<thead><tr><th></th>{{range .Names}}<th>{{.}}</th>{{end}}{{if .Ratio}}<th>ratio {{index .Names 0}} / {{index .Names 1}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr><td{{if sub .Label}} class="sub"{{end}}>{{.Label}}</td>{{range .Values}}<td>{{.}}</td>{{end}}{{if $.Ratio}}<td class="ratio">{{.Ratio}}</td>{{end}}</tr>
{{end}}</tbody>
</table>
{{if .Notes}}<div class="notes">{{range .Notes}}<p>{{.}}</p>{{end}}</div>{{end}}

{{range $i, $r := .Runs}}
<section class="run" id="run-{{$i}}">
<h2>{{$r.Name}}</h2>
<pre>{{$r.Block}}</pre>
<p class="meta">Answers per second (left axis) and failures per second (right axis), by completion time; faults are the vertical lines
(solid: the fault; dashed: the kill that ends a hang).</p>
<div class="traffic"><canvas id="traffic-{{$i}}"></canvas></div>
<p class="meta">Backends: the proxy's view ({{if $r.Report.StateSource}}{{$r.Report.StateSource}}{{else}}none: this proxy exposes no backend state{{end}})
and the process as the injector and supervisor left it.</p>
<div class="states" style="height: {{statesHeight $r}}px"><canvas id="states-{{$i}}"></canvas></div>
{{with $r.Report.Detections}}<details><summary>Reactions to each fault</summary>
<table>
<thead><tr><th>at</th><th>fault</th><th>backend</th><th>state before</th><th>fault → eject</th><th>seen by the poll</th><th>reason</th><th>fault → restart asked</th></tr></thead>
<tbody>
{{range .}}<tr><td>+{{.At}}</td><td>{{.Kind}}{{if .Outage}} (outage){{end}}</td><td>{{backendName $r .Backend}}</td><td>{{.Before}}</td><td>{{ms .Eject}}</td><td>{{ms .EjectSeen}}</td><td>{{.Reason}}</td><td>{{ms .Restart}}</td></tr>
{{end}}</tbody>
</table></details>{{end}}
</section>
{{end}}

<footer>Charts drawn with Chart.js 4.6.1 and chartjs-plugin-annotation 3.1.0 (MIT licensed), inlined.</footer>
<script>{{.ChartJS}}</script>
<script>{{.Plugin}}</script>
<script>
(function () {
  const runs = {{.Data}} || [];
  Chart.register(window["chartjs-plugin-annotation"]);
  const stateColors = {healthy: "#2ca02c", probation: "#98df8a", unknown: "#9e9e9e", ejected: "#d62728", restarting: "#ff7f0e"};
  const procColors = {up: "#a6cee3", hung: "#6a3d9a", down: "#222222"};
  const faultColors = {crash: "#d62728", hang: "#6a3d9a", outage: "#000000"};
  let xmax = 0;
  for (const r of runs) xmax = Math.max(xmax, r.timeline.duration_ms / 1000);
  const fmt = (s) => s.toFixed(3) + "s";
  let rendered = 0;

  runs.forEach(function (run, i) {
    const tl = run.timeline;
    const bucket = tl.bucket_ms / 1000;
    // per second; the last bucket may be cut short by the end of the run
    const dur = tl.duration_ms / 1000;
    // (bucket k spans k*bucket to (k+1)*bucket: "after" steps, and a last point at the end)
    const series = function (counts) {
      const pts = counts.map((c, k) => ({x: k * bucket, y: c / Math.max(0.001, Math.min(bucket, dur - k * bucket))}));
      if (pts.length) pts.push({x: dur, y: pts[pts.length - 1].y});
      return pts;
    };
    const who = (b) => b < 0 ? "all" : (run.backends[b] || ("#" + b));
    const faultLines = (withLabels) => tl.faults.map(function (f) {
      const after = f.action === "SIGKILL after hang";
      return {
        type: "line", xMin: f.at, xMax: f.at, borderWidth: after ? 1 : 2,
        borderColor: faultColors[f.kind] || "#000", borderDash: after ? [4, 3] : [],
        label: {display: withLabels && !after, content: (f.kind === "outage" ? "outage" : f.kind + " " + who(f.backend)),
                position: "end", font: {size: 10}, padding: 2, backgroundColor: "rgba(0,0,0,0.65)"}
      };
    });
    const xAxis = {type: "linear", min: 0, max: xmax, ticks: {includeBounds: false}, title: {display: true, text: "seconds from the load's start"}};

    new Chart(document.getElementById("traffic-" + i), {
      type: "line",
      data: {datasets: [
        {label: "answers/s", data: series(tl.ok), borderColor: "#2ca02c", backgroundColor: "rgba(44,160,44,0.15)", fill: true, yAxisID: "y"},
        {label: "status failures/s", data: series(tl.failed.status), borderColor: "#d62728", yAxisID: "y2"},
        {label: "transport errors/s", data: series(tl.failed.transport), borderColor: "#ff7f0e", yAxisID: "y2"},
        {label: "timeouts/s", data: series(tl.failed.timeout), borderColor: "#6a3d9a", yAxisID: "y2"}
      ]},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
        elements: {point: {radius: 0}, line: {borderWidth: 1.5, stepped: "after"}},
        interaction: {mode: "nearest", axis: "x", intersect: false},
        scales: {x: xAxis, y: {beginAtZero: true, title: {display: true, text: "answers/s"}},
                 y2: {beginAtZero: true, position: "right", grid: {drawOnChartArea: false}, suggestedMax: 10, title: {display: true, text: "failures/s"}}},
        plugins: {annotation: {annotations: faultLines(true)}, legend: {position: "bottom"}}
      }
    });
    rendered++;

    const rows = [];
    run.backends.forEach(function (b) { rows.push(b + " proxy view", b + " process"); });
    const datasets = [];
    const add = function (spans, colors, suffix) {
      for (const state of Object.keys(colors)) {
        const data = spans.filter((s) => s.state === state).map((s) => ({
          x: [s.from, Math.max(s.to, s.from + 0.002)], y: run.backends[s.backend] + suffix, reason: s.reason || ""}));
        if (data.length) datasets.push({label: state + (suffix === " process" ? " (process)" : ""), data: data,
          backgroundColor: colors[state], borderWidth: 0, grouped: false, barPercentage: 0.85, categoryPercentage: 0.9});
      }
    };
    add(tl.states || [], stateColors, " proxy view");
    add(tl.process || [], procColors, " process");
    new Chart(document.getElementById("states-" + i), {
      type: "bar",
      data: {labels: rows, datasets: datasets},
      options: {
        indexAxis: "y", animation: false, responsive: true, maintainAspectRatio: false,
        scales: {x: xAxis, y: {type: "category", labels: rows}},
        plugins: {
          annotation: {annotations: faultLines(false)}, legend: {position: "bottom"},
          tooltip: {callbacks: {label: function (c) {
            const d = c.raw;
            return c.dataset.label + (d.reason ? " (" + d.reason + ")" : "") + ": " + fmt(d.x[0]) + " → " + fmt(d.x[1]);
          }}}
        }
      }
    });
    rendered++;
  });
  document.body.setAttribute("data-rendered", String(rendered));
})();
</script>
</body>
</html>
`))
