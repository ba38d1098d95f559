package compile_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/synth"
)

// churnBench is the synthetic cluster's objects as changes leave them,
// and the generators of the changes BenchmarkPodChurn times.
type churnBench struct {
	r    *rand.Rand
	pods []*corev1.Pod
	nss  []*corev1.Namespace // the synthetic namespaces (with pods)
	pols []*networkingv1.NetworkPolicy
	// Objects the benchmark added, which the deletes take first.
	newNS   []*corev1.Namespace
	newSvcs []*corev1.Service
	newPols []*networkingv1.NetworkPolicy
	next    int
}

// churnOp is one kind of change: the change timed, and changes applied
// afterwards, untimed, so that the next one has something to change (a
// deleted namespace comes back, say).
type churnOp func(s *churnBench) (timed, after []compile.Change)

func (s *churnBench) pod() (int, *corev1.Pod) {
	i := s.r.IntN(len(s.pods))
	return i, s.pods[i].DeepCopy()
}

// newPod is a pod like synth's: labels and ports of app app in namespace
// ns (so an existing identity), new addresses.
func (s *churnBench) newPod(ns, app int) *corev1.Pod {
	s.next++
	p := &corev1.Pod{}
	p.Namespace, p.Name = fmt.Sprintf("ns-%d", ns), fmt.Sprintf("churn-%d", s.next)
	p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[app%3]}
	p.Spec.NodeName = fmt.Sprintf("node-%d", s.next%50)
	p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
		{Name: "http", ContainerPort: int32(8080 + app%4), Protocol: corev1.ProtocolTCP},
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
	}}}
	p.Status.Phase = corev1.PodRunning
	s.newAddrs(p)
	model.DefaultPod(p)
	return p
}

func (s *churnBench) newAddrs(p *corev1.Pod) {
	s.next++
	v4, v6 := synth.PodAddrs(100000 + s.next)
	p.Status.PodIP = v4.String()
	p.Status.PodIPs = []corev1.PodIP{{IP: v4.String()}, {IP: v6.String()}}
}

func appOf(p *corev1.Pod) int {
	var app int
	fmt.Sscanf(p.Labels["app"], "app-%d", &app)
	return app
}

func podAdd(s *churnBench) (timed, after []compile.Change) {
	ns := s.r.IntN(len(s.nss))
	p := s.newPod(ns, s.r.IntN(synth.Apps))
	s.pods = append(s.pods, p)
	return []compile.Change{{Pod: p}}, nil
}

func podDelete(s *churnBench) (timed, after []compile.Change) {
	i, p := s.pod()
	s.pods[i] = s.pods[len(s.pods)-1]
	s.pods = s.pods[:len(s.pods)-1]
	return []compile.Change{{Pod: p, Delete: true}}, nil
}

func podIP(s *churnBench) (timed, after []compile.Change) {
	i, p := s.pod()
	s.newAddrs(p)
	s.pods[i] = p
	return []compile.Change{{Pod: p}}, nil
}

func podPhase(s *churnBench) (timed, after []compile.Change) {
	i, p := s.pod()
	if p.Status.Phase == corev1.PodRunning {
		p.Status.Phase = corev1.PodSucceeded
	} else {
		p.Status.Phase = corev1.PodRunning
	}
	s.pods[i] = p
	return []compile.Change{{Pod: p}}, nil
}

// podRelabel moves a pod to another app with the same ports: an identity
// that exists.
func podRelabel(s *churnBench) (timed, after []compile.Change) {
	i, p := s.pod()
	app := (appOf(p) + 4*(1+s.r.IntN(synth.Apps/4-1))) % synth.Apps
	p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[app%3]}
	s.pods[i] = p
	return []compile.Change{{Pod: p}}, nil
}

// podRelabelNew gives a pod a label no pod has (a new ReplicaSet's
// pod-template-hash): a new identity.
func podRelabelNew(s *churnBench) (timed, after []compile.Change) {
	i, p := s.pod()
	s.next++
	app := appOf(p)
	p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[app%3], "pod-template-hash": fmt.Sprint(s.next)}
	s.pods[i] = p
	return []compile.Change{{Pod: p}}, nil
}

func churnNSLabels(i int) map[string]string {
	return map[string]string{"team": fmt.Sprintf("team-%d", i%10), "env": []string{"prod", "staging", "dev"}[i%3]}
}

// nsAdd adds an empty namespace (its pods come later, as pod-adds).
func nsAdd(s *churnBench) (timed, after []compile.Change) {
	s.next++
	o := &corev1.Namespace{}
	o.Name, o.Labels = fmt.Sprintf("churn-ns-%d", s.next), churnNSLabels(s.next)
	model.DefaultNamespace(o)
	s.newNS = append(s.newNS, o)
	return []compile.Change{{Namespace: o}}, nil
}

