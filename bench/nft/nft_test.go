package nft

import (
	"fmt"
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

// TestRenderNode: a node's ruleset sends only that node's pods to their
// chains (the verdict maps), and no more than the whole cluster's does.
func TestRenderNode(t *testing.T) {
	c := synth.Cluster(synth.Params{Pods: 200, Policies: 20, CIDRs: 20, Seed: 3})
	_, all, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for k := range 50 {
		node := fmt.Sprintf("node-%d", k)
		script, st, err := RenderNode(c, node)
		if err != nil {
			t.Fatal(err)
		}
		sum += st.MapEntries
		for _, p := range c.Pods {
			if ip := p.Status.PodIP; p.Spec.NodeName != node && strings.Contains(script, "\t\t\t"+ip+" : jump") {
				t.Errorf("%s: pod %s/%s of %s is in the verdict maps", node, p.Namespace, p.Name, p.Spec.NodeName)
			}
		}
	}
	if sum != all.MapEntries {
		t.Errorf("per-node map entries sum to %d, the cluster's ruleset has %d", sum, all.MapEntries)
	}
}
