package harness

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Files WriteResults writes besides results.json and results.md.
const (
	PPSPlot     = "pps.png"         // delivered pps per scenario and scale, the two baselines beside
	LatencyPlot = "latency_cdf.png" // first-packet latency CDF per scale
)

// TableHeader is the Markdown header of TableRow.
func TableHeader() string {
	return "| scenario | policies (on the sink: policies, clauses) | pods | xdpolicy pps (min–max) | none pps | nftables pps | × none | × nftables | × nftables per core | xdpolicy first packet p50 / p99 µs, lost of sent | nftables first packet | none first packet | agent CPU s/Mpkt | machine CPU s/Mpkt (none, nftables) | Mpps per agent core | 2× overload |\n" +
		"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
}

// TableRow is one Markdown row.
func TableRow(r *Result) string {
	k := func(v float64) string {
		switch {
		case v >= 1e6:
			return fmt.Sprintf("%.2fM", v/1e6)
		case v >= 1e3:
			return fmt.Sprintf("%.0fk", v/1e3)
		}
		return fmt.Sprintf("%.0f", v)
	}
	lat := func(p50, p99 float64, lost, sent int) string {
		return fmt.Sprintf("%.0f / %.0f, %d of %d", p50, p99, lost, sent)
	}
	return fmt.Sprintf("| %s | %d (%d, %d) | %d | %s (%s–%s) | %s | %s | %.2f | %.2f | %.2f | %s | %s | %s | %.2f | %.2f (%.2f, %.2f) | %.2f | %.2f of peak (%s offered) |",
		r.Scenario, r.Policies, r.SinkPolicies, r.SinkClauses, r.Pods, k(r.PPS), k(r.PPSMin), k(r.PPSMax), k(r.NonePPS), k(r.NftPPS),
		r.RatioNone, r.RatioNft, r.RatioNftPerCore,
		lat(r.P50us, r.P99us, r.ProbesLost, r.ProbesSent), lat(r.NftP50us, r.NftP99us, r.NftProbesLost, r.NftProbesSent),
		lat(r.NoneP50us, r.NoneP99us, r.NoneProbesLost, r.NoneProbesSent),
		r.CPUsPerMpkt, r.MachineCPUsPerMpkt, r.NoneMachineCPU, r.NftMachineCPU, r.MppsPerAgentCore,
		r.OverloadRatio, k(r.OverloadOffered))
}

// WriteResults writes results.json (one object per line), results.md and
// the plots (PPSPlot, LatencyPlot) into dir.
func WriteResults(dir, cmdline string, rs []*Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	for _, r := range rs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js.Bytes(), 0o644); err != nil {
		return err
	}
	host, _ := os.Hostname()
	var md strings.Builder
	fmt.Fprintf(&md, "# xdpolicy bench results\n\nGenerated %s on %s (%d CPUs) by:\n\n```sh\n%s\n```\n\n",
		time.Now().UTC().Format(time.RFC3339), host, numCPU(), cmdline)
	md.WriteString(TableHeader() + "\n")
	for _, r := range rs {
		md.WriteString(TableRow(r) + "\n")
	}
	fmt.Fprintf(&md, "\n![delivered packets/s per scenario, with no enforcement and nftables beside](%s)\n\n![first-packet latency CDF per scale](%s)\n", PPSPlot, LatencyPlot)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := PPSChart(rs, filepath.Join(dir, PPSPlot)); err != nil {
		return err
	}
	return LatencyChart(rs, filepath.Join(dir, LatencyPlot))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