// nsDelete deletes one of the synthetic namespaces while its 100 pods are
// still there (they keep only the kubernetes.io/metadata.name label, which
// moves them out of every namespaceSelector that picked them); the
// namespace comes back afterwards, untimed.
func nsDelete(s *churnBench) (timed, after []compile.Change) {
	o := s.nss[s.r.IntN(len(s.nss))]
	return []compile.Change{{Namespace: o, Delete: true}}, []compile.Change{{Namespace: o}}
}

// nsDeleteEmpty deletes a namespace the benchmark added, if any.
func nsDeleteEmpty(s *churnBench) (timed, after []compile.Change) {
	if len(s.newNS) == 0 {
		return nsAdd(s)
	}
	o := s.newNS[len(s.newNS)-1]
	s.newNS = s.newNS[:len(s.newNS)-1]
	return []compile.Change{{Namespace: o, Delete: true}}, nil
}

// nsRelabel gives a synthetic namespace another team and environment.
func nsRelabel(s *churnBench) (timed, after []compile.Change) {
	i := s.r.IntN(len(s.nss))
	o := s.nss[i].DeepCopy()
	o.Labels = churnNSLabels(s.r.IntN(30))
	model.DefaultNamespace(o)
	s.nss[i] = o
	return []compile.Change{{Namespace: o}}, nil
}

func svcAdd(s *churnBench) (timed, after []compile.Change) {
	s.next++
	o := &corev1.Service{}
	o.Namespace, o.Name = fmt.Sprintf("ns-%d", s.next%len(s.nss)), fmt.Sprintf("churn-svc-%d", s.next)
	n := s.next
	o.Spec.ClusterIPs = []string{
		netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)}).String(),
		netip.AddrFrom16([16]byte{0xfd, 0x96, 13: byte(n >> 16), 14: byte(n >> 8), 15: byte(n)}).String(),
	}
	model.DefaultService(o)
	s.newSvcs = append(s.newSvcs, o)
	return []compile.Change{{Service: o}}, nil
}

// svcDelete deletes a Service added before, untimed, if there is none.
func svcDelete(s *churnBench) (timed, after []compile.Change) {
	var before []compile.Change
	if len(s.newSvcs) == 0 {
		before, _ = svcAdd(s)
	}
	o := s.newSvcs[len(s.newSvcs)-1]
	s.newSvcs = s.newSvcs[:len(s.newSvcs)-1]
	return append(before, compile.Change{Service: o, Delete: true}), nil
}

// policyAdd adds a copy of a synthetic policy under a new name.
func policyAdd(s *churnBench) (timed, after []compile.Change) {
	s.next++
	o := s.pols[s.r.IntN(len(s.pols))].DeepCopy()
	o.Name = fmt.Sprintf("churn-pol-%d", s.next)
	s.newPols = append(s.newPols, o)
	return []compile.Change{{Policy: o}}, nil
}

// policyDelete deletes a synthetic policy, which comes back afterwards,
// untimed.
func policyDelete(s *churnBench) (timed, after []compile.Change) {
	o := s.pols[s.r.IntN(len(s.pols))]
	return []compile.Change{{Policy: o, Delete: true}}, []compile.Change{{Policy: o}}
}

// policyDeleteNew deletes a policy the benchmark added, if any.
func policyDeleteNew(s *churnBench) (timed, after []compile.Change) {
	if len(s.newPols) == 0 {
		return policyAdd(s)
	}
	o := s.newPols[len(s.newPols)-1]
	s.newPols = s.newPols[:len(s.newPols)-1]
	return []compile.Change{{Policy: o, Delete: true}}, nil
}

// policyUpdate flips a policy between deny-all and its own rules.
func policyUpdate(s *churnBench) (timed, after []compile.Change) {
	i := s.r.IntN(len(s.pols))
	o := s.pols[i].DeepCopy()
	o.Spec.Ingress, o.Spec.Egress = nil, nil
	return []compile.Change{{Policy: o}}, []compile.Change{{Policy: s.pols[i]}}
}

var churnOps = []struct {
	name string
	op   churnOp
}{
	{"pod-add", podAdd},
	{"pod-delete", podDelete},
	{"pod-ip", podIP},
	{"pod-phase", podPhase},
	{"pod-relabel", podRelabel},
	{"pod-relabel-new-identity", podRelabelNew},
	{"ns-add", nsAdd},
	{"ns-delete", nsDelete},
	{"ns-delete-empty", nsDeleteEmpty},
	{"ns-relabel", nsRelabel},
	{"svc-add", svcAdd},
	{"svc-delete", svcDelete},
	{"policy-add", policyAdd},
	{"policy-delete", policyDelete},
	{"policy-update", policyUpdate},
}

// mixedOps are the changes of mixed-100k, drawn uniformly: adds and
// deletes balance, so the cluster keeps its size.
var mixedOps = []churnOp{
	podAdd, podDelete, podIP, podPhase, podRelabel, podRelabelNew,
	nsAdd, nsDeleteEmpty, nsRelabel, svcAdd, svcDelete, policyAdd, policyDeleteNew, policyUpdate,
}

