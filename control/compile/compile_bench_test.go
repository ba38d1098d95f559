package compile_test

import (
	"fmt"
	"math/rand/v2"
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

// coldCases draws n flows spread over the whole cluster, for the cold
// benchmark: an enforcement point picked at random among the pods isolated
// in a random direction; a peer address of a random pod (either family),
// inside a random ipBlock of the policies (except holes included), or
// outside both; TCP, UDP or SCTP; a port among those the policies and pods
// name (80, 53, 9000–9100, the named "http" 8080–8083) or any port; half
// of them admitted, half refused, in random order. Each case's answer
// comes from the compiled classifier, outside any timer; the first check
// of them are decided again by the reference interpreter, which must
// agree.
func coldCases(b *testing.B, c *model.Cluster, rs *ruleset.Ruleset, p synth.Params, n, check int) []flowCase {
	b.Helper()
	r := rand.New(rand.NewPCG(p.Seed, 42))
	var isolated [2][]ruleset.PodID
	for id := range rs.Pods {
		for _, dir := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
			if rs.Pods[id].Tables[dir] != nil && len(rs.Pods[id].IPs) > 0 {
				isolated[dir] = append(isolated[dir], ruleset.PodID(id))
			}
		}
	}
	if len(isolated[ruleset.Ingress]) == 0 || len(isolated[ruleset.Egress]) == 0 {
		b.Fatal("no isolated pod in one direction")
	}
	peer := func() netip.Addr {
		switch k := r.IntN(10); {
		case k < 5: // a pod
			ips := rs.Pods[r.IntN(len(rs.Pods))].IPs
			return ips[r.IntN(len(ips))]
		case k < 8: // an ipBlock, a quarter of them in its hole
			blk, err := model.ParseCIDR(synth.ExternalBlock(r.IntN(max(1, p.CIDRs))).CIDR)
			if err != nil {
				b.Fatal(err)
			}
			a := blk.Addr().AsSlice()
			for i := blk.Bits() / 8; i < len(a); i++ {
				a[i] = byte(r.Uint32())
			}
			if r.IntN(4) == 0 { // the hole: the first /28 or /64 of the block
				if len(a) == 4 {
					a[3] &= 0x0f
				} else {
					a[6], a[7] = 0, 0
				}
			}
			addr, _ := netip.AddrFromSlice(a)
			return addr
		case k < 9: // nowhere in particular
			return netip.AddrFrom4([4]byte{byte(r.IntN(224)), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		default:
			var a [16]byte
			for i := range a {
				a[i] = byte(r.Uint32())
			}
			return netip.AddrFrom16(a)
		}
	}
	ports := []uint16{80, 53, 8080, 8081, 8082, 8083}
	// Random flows are mostly refused; keep drawing until half the cases
	// are admitted and half refused, then shuffle them.
	out := make([]flowCase, 0, n)
	var kept [2]int
	for draws := 0; len(out) < n; draws++ {
		if draws > 1000*n {
			b.Fatalf("%d admitted and %d refused flows in %d draws", kept[1], kept[0], draws)
		}
		var fc flowCase
		fc.dir = ruleset.Direction(r.IntN(2))
		fc.pod = isolated[fc.dir][r.IntN(len(isolated[fc.dir]))]
		fc.peer = peer()
		fc.proto = []ruleset.Proto{ruleset.TCP, ruleset.TCP, ruleset.TCP, ruleset.UDP, ruleset.UDP, ruleset.SCTP}[r.IntN(6)]
		switch k := r.IntN(10); {
		case k < 6:
			fc.port = ports[r.IntN(len(ports))]
		case k < 8:
			fc.port = uint16(9000 + r.IntN(101))
		default:
			fc.port = uint16(r.Uint32())
		}
		fc.want = rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port).Allowed
		k := 0
		if fc.want {
			k = 1
		}
		if kept[k] < n/2 || (kept[k] < n-n/2 && kept[1-k] == n/2) {
			kept[k]++
			out = append(out, fc)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	for _, fc := range out[:min(check, n)] {
		if got := naive.Decide(c, c.Pods[fc.pod], fc.dir, fc.peer, fc.proto, fc.port); got != fc.want {
			b.Fatalf("pod %s/%s %s %s %s/%d: compiled %v, reference %v", c.Pods[fc.pod].Namespace, c.Pods[fc.pod].Name,
				fc.dir, fc.peer, fc.proto, fc.port, fc.want, got)
		}
	}
	return out
}

// BenchmarkVerdict measures compiled lookups (peer trie, port table,
// bitmap intersection) and asserts their answers and zero allocations.
//
// The hot cases repeat one (pod, peer, port) tuple, admitted or refused, of
// each family: everything the lookup touches stays in the CPU's caches.
// Each also runs through the reference interpreter (…/naive), the
// baseline the compiled figure is reported against. The cold case cycles
// through 32k tuples spread over the whole cluster, half admitted
// (coldCases): every lookup reads another pod's table, trie path and
// bitmaps, as the slow path's workers do under new-flow load.
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
		cold := coldCases(b, c, rs, sc.p, 1<<15, 1000)
		b.Run(sc.name+"/cold", func(b *testing.B) {
			if n := testing.AllocsPerRun(1, func() {
				for _, fc := range cold {
					rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port)
				}
			}); n != 0 {
				b.Fatalf("Verdict allocates %v times per %d lookups", n, len(cold))
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				fc := &cold[i]
				if rs.Verdict(fc.pod, fc.dir, fc.peer, fc.proto, fc.port).Allowed != fc.want {
					b.Fatalf("case %d: verdict changed", i)
				}
				if i++; i == len(cold) {
					i = 0
				}
			}
		})
	}
}