// Series colours: the baselines in greys and orange, xdpolicy in blues and
// greens, distinct also in dashes for the line charts.
var (
	colNone     = color.RGBA{0x9e, 0x9e, 0x9e, 255}
	colNft      = color.RGBA{0xe6, 0x7e, 0x22, 255}
	colXdpolicy = color.RGBA{0x1f, 0x6f, 0xb4, 255}
	lineColors  = []color.RGBA{colXdpolicy, {0x2c, 0xa0, 0x2c, 255}, {0x94, 0x67, 0xbd, 255}, {0xd6, 0x27, 0x28, 255},
		{0x17, 0xbe, 0xcf, 255}, {0x8c, 0x56, 0x4b, 255}}
	dashes = [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(2), vg.Points(2)}, {vg.Points(8), vg.Points(3), vg.Points(2), vg.Points(3)}}
)

// scale is one (policies, pods) point of the matrix.
type scale struct{ policies, pods int }

func (s scale) String() string {
	return fmt.Sprintf("%s policies, %s pods", count(s.policies), count(s.pods))
}

func count(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// scales lists the results' scales, by pods then policies.
func scales(rs []*Result) []scale {
	var out []scale
	for _, r := range rs {
		if s := (scale{r.Policies, r.Pods}); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b scale) int { return cmp.Or(cmp.Compare(a.pods, b.pods), cmp.Compare(a.policies, b.policies)) })
	return out
}

// PPSChart answers "how many packets per second does each scenario
// deliver, against no enforcement and nftables on the same run": one panel
// per scenario, a group of three bars (none, nftables, xdpolicy) per
// scale, each the median of the repetitions with a min–max whisker and its
// value on top (a bar too short to see still has its label).
func PPSChart(rs []*Result, path string) error {
	var panels []panel
	for _, scen := range Scenarios {
		var in []*Result
		for _, r := range rs {
			if r.Scenario == scen {
				in = append(in, r)
			}
		}
		if len(in) == 0 {
			continue
		}
		sc := scales(in)
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: delivered packets/s (median of reps, whiskers min–max)", scen)
		p.Y.Label.Text = "delivered packets/s (millions)"
		p.X.Label.Text = "synthetic cluster"
		grid := plotter.NewGrid()
		grid.Vertical.Color = nil
		p.Add(grid)
		names := make([]string, len(sc))
		for i, s := range sc {
			names[i] = fmt.Sprintf("%s policies\n%s pods", count(s.policies), count(s.pods))
		}
		const bw = 22 // bar width, points
		series := []struct {
			name  string
			col   color.Color
			value func(*Result) (med, lo, hi float64)
		}{
			{"no enforcement", colNone, func(r *Result) (float64, float64, float64) { return r.NonePPS, r.NoneMin, r.NoneMax }},
			{"nftables", colNft, func(r *Result) (float64, float64, float64) { return r.NftPPS, r.NftMin, r.NftMax }},
			{"xdpolicy", colXdpolicy, func(r *Result) (float64, float64, float64) { return r.PPS, r.PPSMin, r.PPSMax }},
		}
		for si, s := range series {
			vals := make(plotter.Values, len(sc))
			pts := errPoints{XYs: make(plotter.XYs, len(sc)), YErrors: make(plotter.YErrors, len(sc))}
			labels := make([]string, len(sc))
			for i, x := range sc {
				for _, r := range in {
					if r.Policies == x.policies && r.Pods == x.pods {
						med, lo, hi := s.value(r)
						vals[i] = med / 1e6
						pts.XYs[i] = plotter.XY{X: float64(i), Y: med / 1e6}
						pts.YErrors[i].Low, pts.YErrors[i].High = max(0, med-lo)/1e6, max(0, hi-med)/1e6
						labels[i] = rate(med)
					}
				}
			}
			off := vg.Points(float64(si-1) * (bw + 2))
			bars, err := plotter.NewBarChart(vals, vg.Points(bw))
			if err != nil {
				return err
			}
			bars.Color, bars.LineStyle.Width, bars.Offset = s.col, 0, off
			eb, err := plotter.NewYErrorBars(pts)
			if err != nil {
				return err
			}
			eb.CapWidth = vg.Points(8)
			hi := pts.XYs
			top := make(plotter.XYs, len(hi))
			for i := range hi {
				top[i] = plotter.XY{X: hi[i].X, Y: hi[i].Y + pts.YErrors[i].High}
			}
			lb, err := plotter.NewLabels(plotter.XYLabels{XYs: top, Labels: labels})
			if err != nil {
				return err
			}
			for i := range lb.TextStyle {
				lb.TextStyle[i].Font.Size = vg.Points(7)
				lb.TextStyle[i].XAlign = draw.XCenter
			}
			lb.Offset = vg.Point{X: off, Y: vg.Points(3)}
			p.Add(bars, offsetErrBars{eb, off}, lb)
			p.Legend.Add(s.name, bars)
		}
		p.NominalX(names...)
		p.Legend.Top = true
		p.Legend.Left = true
		// Room for the legend above the bars, and for the outer bars.
		p.Y.Min, p.Y.Max = 0, p.Y.Max*1.45
		p.X.Min, p.X.Max = -0.6, float64(len(sc))-0.4
		panels = append(panels, panel{Plot: p})
	}
	if len(panels) == 0 {
		return fmt.Errorf("pps chart: no results")
	}
	w := vg.Length(max(18, 5+4*len(scales(rs)))) * vg.Centimeter
	return saveTiles(path, panels, 1, w, 9*vg.Centimeter)
}

