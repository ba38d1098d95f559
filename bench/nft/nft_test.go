package nft

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/xdpolicy/xdpolicy/control/synth"
)

// TestRenderLoads checks that nft accepts the rendered ruleset (nft -c:
// parsed and validated by the kernel, nothing committed).
func TestRenderLoads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (nft -c talks to the kernel)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft command (nftables)")
	}
	for _, p := range []synth.Params{{Pods: 100, Policies: 10, CIDRs: 10, Seed: 1}, {Pods: 1000, Policies: 100, CIDRs: 100, Seed: 2}} {
		script, st, err := Render(synth.Cluster(p))
		if err != nil {
			t.Fatal(err)
		}
		if st.MapEntries == 0 || st.Sets == 0 {
			t.Fatalf("%+v: nothing rendered: %+v", p, st)
		}
		cmd := exec.Command("nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%+v: nft -c: %v: %s", p, err, out)
		}
	}
}
