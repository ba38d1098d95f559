package harness_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/bench/harness"
	"github.com/xdpolicy/xdpolicy/bench/pktgen"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the xdpolicy executable the harness runs the agent from.
func binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xdpolicy-bench-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "xdpolicy")
		if out, err := exec.Command("go", "build", "-o", binPath, "github.com/xdpolicy/xdpolicy/cmd/xdpolicy").CombinedOutput(); err != nil {
			buildErr = err
			tb.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binPath
}

func needRoot(tb testing.TB) {
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, BPF, AF_XDP, nftables)")
	}
	for _, c := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(c); err != nil {
			tb.Skipf("needs the %s command", c)
		}
	}
}

// TestBenchSmoke is CI's smoke of `xdpolicy bench`: one short scenario
// through the CLI, checking the JSON contract and that every dataplane
// delivered traffic (speed is reported, never asserted).
func TestBenchSmoke(t *testing.T) {
	needRoot(t)
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "--scenario", "new-flows", "--policies", "10", "--pods", "100",
		"--duration", "500ms", "--reps", "1", "-q", "-o", "json").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("xdpolicy bench: %v\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one JSON line, got %d:\n%s", len(lines), out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"scenario", "policies", "pods", "pps", "none_pps", "nftables_pps", "p50_us", "p99_us", "cpu_s_per_mpkt",
		"sink_policies", "sink_clauses", "probes_sent", "probes_lost", "none_probes_sent", "none_probes_lost", "nftables_probes_sent", "nftables_probes_lost"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON has no %q: %s", k, lines[0])
		}
	}
	for _, k := range []string{"pps", "none_pps", "nftables_pps", "p99_us", "sink_policies", "sink_clauses", "probes_sent", "none_probes_sent", "nftables_probes_sent"} {
		if v, _ := m[k].(float64); v <= 0 {
			t.Errorf("%s = %v, want > 0: %s", k, m[k], lines[0])
		}
	}
	if m["scenario"] != "new-flows" || m["policies"] != 10.0 || m["pods"] != 100.0 {
		t.Errorf("wrong echo of the flags: %s", lines[0])
	}
}

// BenchmarkDataplane runs each scenario once per iteration at the smallest
// scale and reports the figures as metrics (go test -bench Dataplane
// -benchtime=1x). It asserts only that traffic was delivered.
func BenchmarkDataplane(b *testing.B) {
	needRoot(b)
	bin := binary(b)
	for _, s := range harness.Scenarios {
		b.Run(s, func(b *testing.B) {
			for b.Loop() {
				r, err := harness.Run(context.Background(), harness.Options{Scenario: s, Policies: 10, Pods: 100,
					Duration: 500 * time.Millisecond, Reps: 1, Seed: 1, Proto: pktgen.UDP, Binary: bin, LatencyProbes: 500})
				if err != nil {
					b.Fatal(err)
				}
				if r.PPS <= 0 || r.NonePPS <= 0 || r.NftPPS <= 0 {
					b.Fatalf("nothing delivered: %+v", r)
				}
				b.ReportMetric(r.PPS, "pps")
				b.ReportMetric(r.RatioNone, "x_none")
				b.ReportMetric(r.RatioNft, "x_nftables")
				b.ReportMetric(r.P99us, "p99_us")
				b.ReportMetric(float64(r.ProbesLost), "probes_lost")
				b.ReportMetric(float64(r.NftProbesLost), "nft_probes_lost")
				b.ReportMetric(float64(r.NoneProbesLost), "none_probes_lost")
			}
		})
	}
}