// rate formats packets/s for a bar's label: 1.23M, 886k, 3.5k.
func rate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.1fk", v/1e3)
}

// errPoints are bar tops with their whiskers, for plotter.NewYErrorBars.
type errPoints struct {
	plotter.XYs
	plotter.YErrors
}

// offsetErrBars draws YErrorBars shifted by Offset, over a bar of a group.
type offsetErrBars struct {
	*plotter.YErrorBars
	Offset vg.Length
}

func (e offsetErrBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	for i, er := range e.YErrors {
		x := trX(e.XYs[i].X) + e.Offset
		lo, hi := trY(e.XYs[i].Y-math.Abs(er.Low)), trY(e.XYs[i].Y+math.Abs(er.High))
		if lo == hi {
			continue
		}
		c.StrokeLine2(e.LineStyle, x, lo, x, hi)
		c.StrokeLine2(e.LineStyle, x-e.CapWidth/2, lo, x+e.CapWidth/2, lo)
		c.StrokeLine2(e.LineStyle, x-e.CapWidth/2, hi, x+e.CapWidth/2, hi)
	}
}

// Samples is one labelled series of a CDF chart: the durations measured,
// and how many more attempts never completed (lost, timed out). The CDF is
// over all attempts, so it ends below 1 by the fraction lost.
type Samples struct {
	Label string
	D     []time.Duration
	Lost  int
}

// LatencyChart answers "how long does the first packet of a new flow
// take, against nftables and no enforcement": one panel per scale, a CDF
// per scenario of the xdpolicy agent and one per baseline (its probes of
// every scenario at that scale pooled: the baselines do not depend on the
// scenario), over every repetition's probes. Lost probes count in the
// denominator.
func LatencyChart(rs []*Result, path string) error {
	var panels []panel
	for _, s := range scales(rs) {
		var series []Samples
		var none, nft Samples
		none.Label, nft.Label = "no enforcement", "nftables"
		for _, scen := range Scenarios {
			for _, r := range rs {
				if r.Scenario != scen || r.Policies != s.policies || r.Pods != s.pods {
					continue
				}
				series = append(series, Samples{Label: "xdpolicy " + scen, D: durations(r.LatencyUS), Lost: r.ProbesLost})
				none.D, none.Lost = append(none.D, durations(r.NoneLatencyUS)...), none.Lost+r.NoneProbesLost
				nft.D, nft.Lost = append(nft.D, durations(r.NftLatencyUS)...), nft.Lost+r.NftProbesLost
			}
		}
		series = append(series, nft, none)
		p, err := cdfPlot(series, time.Microsecond, "µs", false)
		if err != nil {
			return err
		}
		p.Title.Text = fmt.Sprintf("%s: first-packet latency of new flows (all reps)", s)
		panels = append(panels, legendBelow(p, len(series)))
	}
	if len(panels) == 0 {
		return fmt.Errorf("latency chart: no results")
	}
	cols := min(2, len(panels))
	return saveTiles(path, panels, cols, vg.Length(cols)*16*vg.Centimeter, 11*vg.Centimeter)
}

