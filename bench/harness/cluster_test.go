package harness

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// TestCluster checks the benchmark's model: the generator's flows are
// allowed and the denied port is not, by the reference interpreter and by
// the compiled ruleset the agent enforces; every one of those flows is
// decided by the rules of the policies selecting the sink (the allowed
// ones by a generator rule of one of them, the denied ones after finding
// clauses for their address and clauses for their port, none with both);
// and the number of those policies, and of clauses in the sink's ingress
// table, grows with the policies axis.
func TestCluster(t *testing.T) {
	prev := map[int][2]int{} // pods → (policies selecting the sink, clauses) at the previous policy count
	for _, sc := range []struct{ pol, pods int }{{10, 100}, {100, 100}, {10, 10000}, {100, 10000}, {1000, 10000}} {
		name := fmt.Sprintf("%dpolicies-%dpods", sc.pol, sc.pods)
		c := Cluster(sc.pol, sc.pods, 1)
		if err := checkModel(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rs, problems := compile.Compile(c)
		if len(problems) > 0 {
			t.Fatalf("%s: %v", name, problems)
		}
		sink, ok := rs.PodByIP(SinkIP)
		if !ok {
			t.Fatalf("%s: sink not compiled", name)
		}
		tbl := rs.Pods[sink].Tables[ruleset.Ingress]
		if tbl == nil {
			t.Fatalf("%s: sink not isolated", name)
		}
		hot := HotPolicies(sc.pol)
		// The hot policies have three rules; a spread policy may select
		// app-0 in ns-0 too (at 100 pods, ns-0 is the only namespace).
		if len(tbl.Policies) < hot || len(tbl.Clauses) != 3*hot+len(tbl.Policies)-hot {
			t.Errorf("%s: %d policies select the sink with %d clauses, want %d with three rules each (and maybe more with one)", name, len(tbl.Policies), len(tbl.Clauses), hot)
		}
		idents, prefixes := tbl.Entries()
		t.Logf("%s: %d policies select the sink; its ingress table: %d clauses (%d bitmap words), %d identities, %d prefixes",
			name, len(tbl.Policies), len(tbl.Clauses), (len(tbl.Clauses)+63)/64, idents, prefixes)
		if p, ok := prev[sc.pods]; ok && (len(tbl.Policies) <= p[0] || len(tbl.Clauses) <= p[1]) {
			t.Errorf("%s: %d policies and %d clauses, not more than at the previous policy count (%d, %d)", name, len(tbl.Policies), len(tbl.Clauses), p[0], p[1])
		}
		prev[sc.pods] = [2]int{len(tbl.Policies), len(tbl.Clauses)}

		// Every source of the model's probes and a spread over the
		// generator's prefix.
		srcs := modelProbes()
		for x := uint32(0); x < 1<<16; x += 251 {
			srcs = append(srcs, netip4(10, 250, byte(x>>8), byte(x)))
		}
		owners := map[int32]bool{}
		for _, src := range srcs {
			for _, f := range []struct {
				proto ruleset.Proto
				port  uint16
			}{{ruleset.UDP, LoadPort}, {ruleset.TCP, LoadPort}, {ruleset.UDP, ProbePort}} {
				v := rs.Verdict(sink, ruleset.Ingress, src, f.proto, f.port)
				if !v.Allowed || v.Reason != ruleset.RuleMatched {
					t.Fatalf("%s: %s → %d/%s: %v, want allowed by a rule", name, src, f.port, f.proto, v.Reason)
				}
				cl := v.Table.Clauses[v.Clause]
				if p := rs.Policies[cl.Policy]; cl.Rule != 1 || !isHot(p, hot) {
					t.Fatalf("%s: %s → %d/%s admitted by %s rule %d, want a generator rule (1) of a policy selecting the sink", name, src, f.port, f.proto, p, cl.Rule)
				}
				owners[cl.Policy] = true
			}
			v := rs.Verdict(sink, ruleset.Ingress, src, ruleset.UDP, DeniedPort)
			if v.Allowed || v.Reason != ruleset.NoRuleMatched {
				t.Fatalf("%s: %s → %d/UDP: %v, want denied by no rule matching", name, src, DeniedPort, v.Reason)
			}
			if len(tbl.PeerClauses(ruleset.NoIdentity, src).Indices()) == 0 {
				t.Fatalf("%s: no clause admits %s at all: the denied probe is not decided by the rules", name, src)
			}
		}
		if n := len(tbl.PortClauses(ruleset.UDP, DeniedPort).Indices()); n != hot {
			t.Errorf("%s: %d clauses admit the denied port, want %d (one per policy selecting the sink)", name, n, hot)
		}
		// The generator's addresses are spread over all the policies.
		if want := min(hot, len(srcs)); len(owners) < want*9/10 {
			t.Errorf("%s: the generator's flows are admitted by %d policies, want about %d", name, len(owners), want)
		}
	}
}

func isHot(p ruleset.Policy, hot int) bool {
	i, err := strconv.Atoi(strings.TrimPrefix(p.Name, "policy-"))
	return p.Namespace == "ns-0" && err == nil && i < hot
}

// BenchmarkSinkVerdict measures what the policies axis changes: the
// compiled verdict for the generator's flows at the sink (sources spread
// over the generator's prefix, the allowed load and probe ports, and the
// denied port), at 10k pods and each policy count of the matrix. It
// reports the sink's clauses beside ns/op and checks every answer.
func BenchmarkSinkVerdict(b *testing.B) {
	for _, pol := range []int{10, 100, 1000} {
		c := Cluster(pol, 10000, 1)
		rs, problems := compile.Compile(c)
		if len(problems) > 0 {
			b.Fatal(problems)
		}
		sink, ok := rs.PodByIP(SinkIP)
		if !ok {
			b.Fatal("sink not compiled")
		}
		clauses := len(rs.Pods[sink].Tables[ruleset.Ingress].Clauses)
		type flow struct {
			src   netip.Addr
			proto ruleset.Proto
			port  uint16
		}
		r := rand.New(rand.NewPCG(1, 2))
		var allowed, denied []flow
		for range 4096 {
			src := netip4(10, 250, byte(r.Uint32()), byte(r.Uint32()))
			allowed = append(allowed, []flow{{src, ruleset.UDP, LoadPort}, {src, ruleset.TCP, LoadPort}, {src, ruleset.UDP, ProbePort}}[r.IntN(3)])
			denied = append(denied, flow{src, ruleset.UDP, DeniedPort})
		}
		for _, tc := range []struct {
			name  string
			flows []flow
			want  bool
		}{{"allowed", allowed, true}, {"denied", denied, false}} {
			b.Run(fmt.Sprintf("%dpolicies/%s", pol, tc.name), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					f := &tc.flows[i%len(tc.flows)]
					if rs.Verdict(sink, ruleset.Ingress, f.src, f.proto, f.port).Allowed != tc.want {
						b.Fatalf("%s → sink %d/%s: allowed != %v", f.src, f.port, f.proto, tc.want)
					}
					i++
				}
				b.ReportMetric(float64(clauses), "clauses")
			})
		}
	}
}
