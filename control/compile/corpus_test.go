package compile_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/corpus"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/naive"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// stepCluster builds the cluster one corpus step describes.
func stepCluster(t *testing.T, s *corpus.Step) (*model.Cluster, map[string]netip.Addr) {
	t.Helper()
	c := &model.Cluster{}
	for _, n := range s.State.Namespaces {
		ns := &corev1.Namespace{}
		ns.Name = n.Name
		ns.Labels = n.Labels
		c.Add(ns)
	}
	ips := map[string]netip.Addr{}
	for _, p := range s.State.Pods {
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name, pod.Labels = p.Namespace, p.Name, p.Labels
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = p.IP
		pod.Status.PodIPs = []corev1.PodIP{{IP: p.IP}}
		ctr := corev1.Container{Name: "c"}
		for _, cp := range p.Ports {
			ctr.Ports = append(ctr.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.Port, Protocol: cp.Protocol})
		}
		pod.Spec.Containers = []corev1.Container{ctr}
		c.Add(pod)
		ips[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.IP)
	}
	for i, raw := range s.State.Policies {
		np := &networkingv1.NetworkPolicy{}
		if err := json.Unmarshal(raw, np); err != nil {
			t.Fatalf("policies[%d]: %v", i, err)
		}
		c.Add(np)
	}
	c.Complete()
	return c, ips
}

// compiledAllowed is the dataplane's decision for pod-to-pod or
// pod-to-external traffic: the egress verdict at the source's pod and the
// ingress verdict at the destination's pod, each true when the address
// belongs to no pod.
func compiledAllowed(rs *ruleset.Ruleset, src, dst netip.Addr, proto ruleset.Proto, port uint16) (egress, ingress bool) {
	egress, ingress = true, true
	if id, ok := rs.PodByIP(src); ok {
		egress = rs.Verdict(id, ruleset.Egress, dst, proto, port).Allowed
	}
	if id, ok := rs.PodByIP(dst); ok {
		ingress = rs.Verdict(id, ruleset.Ingress, src, proto, port).Allowed
	}
	return egress, ingress
}

func policiesYAML(ps []*networkingv1.NetworkPolicy) string {
	var b strings.Builder
	for _, p := range ps {
		y, err := yaml.Marshal(p)
		if err != nil {
			fmt.Fprintf(&b, "# %s/%s: %v\n", p.Namespace, p.Name, err)
			continue
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.String()
}

// TestUpstreamCorpus checks every non-loopback cell of the upstream
// Kubernetes e2e reachability tables against the compiled ruleset and the
// naive interpreter.
func TestUpstreamCorpus(t *testing.T) {
	tests := corpus.ForTest(t)
	var cells, steps int
	for _, ct := range tests {
		t.Run(ct.ID, func(t *testing.T) {
			for si := range ct.Steps {
				s := &ct.Steps[si]
				steps++
				c, ips := stepCluster(t, s)
				rs, problems := compile.Compile(c)
				for _, p := range problems {
					t.Errorf("step %d: unexpected compile problem: %v", si, p)
				}
				proto, err := ruleset.ParseProto(s.Protocol)
				if err != nil {
					t.Fatalf("step %d: %v", si, err)
				}
				froms := sortedKeys(s.Expected)
				for _, from := range froms {
					for _, to := range sortedKeys(s.Expected[from]) {
						if s.IgnoreLoopback && from == to {
							continue
						}
						want := s.Expected[from][to]
						src, ok1 := ips[from]
						dst, ok2 := ips[to]
						if !ok1 || !ok2 {
							t.Fatalf("step %d: cell %s -> %s names an unknown pod", si, from, to)
						}
						cells++
						ce, ci := compiledAllowed(rs, src, dst, proto, s.Port)
						ne, ni := naive.Allowed(c, src, dst, proto, s.Port)
						if got := ce && ci; got != want {
							t.Errorf("step %d: %s -> %s %s/%d: compiled %v (egress %v, ingress %v), upstream expects %v\npolicies:\n%s",
								si, from, to, s.Protocol, s.Port, got, ce, ci, want, policiesYAML(c.Policies))
						}
						if got := ne && ni; got != want || ne != ce || ni != ci {
							t.Errorf("step %d: %s -> %s %s/%d: naive %v (egress %v, ingress %v), compiled egress %v ingress %v, upstream expects %v\npolicies:\n%s",
								si, from, to, s.Protocol, s.Port, got, ne, ni, ce, ci, want, policiesYAML(c.Policies))
						}
					}
				}
			}
		})
	}
	t.Logf("checked %d cells in %d tables of %d upstream tests", cells, steps, len(tests))
	if cells != 4680 && !t.Failed() && len(tests) == 48 {
		t.Errorf("checked %d cells, the corpus README promises 4,680", cells)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
