package harness

import (
	"flag"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var plotDir = flag.String("plots", "", "also write TestReport's charts into this directory (to look at them)")

// fakeResults is a bench matrix with made-up but plausible figures:
// spread between reps, long-tailed latencies and a few lost probes.
func fakeResults() []*Result {
	r := rand.New(rand.NewPCG(1, 2))
	lat := func(n int, med, tail float64) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = med * (0.6 + 0.8*r.Float64())
			if r.IntN(50) == 0 {
				out[i] = tail * r.Float64()
			}
		}
		return out
	}
	var rs []*Result
	for _, pods := range []int{100, 10000} {
		for _, pol := range []int{10, 100, 1000} {
			for i, scen := range Scenarios {
				base := []float64{150e3, 320e3, 170e3}[i] * (1 - float64(pol)/5000)
				res := &Result{Scenario: scen, Policies: pol, Pods: pods, Reps: 3,
					PPS: base, PPSMin: base * 0.9, PPSMax: base * 1.05,
					NonePPS: 350e3, NoneMin: 330e3, NoneMax: 370e3,
					NftPPS: 200e3 * (1 - float64(pol)/2000), NftMin: 180e3 * (1 - float64(pol)/2000), NftMax: 210e3 * (1 - float64(pol)/2000),
					ProbesSent: 6000, NoneProbesSent: 6000, NftProbesSent: 6000, ProbesLost: pol / 100, NftProbesLost: 1,
					LatencyUS: lat(6000-pol/100, 60, 4000), NftLatencyUS: lat(5999, 12, 100), NoneLatencyUS: lat(6000, 6, 50)}
				res.P50us, res.P99us = pct(durations(res.LatencyUS), 50), pct(durations(res.LatencyUS), 99)
				rs = append(rs, res)
			}
		}
	}
	return rs
}

// TestReport writes the results and charts of a made-up matrix and checks
// that the table reports lost probes for every dataplane and that the
// charts are PNGs of a readable size.
func TestReport(t *testing.T) {
	dir := t.TempDir()
	if *plotDir != "" {
		dir = *plotDir
	}
	rs := fakeResults()
	if err := WriteResults(dir, "xdpolicy bench (made up)", rs); err != nil {
		t.Fatal(err)
	}
	var roll, pods []time.Duration
	for i := range 600 {
		roll = append(roll, time.Duration(5+i%40)*time.Millisecond+time.Duration(i)*time.Microsecond)
		pods = append(pods, time.Duration(20+i%70)*time.Millisecond)
	}
	if err := RolloutPlot(filepath.Join(dir, "rollout_cdf.png"), Samples{Label: "policy write", D: roll, Lost: 2}, Samples{Label: "pod created", D: pods}); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "60 / ") || !strings.Contains(string(md), ", 10 of 6000") || !strings.Contains(string(md), ", 1 of 6000 | ") {
		t.Errorf("results.md does not report lost probes per dataplane:\n%s", md)
	}
	for _, name := range []string{PPSPlot, LatencyPlot, "rollout_cdf.png"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cfg.Width < 600 || cfg.Height < 400 {
			t.Errorf("%s: %dx%d, too small to read", name, cfg.Width, cfg.Height)
		}
	}
}
