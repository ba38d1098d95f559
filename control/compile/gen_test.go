package compile_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// source is where the generator draws its choices from: a seeded PRNG for
// the differential tests, the fuzzer's bytes for FuzzCompile.
type source interface {
	IntN(n int) int
}

// byteSource draws choices from fuzz input, so that mutating a byte
// changes one decision (a label, an operator, a port, a CIDR length...);
// once the input is exhausted it continues from a PRNG seeded by it.
type byteSource struct {
	b    []byte
	rest *rand.Rand
}

func newByteSource(b []byte) *byteSource {
	var seed uint64
	for _, c := range b {
		seed = seed*131 + uint64(c)
	}
	return &byteSource{b: b, rest: rand.New(rand.NewPCG(seed, uint64(len(b))))}
}

func (s *byteSource) IntN(n int) int {
	if n <= 1 {
		return 0
	}
	if len(s.b) == 0 {
		return s.rest.IntN(n)
	}
	v := int(s.b[0])
	s.b = s.b[1:]
	if n > 256 && len(s.b) > 0 {
		v = v<<8 | int(s.b[0])
		s.b = s.b[1:]
	}
	return v % n
}

// gen builds random clusters: a few labelled namespaces, pods with IPv4,
// IPv6 or dual-stack addresses and named TCP/UDP/SCTP container ports, some
// hostNetwork or terminated, and policies exercising every part of
// networking.k8s.io/v1 (selectors with matchLabels and all four
// matchExpressions operators, both selectors in one peer, ipBlocks whose
// CIDRs and excepts overlap pod addresses, numeric, ranged and named ports,
// empty and absent lists, policyTypes present and absent).
type gen struct {
	r source
	// invalid lets the generator break a policy now and then, so that
	// the fail-closed path is exercised too (never for cyclonus).
	invalid bool

	nsNames []string
	podIPs  []netip.Addr // every address a pod, node or terminated pod uses
	nodes   []nodeAddrs
}

type nodeAddrs struct{ v4, v6 netip.Addr }

var (
	nsLabelKeys  = []string{"team", "env", "tier"}
	podLabelKeys = []string{"app", "role", "ver"}
	labelValues  = []string{"a", "b", "c", ""}
	portNames    = []string{"http", "dns", "metrics", "grpc", "sctp-x", "nope"}
	portNumbers  = []int32{53, 80, 81, 443, 5000, 5001, 5002, 8080, 9090}
	protocols    = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	externals    = []netip.Addr{
		netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.0.1.250"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fd00::1:ff"),
	}
)

func (g *gen) chance(pct int) bool { return g.r.IntN(100) < pct }

func (g *gen) pick(n int) int { return g.r.IntN(n) }

func (g *gen) between(lo, hi int) int { return lo + g.r.IntN(hi-lo+1) }

func pickOf[T any](g *gen, xs []T) T { return xs[g.pick(len(xs))] }

// cluster generates one cluster, defaulted and completed.
func (g *gen) cluster() *model.Cluster {
	c := &model.Cluster{}
	g.nsNames, g.podIPs, g.nodes = nil, nil, nil
	for i := range g.between(3, 5) {
		ns := &corev1.Namespace{}
		ns.Name = fmt.Sprintf("ns%d", i)
		ns.Labels = g.labels(nsLabelKeys)
		g.nsNames = append(g.nsNames, ns.Name)
		c.Add(ns)
	}
	for i := range 2 {
		n := nodeAddrs{netip.AddrFrom4([4]byte{192, 168, 0, byte(i + 1)}), netip.MustParseAddr(fmt.Sprintf("fd00:ff::%d", i+1))}
		g.nodes = append(g.nodes, n)
		g.podIPs = append(g.podIPs, n.v4, n.v6)
	}
	npods := g.between(10, 30)
	for i := range npods {
		c.Add(g.pod(i))
	}
	for i := range g.between(2, 8) {
		c.Add(g.policy(i))
	}
	c.Complete()
	return c
}

