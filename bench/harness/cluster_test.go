package harness

import (
	"testing"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/synth"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// TestCluster checks the benchmark's model: the generator's flows are
// allowed and the denied port is not, by the reference interpreter and by
// the compiled ruleset the agent enforces, at every scale of the matrix.
func TestCluster(t *testing.T) {
	for _, sc := range []struct{ pol, pods int }{{10, 100}, {1000, 100}, {100, 10000}} {
		c := Cluster(sc.pol, sc.pods, 1)
		if err := checkModel(c); err != nil {
			t.Fatalf("%+v: %v", sc, err)
		}
		rs, problems := compile.Compile(c)
		if len(problems) > 0 {
			t.Fatalf("%+v: %v", sc, problems)
		}
		sink, ok := rs.PodByIP(SinkIP)
		if !ok {
			t.Fatalf("%+v: sink not compiled", sc)
		}
		src := netip4(10, 250, 3, 4)
		if v := rs.Verdict(sink, ruleset.Ingress, src, ruleset.UDP, LoadPort); !v.Allowed {
			t.Errorf("%+v: load flow denied: %v", sc, v.Reason)
		}
		if v := rs.Verdict(sink, ruleset.Ingress, src, ruleset.UDP, DeniedPort); v.Allowed {
			t.Errorf("%+v: denied port allowed", sc)
		}
		_ = synth.Apps
	}
}
