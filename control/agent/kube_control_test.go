package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/synth"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// TestClusterChanges: objects replaced, added or deleted under their names
// become compiler changes; too many changes, an unsorted list or no
// previous cluster do not.
func TestClusterChanges(t *testing.T) {
	pol := func(name string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name}}
	}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name}}
	}
	svc := func(name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name}}
	}
	ns := func(name string, lbls ...string) *corev1.Namespace {
		o := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{model.NamespaceNameLabel: name}}}
		for i := 0; i+1 < len(lbls); i += 2 {
			o.Labels[lbls[i]] = lbls[i+1]
		}
		return o
	}
	p1, p2, q1, q2, s1, na := pol("x"), pol("y"), pod("p"), pod("q"), svc("s"), ns("a", "team", "t")
	prev := &model.Cluster{Namespaces: []*corev1.Namespace{na}, Pods: []*corev1.Pod{q1, q2}, Policies: []*networkingv1.NetworkPolicy{p1, p2}, Services: []*corev1.Service{s1}}
	with := func(f func(c *model.Cluster)) *model.Cluster {
		c := *prev
		c.Namespaces, c.Pods = slices.Clone(c.Namespaces), slices.Clone(c.Pods)
		c.Policies, c.Services = slices.Clone(c.Policies), slices.Clone(c.Services)
		f(&c)
		return &c
	}
	for _, tc := range []struct {
		name    string
		c       *model.Cluster
		changes string // compile.Change strings, "|"-separated
		ok      bool
	}{
		{"nothing", with(func(*model.Cluster) {}), "", true},
		{"the same lists", &model.Cluster{Namespaces: prev.Namespaces, Pods: prev.Pods, Policies: prev.Policies, Services: prev.Services}, "", true},
		{"one policy updated", with(func(c *model.Cluster) { c.Policies[1] = pol("y") }), "set NetworkPolicy a/y", true},
		{"policy added", with(func(c *model.Cluster) { c.Policies = append(c.Policies, pol("z")) }), "set NetworkPolicy a/z", true},
		{"policy deleted", with(func(c *model.Cluster) { c.Policies = c.Policies[1:] }), "delete NetworkPolicy a/x", true},
		{"policy replaced by another name", with(func(c *model.Cluster) { c.Policies[0] = pol("w") }), "set NetworkPolicy a/w|delete NetworkPolicy a/x", true},
		{"pod changed", with(func(c *model.Cluster) { c.Pods[0] = q1.DeepCopy() }), "set Pod a/p", true},
		{"pod added and pod deleted", with(func(c *model.Cluster) { c.Pods = []*corev1.Pod{pod("o"), q1} }), "set Pod a/o|delete Pod a/q", true},
		{"namespace object made again", with(func(c *model.Cluster) { c.Namespaces[0] = ns("a", "team", "t") }), "", true},
		{"namespace relabelled", with(func(c *model.Cluster) { c.Namespaces[0] = ns("a", "team", "u") }), "set Namespace a", true},
		{"namespace added and deleted", with(func(c *model.Cluster) { c.Namespaces[0] = ns("b") }), "set Namespace b|delete Namespace a", true},
		{"service added and deleted", with(func(c *model.Cluster) { c.Services = []*corev1.Service{svc("t")} }), "delete Service a/s|set Service a/t", true},
		{"too many", with(func(c *model.Cluster) {
			for i := range maxIncremental + 1 {
				c.Pods = append(c.Pods, pod(fmt.Sprintf("r%03d", i)))
			}
		}), "", false},
		{"not sorted", with(func(c *model.Cluster) { c.Pods = []*corev1.Pod{q2, pod("p")} }), "", false},
	} {
		changes, ok := clusterChanges(prev, tc.c, maxIncremental)
		var got []string
		for _, ch := range changes {
			got = append(got, ch.String())
		}
		if ok != tc.ok || (ok && strings.Join(got, "|") != tc.changes) {
			t.Errorf("%s: %q, ok %v; want %q, %v", tc.name, got, ok, tc.changes, tc.ok)
		}
	}
	if _, ok := clusterChanges(nil, prev, maxIncremental); ok {
		t.Error("no previous cluster: ok")
	}
}

// TestControlCompile: snapshots as the Kubernetes source makes them (lists
// shared, changed objects replaced) compile incrementally to what a full
// compile gives, and only the first and a snapshot with many changes
// count as full compiles.
func TestControlCompile(t *testing.T) {
	p := synth.Params{Pods: 300, Policies: 30, CIDRs: 30, Seed: 3}
	k := newControl(Config{}, slog.New(slog.DiscardHandler))
	reg := prometheus.NewRegistry()
	reg.MustRegister(k.full)
	c := synth.Cluster(p)
	k.compile(c)
	step := func(name string, change func(c *model.Cluster), full float64) {
		t.Helper()
		n := *c
		change(&n)
		c = &n
		got, _ := k.compile(c)
		want, _ := compile.Compile(c)
		for i := range want.Pods {
			if want.Pods[i].Name == "" {
				continue
			}
			for _, peer := range []netip.Addr{want.Pods[(i+7)%len(want.Pods)].IPs[0], netip.MustParseAddr("100.64.0.9")} {
				gi := slices.IndexFunc(got.Pods, func(gp ruleset.Pod) bool {
					return gp.Namespace == want.Pods[i].Namespace && gp.Name == want.Pods[i].Name
				})
				for d := range 2 {
					g := got.Verdict(ruleset.PodID(gi), ruleset.Direction(d), peer, ruleset.TCP, 80)
					w := want.Verdict(ruleset.PodID(i), ruleset.Direction(d), peer, ruleset.TCP, 80)
					if g.Allowed != w.Allowed || g.Reason != w.Reason {
						t.Fatalf("%s: pod %s %v peer %v: %v, full compile %v", name, want.Pods[i].Name, ruleset.Direction(d), peer, g, w)
					}
				}
			}
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if n := mfs[0].GetMetric()[0].GetCounter().GetValue(); n != full {
			t.Fatalf("%s: %v full compiles, want %v", name, n, full)
		}
	}
	step("first", func(*model.Cluster) {}, 1)
	step("relabel", func(c *model.Cluster) {
		c.Pods = slices.Clone(c.Pods)
		o := c.Pods[5].DeepCopy()
		o.Labels = map[string]string{"app": "app-9", "tier": "db"}
		c.Pods[5] = o
	}, 1)
	step("delete a pod and a policy, relabel a namespace", func(c *model.Cluster) {
		c.Pods = slices.Delete(slices.Clone(c.Pods), 7, 8)
		c.Policies = slices.Delete(slices.Clone(c.Policies), 3, 4)
		c.Namespaces = slices.Clone(c.Namespaces)
		o := c.Namespaces[1].DeepCopy()
		o.Labels["env"] = "prod"
		c.Namespaces[1] = o
	}, 1)
	step("many pods relabelled", func(c *model.Cluster) {
		c.Pods = slices.Clone(c.Pods)
		for i := range maxIncremental + 1 {
			o := c.Pods[i].DeepCopy()
			o.Labels = map[string]string{"app": "app-1", "tier": "api"}
			c.Pods[i] = o
		}
	}, 2)
	step("a Service", func(c *model.Cluster) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: "s"}}
		s.Spec.ClusterIPs = []string{"10.96.0.1"}
		model.DefaultService(s)
		c.Services = []*corev1.Service{s}
	}, 2)
}
