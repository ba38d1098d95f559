package lab_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/lab"
)

// BenchmarkRolloutUnderChurn measures rollout on a lab with its own
// kube-apiserver while 100 pods per second are created, relabelled and
// deleted through the API (API objects in namespace churn): the time from
// an API write to the first datagram of a new flow that gets the new
// verdict, for two kinds of writes, alternating:
//
//   - policy: the policy on b flips between deny and allow-from-every-pod;
//   - pod: pod a, the client, is deleted (its address is no pod's any more:
//     denied) and created again (its address enforced at b: allowed).
//
// Each sample is a new UDP flow from a to b every millisecond (the prober
// of BenchmarkRolloutLatency). It reports p50-ms, p99-ms, max-ms over all
// samples (500), per kind p99, the churn rate achieved, and node-2's agent
// CPU and RSS during the churn. The 10k pods / 1k policies case needs
// XDPOLICY_ROLLOUT_LARGE=1.
func BenchmarkRolloutUnderChurn(b *testing.B) {
	for _, sc := range []struct {
		name           string
		pods, policies int
		large          bool
	}{
		{"pods=100/policies=10", 100, 10, false},
		{"pods=10k/policies=1k", 10000, 1000, true},
	} {
		b.Run(sc.name, func(b *testing.B) {
			if sc.large && os.Getenv("XDPOLICY_ROLLOUT_LARGE") == "" {
				b.Skip("set XDPOLICY_ROLLOUT_LARGE=1 for the 10k pods / 1k policies case")
			}
			r, ok := churnResults[sc.name]
			if !ok {
				r = measureUnderChurn(b, sc.pods, sc.policies, 500)
				churnResults[sc.name] = r
			}
			for k, v := range r {
				b.ReportMetric(v, k)
			}
		})
	}
}

// churnResults: the benchmark function runs more than once per name; the
// lab is built and measured once.
var churnResults = map[string]map[string]float64{}