func (g *gen) labels(keys []string) map[string]string {
	var m map[string]string
	for _, k := range keys {
		if g.chance(60) {
			if m == nil {
				m = map[string]string{}
			}
			m[k] = pickOf(g, labelValues[:3])
			if g.chance(5) {
				m[k] = ""
			}
		}
	}
	return m
}

func (g *gen) pod(i int) *corev1.Pod {
	p := &corev1.Pod{}
	p.Name = fmt.Sprintf("p%d", i)
	p.Namespace = pickOf(g, g.nsNames)
	p.Labels = g.labels(podLabelKeys)
	p.Status.Phase = corev1.PodRunning
	var ips []netip.Addr
	switch {
	case g.chance(10): // hostNetwork: the node's addresses
		p.Spec.HostNetwork = true
		n := pickOf(g, g.nodes)
		ips = []netip.Addr{n.v4}
		if g.chance(50) {
			ips = append(ips, n.v6)
		}
	default:
		v4 := netip.AddrFrom4([4]byte{10, 0, byte(i % 4), byte(10 + i)})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i % 4), 15: byte(10 + i)})
		switch k := g.pick(10); {
		case k < 5:
			ips = []netip.Addr{v4}
		case k < 7:
			ips = []netip.Addr{v6}
		default:
			ips = []netip.Addr{v4, v6}
		}
		if g.chance(5) {
			p.Status.Phase = pickOf(g, []corev1.PodPhase{corev1.PodSucceeded, corev1.PodFailed})
		}
	}
	p.Status.PodIP = ips[0].String()
	for _, a := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
		if !p.Spec.HostNetwork { // node addresses are listed once
			g.podIPs = append(g.podIPs, a)
		}
	}
	// Container ports: unique names and unique (port, protocol) per pod,
	// as the API server requires.
	usedName := map[string]bool{}
	usedPort := map[string]bool{}
	ctrs := []corev1.Container{{Name: "main"}}
	if g.chance(30) {
		ctrs = append(ctrs, corev1.Container{Name: "second"})
	}
	var sidecar *corev1.Container
	if g.chance(15) {
		always := corev1.ContainerRestartPolicyAlways
		sidecar = &corev1.Container{Name: "sidecar", RestartPolicy: &always}
	}
	for range g.between(0, 4) {
		cp := corev1.ContainerPort{ContainerPort: pickOf(g, portNumbers), Protocol: pickOf(g, protocols)}
		if g.chance(20) {
			cp.Protocol = "" // defaulted to TCP
		}
		if g.chance(80) {
			cp.Name = pickOf(g, portNames[:5])
		}
		proto := cp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		key := fmt.Sprint(cp.ContainerPort, proto)
		if usedPort[key] || (cp.Name != "" && usedName[cp.Name]) {
			continue
		}
		usedPort[key] = true
		usedName[cp.Name] = true
		switch k := g.pick(10); {
		case k == 0 && sidecar != nil:
			sidecar.Ports = append(sidecar.Ports, cp)
		case k < 4:
			c := &ctrs[len(ctrs)-1]
			c.Ports = append(c.Ports, cp)
		default:
			ctrs[0].Ports = append(ctrs[0].Ports, cp)
		}
	}
	p.Spec.Containers = ctrs
	if sidecar != nil {
		p.Spec.InitContainers = []corev1.Container{*sidecar}
	}
	return p
}

