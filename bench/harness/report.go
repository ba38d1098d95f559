package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// TableHeader is the Markdown header of TableRow.
func TableHeader() string {
	return "| scenario | policies | pods | xdpolicy pps (min–max) | none pps | nftables pps | × none | × nftables | × nftables per core | p50 / p99 µs (nftables) | agent CPU s/Mpkt | machine CPU s/Mpkt (none, nftables) | Mpps per agent core | 2× overload |\n" +
		"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
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
	return fmt.Sprintf("| %s | %d | %d | %s (%s–%s) | %s | %s | %.2f | %.2f | %.2f | %.0f / %.0f (%.0f / %.0f) | %.2f | %.2f (%.2f, %.2f) | %.2f | %.2f of peak (%s offered) |",
		r.Scenario, r.Policies, r.Pods, k(r.PPS), k(r.PPSMin), k(r.PPSMax), k(r.NonePPS), k(r.NftPPS),
		r.RatioNone, r.RatioNft, r.RatioNftPerCore, r.P50us, r.P99us, r.NftP50us, r.NftP99us,
		r.CPUsPerMpkt, r.MachineCPUsPerMpkt, r.NoneMachineCPU, r.NftMachineCPU, r.MppsPerAgentCore,
		r.OverloadRatio, k(r.OverloadOffered))
}

// WriteResults writes results.json (one object per line), results.md and
// the plots into dir.
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
	md.WriteString("\n![pps against policy count](pps_vs_policies.png)\n\n![first-packet latency](latency.png)\n")
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := savePNG(filepath.Join(dir, "pps_vs_policies.png"), ppsPlot(rs)); err != nil {
		return err
	}
	return savePNG(filepath.Join(dir, "latency.png"), latencyPlot(rs))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func savePNG(path string, img image.Image) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// A tiny line-plot canvas: axes, ticks, labelled series, legend.
type canvas struct {
	img                    *image.RGBA
	x0, y0, x1, y1         int // plot area in pixels
	xmin, xmax, ymin, ymax float64
	logX                   bool
}

var palette = []color.RGBA{{0x1f, 0x77, 0xb4, 255}, {0xd6, 0x27, 0x28, 255}, {0x2c, 0xa0, 0x2c, 255},
	{0xff, 0x7f, 0x0e, 255}, {0x94, 0x67, 0xbd, 255}, {0x8c, 0x56, 0x4b, 255}, {0x17, 0xbe, 0xcf, 255},
	{0x7f, 0x7f, 0x7f, 255}, {0xbc, 0xbd, 0x22, 255}}

func newCanvas(w, h int, title, xlabel, ylabel string) *canvas {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	c := &canvas{img: img, x0: 80, y0: h - 50, x1: w - 260, y1: 40}
	c.text(w/2-len(title)*7/2, 20, title, color.Black)
	c.text((c.x0+c.x1)/2-len(xlabel)*7/2, h-12, xlabel, color.Black)
	c.text(8, c.y1-12, ylabel, color.Black)
	return c
}