func measureUnderChurn(b *testing.B, pods, policies, samples int) map[string]float64 {
	l := upAPILab(b, fmt.Sprintf("c%d", pods))
	background(b, l.cs, pods-2, policies-1)
	ctx := context.Background()
	if _, err := lab.ApplyPolicy(ctx, l.cs, gate(false)); err != nil {
		b.Fatal(err)
	}
	p := startProber(b, l)
	if _, err := p.flipped(time.Now(), true, 60*time.Second); err != nil {
		b.Fatal(err)
	}
	podA, err := l.cs.CoreV1().Pods("lat").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ch := startChurn(b, l, 100)
	time.Sleep(2 * time.Second) // the churn reaches its pace
	cpu0, t0 := agentCPU(b, l, 1), time.Now()

	api := l.cs.NetworkingV1().NetworkPolicies("lat")
	cur, err := api.Get(ctx, "gate", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var all, policy, pod []float64
	sample := func(kind string, w time.Time, allow bool) {
		d, err := p.flipped(w, allow, 30*time.Second)
		if err != nil {
			keepLogs(b, l)
			b.Fatalf("%s sample %d (allow=%v): %v", kind, len(all), allow, err)
		}
		ms := float64(d) / 1e6
		all = append(all, ms)
		if kind == "policy" {
			policy = append(policy, ms)
		} else {
			pod = append(pod, ms)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for len(all) < samples {
		for _, deny := range []bool{true, false} {
			cur.Spec = gate(deny).Spec
			w := time.Now()
			if cur, err = api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			sample("policy", w, !deny)
		}
		w := time.Now()
		if err := l.cs.CoreV1().Pods("lat").Delete(ctx, "a", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			b.Fatal(err)
		}
		sample("pod", w, false)
		w = time.Now()
		if err := lab.CreatePod(ctx, l.cs, podA); err != nil {
			b.Fatal(err)
		}
		sample("pod", w, true)
	}
	cpu1, t1 := agentCPU(b, l, 1), time.Now()
	ops, errs := ch.stop()
	rss, _ := agentRSS(l)
	q := func(v []float64, f float64) float64 {
		v = slices.Sorted(slices.Values(v))
		return v[min(len(v)-1, int(f*float64(len(v))))]
	}
	r := map[string]float64{
		"p50-ms": q(all, 0.5), "p99-ms": q(all, 0.99), "max-ms": slices.Max(all), "samples": float64(len(all)),
		"policy-p99-ms": q(policy, 0.99), "pod-p99-ms": q(pod, 0.99),
		"churn-ops/s":       float64(ops) / t1.Sub(t0).Seconds(),
		"agent-cpu-percent": 100 * (cpu1 - cpu0) / t1.Sub(t0).Seconds(),
	}
	b.Logf("%d pods, %d policies, %d churn ops (%d failed) at %.0f/s: %d samples, write → first datagram enforced p50 %.1f ms, p99 %.1f ms (policy %.1f, pod %.1f), max %.1f ms; node-2 agent CPU %.0f%%; agents: %s",
		pods, policies, ops, errs, r["churn-ops/s"], len(all), r["p50-ms"], r["p99-ms"], r["policy-p99-ms"], r["pod-p99-ms"], r["max-ms"], r["agent-cpu-percent"], rss)
	if out, err := l.agentGet(1, "/metrics"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "xdpolicy_full_compiles_total ") || strings.HasPrefix(line, "xdpolicy_snapshots_enforced_total ") {
				b.Logf("node-2 %s", line)
			}
		}
	}
	return r
}

// churner creates, relabels and deletes pods (API objects on no lab node,
// in namespace churn) at a steady rate, keeping about 50 of them.
type churner struct {
	done      chan struct{}
	wg        sync.WaitGroup
	ops, errs atomic.Int64
}

func startChurn(tb testing.TB, l *apiLab, perSecond int) *churner {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "churn", Labels: map[string]string{"team": "churn"}}}
	if _, err := l.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	c := &churner{done: make(chan struct{})}
	// Four clients, each a quarter of the rate: one API round trip (two
	// for a create) can take longer than the period.
	const clients = 4
	for w := range clients {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			t := time.NewTicker(time.Second * clients / time.Duration(perSecond))
			defer t.Stop()
			api := l.cs.CoreV1().Pods("churn")
			var live []string
			for i := 0; ; i++ {
				select {
				case <-c.done:
					return
				case <-t.C:
				}
				var err error
				switch n := i*clients + w; {
				case i%3 == 0 || len(live) < 50/clients: // create
					name := "p" + strconv.Itoa(n)
					p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "churn", Labels: map[string]string{"app": "churn", "v": strconv.Itoa(n % 7)}},
						Spec:   corev1.PodSpec{NodeName: "bg-node", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
						Status: corev1.PodStatus{PodIP: fmt.Sprintf("10.251.%d.%d", n/250%250, n%250+1)}}
					if err = lab.CreatePod(ctx, l.cs, p); err == nil {
						live = append(live, name)
					}
				case i%3 == 1: // relabel
					patch := fmt.Sprintf(`{"metadata":{"labels":{"v":"%d"}}}`, n%7)
					_, err = api.Patch(ctx, live[i%len(live)], "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})
				default: // delete the oldest
					err = api.Delete(ctx, live[0], metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
					live = live[1:]
				}
				c.ops.Add(1)
				if err != nil {
					c.errs.Add(1)
				}
			}
		}()
	}
	tb.Cleanup(func() { c.stop() })
	return c
}

// stop ends the churn and returns the operations done and failed.
func (c *churner) stop() (ops, errs int64) {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.wg.Wait()
	return c.ops.Load(), c.errs.Load()
}

// agentCPU is the CPU time (user + system, seconds) node k's agent used.
func agentCPU(tb testing.TB, l *apiLab, k int) float64 {
	pid := 0
	for _, pr := range l.s.Procs {
		if pr.Role == "agent" && pr.Of == l.s.Nodes[k].Name {
			pid = pr.PID
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatalf("agent of node %d: %v", k, err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64) // utime, field 14
	st, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
	return (ut + st) / 100                 // USER_HZ
}