func (g *gen) selector(keys []string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for range g.between(0, 2) {
		if g.chance(50) {
			if s.MatchLabels == nil {
				s.MatchLabels = map[string]string{}
			}
			s.MatchLabels[pickOf(g, keys)] = pickOf(g, labelValues)
			continue
		}
		req := metav1.LabelSelectorRequirement{Key: pickOf(g, keys)}
		switch g.pick(4) {
		case 0:
			req.Operator = metav1.LabelSelectorOpIn
		case 1:
			req.Operator = metav1.LabelSelectorOpNotIn
		case 2:
			req.Operator = metav1.LabelSelectorOpExists
		case 3:
			req.Operator = metav1.LabelSelectorOpDoesNotExist
		}
		if req.Operator == metav1.LabelSelectorOpIn || req.Operator == metav1.LabelSelectorOpNotIn {
			for range g.between(1, 2) {
				if v := pickOf(g, labelValues); !slices.Contains(req.Values, v) {
					req.Values = append(req.Values, v)
				}
			}
		}
		s.MatchExpressions = append(s.MatchExpressions, req)
	}
	return s
}

func (g *gen) nsSelector() *metav1.LabelSelector {
	keys := append([]string{model.NamespaceNameLabel}, nsLabelKeys...)
	s := g.selector(keys)
	// The metadata.name label is only useful with namespace names.
	for k := range s.MatchLabels {
		if k == model.NamespaceNameLabel {
			s.MatchLabels[k] = pickOf(g, g.nsNames)
		}
	}
	for i := range s.MatchExpressions {
		if s.MatchExpressions[i].Key == model.NamespaceNameLabel && len(s.MatchExpressions[i].Values) > 0 {
			s.MatchExpressions[i].Values = []string{pickOf(g, g.nsNames)}
		}
	}
	return s
}

