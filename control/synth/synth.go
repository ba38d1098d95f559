// Package synth generates large, realistic-looking clusters and policies
// with a fixed seed, for benchmarks (BenchmarkCompile, BenchmarkVerdict, the
// bench/ harness). It is never used to decide real traffic.
package synth

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/model"
)

// Params sizes a synthetic cluster.
type Params struct {
	Pods, Policies int
	// CIDRs is the total number of ipBlock CIDRs spread over the policies
	// (half IPv4, half IPv6).
	CIDRs int
	Seed  uint64
	// Hot is how many of the policies (the first Hot) select the same
	// pods, app-0 in ns-0, as many teams' policies select a popular
	// backend, instead of being spread over the namespaces and apps; 0
	// spreads them all. The bench harness puts its sink among those pods,
	// so that its policies axis changes what is enforced on the sink.
	Hot int
	// HotRules, if set, returns more ingress rules for the i-th hot policy
	// (0 ≤ i < Hot), appended after the generated one.
	HotRules func(i int) []networkingv1.NetworkPolicyIngressRule
}

// Apps is the number of app labels per namespace; pods of one app share
// labels, as pods of one Deployment do.
const Apps = 20

// Cluster builds a dual-stack cluster: one namespace per 100 pods, pods
// labelled app/tier like Deployments, and policies that select an app and
// admit other apps of their namespace, apps of other teams' namespaces, and
// ipBlocks, on numeric, ranged and named ports; a quarter also restrict
// egress. The first p.Hot policies all select app-0 in ns-0.
func Cluster(p Params) *model.Cluster {
	r := rand.New(rand.NewPCG(p.Seed, 0x9e3779b97f4a7c15))
	c := &model.Cluster{}
	nns := max(1, p.Pods/100)
	for i := range nns {
		ns := &corev1.Namespace{}
		ns.Name = fmt.Sprintf("ns-%d", i)
		ns.Labels = map[string]string{"team": fmt.Sprintf("team-%d", i%10), "env": []string{"prod", "staging", "dev"}[i%3]}
		c.Add(ns)
	}
	for i := range p.Pods {
		pod := &corev1.Pod{}
		pod.Namespace = fmt.Sprintf("ns-%d", i%nns)
		pod.Name = fmt.Sprintf("pod-%d", i)
		app := (i / nns) % Apps
		pod.Labels = map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[app%3]}
		pod.Spec.NodeName = fmt.Sprintf("node-%d", i%50)
		pod.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: int32(8080 + app%4), Protocol: corev1.ProtocolTCP},
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		}}}
		v4, v6 := PodAddrs(i)
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = v4.String()
		pod.Status.PodIPs = []corev1.PodIP{{IP: v4.String()}, {IP: v6.String()}}
		c.Add(pod)
	}
	cidrsPer := 0
	if p.Policies > 0 {
		cidrsPer = (p.CIDRs + p.Policies - 1) / p.Policies
	}
	made := 0
	for i := range p.Policies {
		np := &networkingv1.NetworkPolicy{}
		ns, app := i%nns, (i/nns)%Apps
		if i < p.Hot {
			ns, app = 0, 0
		}
		np.Namespace = fmt.Sprintf("ns-%d", ns)
		np.Name = fmt.Sprintf("policy-%d", i)
		np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", app)}}
		rule := networkingv1.NetworkPolicyIngressRule{
			From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", r.IntN(Apps))}}},
				{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", r.IntN(10))}},
					PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
						{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "api"}},
					}},
				},
			},
			Ports: []networkingv1.NetworkPolicyPort{
				port(corev1.ProtocolTCP, intstr.FromInt32(80), nil),
				port(corev1.ProtocolTCP, intstr.FromInt32(9000), ptr(int32(9100))),
				port(corev1.ProtocolTCP, intstr.FromString("http"), nil),
				port(corev1.ProtocolUDP, intstr.FromInt32(53), nil),
			},
		}
		for j := 0; j < cidrsPer && made < p.CIDRs; j++ {
			rule.From = append(rule.From, networkingv1.NetworkPolicyPeer{IPBlock: ExternalBlock(made)})
			made++
		}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rule}
		if i < p.Hot && p.HotRules != nil {
			np.Spec.Ingress = append(np.Spec.Ingress, p.HotRules(i)...)
		}
		if i%4 == 0 {
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
					{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}},
				},
				Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromString("http"), nil), port(corev1.ProtocolUDP, intstr.FromInt32(53), nil)},
			}}
		}
		c.Add(np)
	}
	c.Complete()
	return c
}

// PodAddrs are the addresses of pod i: 10.0.0.0/8 and fd00::/64.
func PodAddrs(i int) (netip.Addr, netip.Addr) {
	v4 := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	v6 := netip.AddrFrom16([16]byte{0: 0xfd, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
	return v4, v6
}

// ExternalBlock is the i-th ipBlock: a /24 in 100.64.0.0/10 or a /64 in
// 2001:db8::/32, with a hole.
func ExternalBlock(i int) *networkingv1.IPBlock {
	if i%2 == 0 {
		n := i / 2
		base := netip.AddrFrom4([4]byte{100, 64 + byte(n>>8)&63, byte(n), 0})
		return &networkingv1.IPBlock{CIDR: base.String() + "/24", Except: []string{netip.PrefixFrom(base, 28).String()}}
	}
	n := i / 2
	base := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(n >> 8), 5: byte(n)})
	return &networkingv1.IPBlock{CIDR: base.String() + "/48", Except: []string{netip.PrefixFrom(base, 64).String()}}
}

func port(proto corev1.Protocol, p intstr.IntOrString, end *int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p, EndPort: end}
}

func ptr[T any](v T) *T { return &v }
