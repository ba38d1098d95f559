package compile_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/naive"
	"github.com/xdpolicy/xdpolicy/control/synth"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

var scales = []struct {
	name string
	p    synth.Params
}{
	{"100pods-10policies", synth.Params{Pods: 100, Policies: 10, CIDRs: 100, Seed: 1}},
	{"10kpods-1kpolicies", synth.Params{Pods: 10000, Policies: 1000, CIDRs: 10000, Seed: 1}},
}

// BenchmarkCompile measures a full compile of a synthetic cluster and
// reports the heap it retains.
func BenchmarkCompile(b *testing.B) {
	for _, sc := range scales {
		b.Run(sc.name, func(b *testing.B) {
			c := synth.Cluster(sc.p)
			b.ReportAllocs()
			var rs *ruleset.Ruleset
			for b.Loop() {
				rs, _ = compile.Compile(c)
			}
			b.StopTimer()
			var before, after runtime.MemStats
			rs = nil
			runtime.GC()
			runtime.ReadMemStats(&before)
			rs, _ = compile.Compile(c)
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "alloc-MB")
			b.ReportMetric(float64(after.HeapSys)/(1<<20), "heap-sys-MB")
			b.ReportMetric(float64(rs.Tables()), "tables")
			runtime.GC()
			runtime.ReadMemStats(&before)
			runtime.KeepAlive(rs)
			rs = nil
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric((float64(before.HeapAlloc)-float64(after.HeapAlloc))/(1<<20), "retained-MB")
		})
	}
}

// flowCase is one verdict the benchmark repeats, with its expected answer
// so nothing is optimised away and a wrong classifier fails the benchmark.
type flowCase struct {
	name  string
	pod   ruleset.PodID
	dir   ruleset.Direction
	peer  netip.Addr
	proto ruleset.Proto
	port  uint16
	want  bool
}

// verdictCases picks an isolated pod and an admitted and a refused peer of
// each family, found with the compiled ruleset's own explanation API and
// then fixed for the benchmark loop.
func verdictCases(b *testing.B, c *model.Cluster, rs *ruleset.Ruleset) []flowCase {
	b.Helper()
	var out []flowCase
	for id := range rs.Pods {
		t := rs.Pods[id].Tables[ruleset.Ingress]
		if t == nil {
			continue
		}
		for _, v6 := range []bool{false, true} {
			fam := "v4"
			if v6 {
				fam = "v6"
			}
			var allow, deny *flowCase
			for j := range rs.Pods {
				if j == id || len(rs.Pods[j].IPs) < 2 {
					continue
				}
				peer := rs.Pods[j].IPs[0]
				if v6 {
					peer = rs.Pods[j].IPs[1]
				}
				fc := flowCase{pod: ruleset.PodID(id), dir: ruleset.Ingress, peer: peer, proto: ruleset.TCP, port: 80}
				fc.want = rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port).Allowed
				if fc.want && allow == nil {
					fc.name = fam + "-allow"
					allow = &fc
				} else if !fc.want && deny == nil {
					fc.name = fam + "-deny"
					deny = &fc
				}
				if allow != nil && deny != nil {
					break
				}
			}
			if allow == nil || deny == nil {
				b.Fatalf("pod %d: no admitted or no refused %s peer", id, fam)
			}
			out = append(out, *allow, *deny)
		}
		return out
	}
	b.Fatal("no isolated pod")
	return nil
}

// BenchmarkVerdict measures one compiled lookup (peer trie, port table,
// bitmap intersection) and asserts both its answer and zero allocations.
// Each case also runs through the reference interpreter (…/naive), the
// baseline the compiled figure is reported against.
func BenchmarkVerdict(b *testing.B) {
	for _, sc := range scales {
		c := synth.Cluster(sc.p)
		rs, problems := compile.Compile(c)
		if len(problems) > 0 {
			b.Fatal(problems)
		}
		for _, fc := range verdictCases(b, c, rs) {
			b.Run(fmt.Sprintf("%s/%s", sc.name, fc.name), func(b *testing.B) {
				if n := testing.AllocsPerRun(100, func() { rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port) }); n != 0 {
					b.Fatalf("Verdict allocates %v times", n)
				}
				b.ReportAllocs()
				for b.Loop() {
					if rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port).Allowed != fc.want {
						b.Fatal("verdict changed")
					}
				}
			})
			b.Run(fmt.Sprintf("%s/%s/naive", sc.name, fc.name), func(b *testing.B) {
				pod := c.Pods[fc.pod]
				for b.Loop() {
					if naive.Decide(c, pod, fc.dir, fc.peer, fc.proto, fc.port) != fc.want {
						b.Fatal("the reference interpreter disagrees")
					}
				}
			})
		}
	}
}