func (g *gen) policy(i int) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{}
	p.Name = fmt.Sprintf("np%d", i)
	p.Namespace = pickOf(g, g.nsNames)
	if g.chance(40) {
		p.Spec.PodSelector = metav1.LabelSelector{}
	} else {
		p.Spec.PodSelector = *g.selector(podLabelKeys)
	}
	switch g.pick(5) {
	case 0:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	// Rule lists: absent, empty, or 1-3 rules.
	if k := g.pick(5); k > 0 {
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		for range k - 1 {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
	}
	if k := g.pick(5); k > 0 {
		p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
		for range k - 1 {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
	}
	if g.invalid && g.chance(10) {
		g.breakPolicy(p)
	}
	return p
}

// peers returns nil, an empty list, or 1-3 peers.
func (g *gen) peers() []networkingv1.NetworkPolicyPeer {
	switch g.pick(6) {
	case 0:
		return nil
	case 1:
		return []networkingv1.NetworkPolicyPeer{}
	}
	var out []networkingv1.NetworkPolicyPeer
	for range g.between(1, 3) {
		var peer networkingv1.NetworkPolicyPeer
		switch g.pick(4) {
		case 0:
			peer.PodSelector = g.selector(podLabelKeys)
		case 1:
			peer.NamespaceSelector = g.nsSelector()
		case 2:
			peer.PodSelector = g.selector(podLabelKeys)
			peer.NamespaceSelector = g.nsSelector()
		case 3:
			peer.IPBlock = g.ipBlock()
		}
		out = append(out, peer)
	}
	return out
}

// ipBlock picks a CIDR around a pod, node or external address (or a
// default route) and excepts strictly inside it around other addresses.
func (g *gen) ipBlock() *networkingv1.IPBlock {
	var cidr netip.Prefix
	if g.chance(10) {
		cidr = pickOf(g, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")})
	} else {
		a := pickOf(g, g.podIPs)
		if g.chance(10) {
			a = pickOf(g, externals)
		}
		var bits int
		if a.Is4() {
			bits = pickOf(g, []int{8, 16, 22, 24, 30, 32})
		} else {
			bits = pickOf(g, []int{8, 64, 112, 120, 126, 128})
		}
		cidr = netip.PrefixFrom(a, bits)
	}
	b := &networkingv1.IPBlock{CIDR: cidr.Masked().String()}
	if g.chance(10) {
		b.CIDR = cidr.String() // host bits set: masked, like the API server
	}
	for range g.pick(3) {
		var inside []netip.Addr
		for _, a := range append(slices.Clone(g.podIPs), externals...) {
			if cidr.Masked().Contains(a) {
				inside = append(inside, a)
			}
		}
		if len(inside) == 0 || cidr.Bits() == cidr.Addr().BitLen() {
			break
		}
		a := pickOf(g, inside)
		bits := g.between(cidr.Bits()+1, a.BitLen())
		b.Except = append(b.Except, netip.PrefixFrom(a, bits).Masked().String())
	}
	return b
}

// ports returns nil, an empty list, or 1-3 ports.
func (g *gen) ports() []networkingv1.NetworkPolicyPort {
	switch g.pick(5) {
	case 0:
		return nil
	case 1:
		return []networkingv1.NetworkPolicyPort{}
	}
	var out []networkingv1.NetworkPolicyPort
	for range g.between(1, 3) {
		var pp networkingv1.NetworkPolicyPort
		if !g.chance(25) {
			proto := pickOf(g, protocols)
			pp.Protocol = &proto
		}
		switch g.pick(5) {
		case 0: // every port of the protocol
		case 1, 2:
			v := intstr.FromInt32(pickOf(g, portNumbers))
			pp.Port = &v
		case 3:
			lo := pickOf(g, portNumbers)
			hi := lo + int32(g.pick(3000))
			if hi > 65535 {
				hi = 65535
			}
			v := intstr.FromInt32(lo)
			pp.Port, pp.EndPort = &v, &hi
		case 4:
			v := intstr.FromString(pickOf(g, portNames))
			pp.Port = &v
		}
		out = append(out, pp)
	}
	return out
}

// breakPolicy makes a policy invalid in one of the ways the API server
// would reject, to exercise the fail-closed path.
func (g *gen) breakPolicy(p *networkingv1.NetworkPolicy) {
	bad := networkingv1.NetworkPolicyIngressRule{}
	switch g.pick(6) {
	case 0:
		lo, hi := intstr.FromInt32(80), int32(79)
		bad.Ports = []networkingv1.NetworkPolicyPort{{Port: &lo, EndPort: &hi}}
	case 1:
		bad.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}}
	case 2:
		bad.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.1.0.0/24"}}}}
	case 3:
		bad.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16"}, PodSelector: &metav1.LabelSelector{}}}
	case 4:
		p.Spec.PodSelector.MatchExpressions = append(p.Spec.PodSelector.MatchExpressions, metav1.LabelSelectorRequirement{Key: "app", Operator: metav1.LabelSelectorOpIn})
	case 5:
		sctp := corev1.Protocol("ICMP")
		bad.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &sctp}}
	}
	p.Spec.Ingress = append(p.Spec.Ingress, bad)
}

// flow is one connection attempt.
type flow struct {
	src, dst netip.Addr
	proto    ruleset.Proto
	port     uint16
}

func (f flow) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", f.src, f.dst, f.proto, f.port)
}

// flow picks a flow between pod, node and external addresses of one
// family, on a port the destination likely serves.
func (g *gen) flow(c *model.Cluster, otherProtos bool) flow {
	addrs := append(slices.Clone(g.podIPs), externals...)
	dst := pickOf(g, addrs)
	var same []netip.Addr
	for _, a := range addrs {
		if a.Is4() == dst.Is4() {
			same = append(same, a)
		}
	}
	f := flow{src: pickOf(g, same), dst: dst}
	f.proto = pickOf(g, []ruleset.Proto{ruleset.TCP, ruleset.UDP, ruleset.SCTP})
	if otherProtos && g.chance(3) {
		f.proto = 1 // ICMP: only rules without ports admit it
	}
	f.port = uint16(pickOf(g, portNumbers))
	switch k := g.pick(10); {
	case k == 0:
		f.port = uint16(g.between(1, 65535))
	case k == 1:
		f.port = uint16(pickOf(g, portNumbers) + int32(g.pick(3000)))
	}
	return f
}