// RolloutPlot answers "how long until a change is enforced, under churn":
// the CDF of each series of rollout latencies (milliseconds, log scale),
// with n, p50, p99 (not given below 100 samples, where it would be the
// maximum) and the maximum in the legend. For BenchmarkRolloutUnderChurn:
// e.g. one series for policy writes, one for pod creations.
func RolloutPlot(path string, series ...Samples) error {
	p, err := cdfPlot(series, time.Millisecond, "ms", true)
	if err != nil {
		return err
	}
	p.Title.Text = "rollout latency under churn: API write → first packet enforced"
	p.X.Label.Text = "API write → enforced (ms, log scale)"
	p.Y.Label.Text = "percentile of changes"
	return saveTiles(path, []panel{legendBelow(p, len(series))}, 1, 18*vg.Centimeter, 11*vg.Centimeter)
}

// cdfPlot draws one step CDF per series over a log x axis in unit and a
// percentile y axis (tail-stretched: 50%, 90%, 99%, 99.9% equally
// spaced), each over all its attempts, lost ones included: a series with
// losses stops below the top. With stats, legend entries carry n, p50,
// p99 and max; they always carry the losses.
func cdfPlot(series []Samples, unit time.Duration, uname string, stats bool) (*plot.Plot, error) {
	p := plot.New()
	p.X.Label.Text = fmt.Sprintf("one-way latency (%s, log scale)", uname)
	p.Y.Label.Text = "percentile of probes sent"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Scale = tailScale{}
	p.Add(plotter.NewGrid())
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	xmin, xmax := math.Inf(1), math.Inf(-1)
	total := 0
	for _, s := range series {
		total = max(total, len(s.D)+s.Lost)
	}
	// The top of the y axis: the finest percentile the largest series
	// resolves, at most 99.99%.
	top := min(0.9999, 1-1/float64(max(total, 10)))
	p.Y.Min, p.Y.Max = 0, top
	var ticks []plot.Tick
	for _, t := range []struct {
		v     float64
		label string
	}{{0, "0%"}, {0.5, "50%"}, {0.9, "90%"}, {0.99, "99%"}, {0.999, "99.9%"}, {0.9999, "99.99%"}} {
		if t.v <= top {
			ticks = append(ticks, plot.Tick{Value: t.v, Label: t.label})
		}
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	n := 0
	for _, s := range series {
		if len(s.D) == 0 && s.Lost == 0 {
			continue
		}
		v := make([]float64, len(s.D))
		for i, d := range s.D {
			// A log axis has no zero; nothing is measured below 0.1 unit.
			v[i] = max(float64(d)/float64(unit), 0.1)
		}
		slices.Sort(v)
		all := len(v) + s.Lost
		pts := make(plotter.XYs, 0, len(v)+1)
		for i, x := range v {
			pts = append(pts, plotter.XY{X: x, Y: min(float64(i+1)/float64(all), top)})
		}
		if len(pts) > 0 {
			xmin, xmax = min(xmin, v[0]), max(xmax, v[len(v)-1])
		}
		col := lineColors[n%len(lineColors)]
		switch s.Label {
		case "nftables":
			col = colNft
		case "no enforcement":
			col = colNone
		}
		l := &plotter.Line{XYs: pts, StepStyle: plotter.PostStep,
			LineStyle: draw.LineStyle{Color: col, Width: vg.Points(1.8), Dashes: dashes[n%len(dashes)]}}
		if len(pts) > 0 { // all lost: a legend entry only
			p.Add(l)
		}
		label := fmt.Sprintf("%s, lost %d of %d", s.Label, s.Lost, all)
		if stats {
			label = legendText(s, v, uname)
		}
		p.Legend.Add(label, l)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("cdf: no samples")
	}
	if xmin <= xmax {
		p.X.Min, p.X.Max = math.Pow(10, math.Floor(math.Log10(xmin))), math.Pow(10, math.Ceil(math.Log10(xmax)))
	} else {
		p.X.Min, p.X.Max = 1, 10
	}
	return p, nil
}

// tailScale maps a fraction f to -log10(1-f), so that 0.9, 0.99 and
// 0.999 are equally spaced: a CDF's tail gets the room its head gets.
type tailScale struct{}

func (tailScale) Normalize(lo, hi, x float64) float64 {
	g := func(f float64) float64 { return -math.Log10(1 - min(f, 1-1e-9)) }
	return (g(x) - g(lo)) / (g(hi) - g(lo))
}

// legendText is "label: n=…, p50 …, p99 …, max …, lost k" for sorted
// values v.
func legendText(s Samples, v []float64, uname string) string {
	total := len(v) + s.Lost
	q := func(p float64) string {
		// Nearest rank over all attempts; lost ones rank last.
		i := int(math.Ceil(p/100*float64(total))) - 1
		if i >= len(v) {
			return "lost"
		}
		return fmtVal(v[max(i, 0)], uname)
	}
	out := fmt.Sprintf("%s: n=%d, p50 %s", s.Label, total, q(50))
	if total >= 100 {
		out += ", p99 " + q(99)
	}
	if len(v) > 0 {
		out += ", max " + fmtVal(v[len(v)-1], uname)
	}
	return out + fmt.Sprintf(", lost %d", s.Lost)
}

func fmtVal(v float64, uname string) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f %s", v, uname)
	}
	return fmt.Sprintf("%.3g %s", v, uname)
}