func (c *canvas) text(x, y int, s string, col color.Color) {
	d := &font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func (c *canvas) px(x, y float64) (int, int) {
	fx := (x - c.xmin) / (c.xmax - c.xmin)
	if c.logX {
		fx = (math.Log10(x) - math.Log10(c.xmin)) / (math.Log10(c.xmax) - math.Log10(c.xmin))
	}
	fy := (y - c.ymin) / (c.ymax - c.ymin)
	return c.x0 + int(fx*float64(c.x1-c.x0)), c.y0 - int(fy*float64(c.y0-c.y1))
}

func (c *canvas) line(xa, ya, xb, yb int, col color.Color) {
	dx, dy := xb-xa, yb-ya
	n := max(abs(dx), abs(dy), 1)
	for i := 0; i <= n; i++ {
		x, y := xa+dx*i/n, ya+dy*i/n
		c.img.Set(x, y, col)
		c.img.Set(x, y+1, col)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func (c *canvas) axes(xticks []float64, xfmt func(float64) string, yfmt func(float64) string) {
	grey := color.RGBA{0xcc, 0xcc, 0xcc, 255}
	for i := 0; i <= 5; i++ {
		v := c.ymin + (c.ymax-c.ymin)*float64(i)/5
		_, y := c.px(c.xmin, v)
		c.line(c.x0, y, c.x1, y, grey)
		s := yfmt(v)
		c.text(c.x0-8-len(s)*7, y+4, s, color.Black)
	}
	for _, v := range xticks {
		x, _ := c.px(v, c.ymin)
		c.line(x, c.y0, x, c.y0+5, color.Black)
		s := xfmt(v)
		c.text(x-len(s)*7/2, c.y0+20, s, color.Black)
	}
	c.line(c.x0, c.y0, c.x1, c.y0, color.Black)
	c.line(c.x0, c.y0, c.x0, c.y1, color.Black)
}

func (c *canvas) legend(i int, label string, col color.Color) {
	y := c.y1 + 10 + i*18
	c.line(c.x1+20, y, c.x1+45, y, col)
	c.text(c.x1+52, y+4, label, color.Black)
}

// ppsPlot: delivered pps against policy count, one line per (scenario,
// pods, dataplane).
func ppsPlot(rs []*Result) image.Image {
	c := newCanvas(1000, 520, "delivered packets/s against policy count (median of reps)", "policies", "pps")
	type key struct {
		scen string
		pods int
		dp   string
	}
	series := map[key][][2]float64{}
	var pols []float64
	ymax := 1.0
	for _, r := range rs {
		for dp, v := range map[string]float64{"xdpolicy": r.PPS, "none": r.NonePPS, "nftables": r.NftPPS} {
			k := key{r.Scenario, r.Pods, dp}
			series[k] = append(series[k], [2]float64{float64(r.Policies), v})
			ymax = max(ymax, v)
		}
		pols = append(pols, float64(r.Policies))
	}
	slices.Sort(pols)
	pols = slices.Compact(pols)
	c.xmin, c.xmax, c.ymin, c.ymax = pols[0], pols[len(pols)-1], 0, ymax*1.1
	if c.xmin == c.xmax {
		c.xmin, c.xmax = c.xmin/2, c.xmax*2
	}
	c.logX = true
	c.axes(pols, func(v float64) string { return fmt.Sprintf("%.0f", v) }, func(v float64) string { return fmt.Sprintf("%.2fM", v/1e6) })
	keys := make([]key, 0, len(series))
	for k := range series {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.scen != b.scen {
			return a.scen < b.scen
		}
		if a.dp != b.dp {
			return a.dp > b.dp
		}
		return a.pods < b.pods
	})
	for i, k := range keys {
		pts := series[k]
		sort.Slice(pts, func(a, b int) bool { return pts[a][0] < pts[b][0] })
		col := palette[i%len(palette)]
		for j, p := range pts {
			x, y := c.px(p[0], p[1])
			for dx := -3; dx <= 3; dx++ {
				for dy := -3; dy <= 3; dy++ {
					c.img.Set(x+dx, y+dy, col)
				}
			}
			if j > 0 {
				xa, ya := c.px(pts[j-1][0], pts[j-1][1])
				c.line(xa, ya, x, y, col)
			}
		}
		c.legend(i, fmt.Sprintf("%s %s %dp", k.scen, k.dp, k.pods), col)
	}
	return c.img
}

// latencyPlot: CDF of first-packet latency per run (xdpolicy), plus the
// nftables baseline of the first run.
func latencyPlot(rs []*Result) image.Image {
	c := newCanvas(1000, 520, "first-packet latency of new flows (CDF, last repetition)", "microseconds", "fraction")
	xmax := 1.0
	for _, r := range rs {
		for _, l := range [][]float64{r.LatencyUS, r.NftLatencyUS} {
			if len(l) > 0 {
				s := slices.Clone(l)
				slices.Sort(s)
				xmax = max(xmax, s[int(0.995*float64(len(s)-1))])
			}
		}
	}
	c.xmin, c.xmax, c.ymin, c.ymax = 0, xmax*1.05, 0, 1
	var xt []float64
	for i := 0; i <= 5; i++ {
		xt = append(xt, c.xmax*float64(i)/5)
	}
	c.axes(xt, func(v float64) string { return fmt.Sprintf("%.0f", v) }, func(v float64) string { return fmt.Sprintf("%.1f", v) })
	n := 0
	plot := func(l []float64, label string) {
		if len(l) == 0 || n >= 16 {
			return
		}
		s := slices.Clone(l)
		slices.Sort(s)
		col := palette[n%len(palette)]
		px, py := -1, -1
		for i, v := range s {
			if v > c.xmax {
				break
			}
			x, y := c.px(v, float64(i+1)/float64(len(s)))
			if px >= 0 {
				c.line(px, py, x, y, col)
			}
			px, py = x, y
		}
		c.legend(n, label, col)
		n++
	}
	for i, r := range rs {
		plot(r.LatencyUS, fmt.Sprintf("%s %dpol %dp", r.Scenario, r.Policies, r.Pods))
		if i == 0 {
			plot(r.NftLatencyUS, fmt.Sprintf("nftables %dpol %dp", r.Policies, r.Pods))
		}
	}
	return c.img
}