func newChurnBench(b *testing.B, base *model.Cluster) (*churnBench, *compile.Compiler) {
	b.Helper()
	cl := *base
	cl.Namespaces, cl.Pods = slices.Clone(base.Namespaces), slices.Clone(base.Pods)
	cl.Policies, cl.Services = slices.Clone(base.Policies), slices.Clone(base.Services)
	c := &compile.Compiler{}
	if _, problems := c.Compile(&cl); len(problems) > 0 {
		b.Fatal(problems)
	}
	s := &churnBench{r: rand.New(rand.NewPCG(1, 2)), pods: slices.Clone(base.Pods), nss: slices.Clone(base.Namespaces), pols: slices.Clone(base.Policies)}
	return s, c
}

// run applies n changes of op, timing each timed one; a timed change
// comes pace after the compiler has finished with the one before.
func (s *churnBench) run(b *testing.B, c *compile.Compiler, op churnOp, n int, pace time.Duration, times []time.Duration) []time.Duration {
	var last time.Time
	for range n {
		timed, after := op(s)
		if d := pace - time.Since(last); d > 0 {
			time.Sleep(d)
		}
		start := time.Now()
		rs, _, err := c.Apply(timed...)
		times = append(times, time.Since(start))
		if err != nil || rs == nil {
			b.Fatal(err)
		}
		if len(after) > 0 {
			if _, _, err := c.Apply(after...); err != nil {
				b.Fatal(err)
			}
		}
		last = time.Now()
	}
	return times
}

func reportLatency(b *testing.B, times []time.Duration) {
	slices.Sort(times)
	q := func(f float64) float64 {
		return float64(times[min(len(times)-1, int(f*float64(len(times))))]) / 1e6
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(times[len(times)-1])/1e6, "max-ms")
	b.ReportMetric(float64(len(times)), "changes")
}

// BenchmarkPodChurn times single-object changes applied incrementally to
// the 10k pods / 1k policies / 10k CIDRs cluster (the agent's path for
// every snapshot with up to 64 changed objects), one sub-benchmark per
// kind of change, each timing 200 changes per iteration one by one (p50,
// p99 and max in milliseconds; ns/op is per 200). Compare BenchmarkCompile,
// which every such change took before.
//
// Each kind runs twice on one compiler: back-to-back, and paced-10ms, with
// 10 ms between the end of a change and the next, which is the agent's
// cadence (its source delivers at most one snapshot per 10 ms). The
// difference is the copy of the 10k-entry pod list that every new snapshot
// needs: the compiler makes it in the background after each change, which
// takes ~0.2 ms, but milliseconds while a GC cycle runs (the write barrier
// sees every copied pointer); back to back, the next change waits for it.
//
// mixed-100k applies 100k changes of every kind drawn at random, back to
// back (about 75 s on 2 cores, most of it garbage collection; 10k with
// -short), and reports the heap in use and live before and after (both
// after a GC), and how often the compiler compiled from scratch to drop
// what the changes left behind (it keeps the heap bounded: live heap
// between 1x and 2x the freshly compiled one).
func BenchmarkPodChurn(b *testing.B) {
	base := synth.Cluster(synth.Params{Pods: 10000, Policies: 1000, CIDRs: 10000, Seed: 1})
	const perIter = 200
	for _, k := range churnOps {
		b.Run(k.name, func(b *testing.B) {
			s, c := newChurnBench(b, base)
			for _, m := range []struct {
				name string
				pace time.Duration
			}{{"back-to-back", 0}, {"paced-10ms", 10 * time.Millisecond}} {
				b.Run(m.name, func(b *testing.B) {
					var times []time.Duration
					for range b.N {
						times = s.run(b, c, k.op, perIter, m.pace, times)
					}
					b.StopTimer()
					reportLatency(b, times)
				})
			}
		})
	}
	b.Run("mixed-100k", func(b *testing.B) {
		n := 100000
		if testing.Short() {
			n = 10000
		}
		var before, after runtime.MemStats
		var times []time.Duration
		var recompiles int
		for range b.N {
			b.StopTimer()
			s, c := newChurnBench(b, base)
			runtime.GC()
			runtime.ReadMemStats(&before)
			times = times[:0]
			b.StartTimer()
			times = s.run(b, c, func(s *churnBench) (timed, after []compile.Change) {
				return mixedOps[s.r.IntN(len(mixedOps))](s)
			}, n, 0, times)
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(c)
			recompiles = c.Recompiles()
		}
		reportLatency(b, times)
		// In use (spans holding objects) and live (the objects).
		b.ReportMetric(float64(before.HeapInuse)/(1<<20), "heap-before-MB")
		b.ReportMetric(float64(after.HeapInuse)/(1<<20), "heap-after-MB")
		b.ReportMetric(float64(before.HeapAlloc)/(1<<20), "live-before-MB")
		b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "live-after-MB")
		b.ReportMetric(float64(recompiles), "recompiles")
	})
}