func durations(us []float64) []time.Duration {
	out := make([]time.Duration, len(us))
	for i, v := range us {
		out[i] = time.Duration(v * 1e3)
	}
	return out
}

// panel is one plot of a chart, with its legend drawn below it (when
// below is set) rather than over the data.
type panel struct {
	*plot.Plot
	below   *plot.Legend
	entries int
}

// legendBelow moves p's legend under it.
func legendBelow(p *plot.Plot, entries int) panel {
	lg := p.Legend
	lg.Top, lg.Left, lg.Padding = true, true, vg.Points(1.5)
	lg.XOffs, lg.YOffs = vg.Points(40), -vg.Points(4)
	p.Legend = plot.NewLegend()
	return panel{Plot: p, below: &lg, entries: entries}
}

// saveTiles draws the panels on a grid of cols columns, each w/cols wide
// and h high plus its legend's height, aligned, into a PNG.
func saveTiles(path string, panels []panel, cols int, w, h vg.Length) error {
	rows := (len(panels) + cols - 1) / cols
	legendH := vg.Length(0)
	for _, p := range panels {
		if p.below != nil {
			eh := p.below.TextStyle.Rectangle("Ág").Max.Y
			legendH = max(legendH, vg.Length(p.entries)*(eh+p.below.Padding)+vg.Points(10))
		}
	}
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range panels {
		grid[i/cols][i%cols] = p.Plot
	}
	img := vgimg.NewWith(vgimg.UseWH(w, (h+legendH)*vg.Length(rows)), vgimg.UseDPI(110))
	dc := draw.New(img)
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Centimeter, PadY: vg.Centimeter,
		PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10)}
	canvases := plot.Align(grid, t, dc)
	for i, p := range panels {
		c := canvases[i/cols][i%cols]
		if p.below != nil {
			strip := c
			strip.Max.Y = c.Min.Y + legendH
			c.Min.Y += legendH
			p.below.Draw(strip)
		}
		p.Draw(c)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
