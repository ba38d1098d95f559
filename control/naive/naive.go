package naive

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Allowed decides a flow from src to dst. egress is the verdict at the pod
// owning src (true when src is no enforced pod), ingress the verdict at the
// pod owning dst (true when dst is no enforced pod). Pod-to-pod traffic is
// allowed iff both are true.
func Allowed(c *model.Cluster, src, dst netip.Addr, proto ruleset.Proto, port uint16) (egress, ingress bool) {
	srcPod, dstPod := Owner(c, src), Owner(c, dst)
	egress, ingress = true, true
	if srcPod != nil {
		egress = Decide(c, srcPod, ruleset.Egress, dst, proto, port)
	}
	if dstPod != nil {
		ingress = Decide(c, dstPod, ruleset.Ingress, src, proto, port)
	}
	return egress, ingress
}

// Owner returns the pod that owns addr for policy purposes: the first pod
// (in c.Pods order) that is active, not hostNetwork, and lists addr among
// its IPs. It returns nil for any other address (external hosts, nodes,
// hostNetwork pods, terminated pods).
func Owner(c *model.Cluster, addr netip.Addr) *corev1.Pod {
	addr = addr.Unmap()
	for _, p := range c.Pods {
		if p.Spec.HostNetwork || !model.Active(p) {
			continue
		}
		ips, err := model.PodIPs(p)
		if err != nil {
			continue
		}
		for _, a := range ips {
			if a == addr {
				return p
			}
		}
	}
	return nil
}

// Decide is the verdict at one enforcement point: pod in direction dir,
// against the peer address (the source for ingress, the destination for
// egress). A pod no policy selects in dir is not isolated and allows
// everything; otherwise the flow must be admitted by some rule of some
// selecting policy.
func Decide(c *model.Cluster, pod *corev1.Pod, dir ruleset.Direction, peer netip.Addr, proto ruleset.Proto, port uint16) bool {
	isolated := false
	for _, pol := range c.Policies {
		if !selects(pol, pod, dir) {
			continue
		}
		isolated = true
		if admits(c, pol, pod, dir, peer, proto, port) {
			return true
		}
	}
	return !isolated
}

// selects reports whether the policy applies to pod in dir.
//
// A policy that does not validate applies in both directions to every pod
// its podSelector picks (every pod of its namespace when the selector does
// not parse) and admits nothing: the project's fail-closed rule (see
// control/compile's package doc).
func selects(pol *networkingv1.NetworkPolicy, pod *corev1.Pod, dir ruleset.Direction) bool {
	if pol.Namespace != pod.Namespace {
		return false
	}
	invalid := model.ValidatePolicy(pol) != nil
	if !invalid && !model.HasType(pol, policyType(dir)) {
		return false
	}
	sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
	if err != nil {
		return invalid
	}
	return sel.Matches(labels.Set(pod.Labels))
}

func policyType(dir ruleset.Direction) networkingv1.PolicyType {
	if dir == ruleset.Egress {
		return networkingv1.PolicyTypeEgress
	}
	return networkingv1.PolicyTypeIngress
}

// admits reports whether some rule of pol in dir admits the flow.
func admits(c *model.Cluster, pol *networkingv1.NetworkPolicy, pod *corev1.Pod, dir ruleset.Direction, peer netip.Addr, proto ruleset.Proto, port uint16) bool {
	if model.ValidatePolicy(pol) != nil {
		return false
	}
	// The pod that owns the destination address: named ports are looked
	// up on it.
	dest := pod
	if dir == ruleset.Egress {
		dest = Owner(c, peer)
	}
	if dir == ruleset.Ingress {
		for _, r := range pol.Spec.Ingress {
			if peersMatch(c, pol.Namespace, r.From, peer) && portsMatch(r.Ports, dest, proto, port) {
				return true
			}
		}
		return false
	}
	for _, r := range pol.Spec.Egress {
		if peersMatch(c, pol.Namespace, r.To, peer) && portsMatch(r.Ports, dest, proto, port) {
			return true
		}
	}
	return false
}

// peersMatch: an empty or missing peer list matches every address;
// otherwise some peer must.
func peersMatch(c *model.Cluster, policyNS string, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peerMatches(c, policyNS, peer, addr) {
			return true
		}
	}
	return false
}

func peerMatches(c *model.Cluster, policyNS string, peer networkingv1.NetworkPolicyPeer, addr netip.Addr) bool {
	if b := peer.IPBlock; b != nil {
		// ipBlock matches any address in the CIDR and none of the
		// excepts, pod addresses included.
		cidr, err := model.ParseCIDR(b.CIDR)
		if err != nil || !cidr.Contains(addr.Unmap()) {
			return false
		}
		for _, e := range b.Except {
			ex, err := model.ParseCIDR(e)
			if err != nil || ex.Contains(addr.Unmap()) {
				return false
			}
		}
		return true
	}
	// Selectors pick pods only.
	p := Owner(c, addr)
	if p == nil {
		return false
	}
	if peer.NamespaceSelector == nil {
		if p.Namespace != policyNS {
			return false
		}
	} else {
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil || !sel.Matches(labels.Set(namespaceLabels(c, p.Namespace))) {
			return false
		}
	}
	if peer.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil || !sel.Matches(labels.Set(p.Labels)) {
			return false
		}
	}
	return true
}

// namespaceLabels returns the labels of the Namespace object named ns, or
// the one label the API server would have given it when it is missing.
func namespaceLabels(c *model.Cluster, ns string) map[string]string {
	for _, n := range c.Namespaces {
		if n.Name == ns {
			return n.Labels
		}
	}
	return map[string]string{model.NamespaceNameLabel: ns}
}

// portsMatch: an empty or missing port list matches every protocol and
// port; otherwise some entry must. dest is the pod owning the destination
// address (nil when it is not a pod), on which named ports are resolved.
func portsMatch(ports []networkingv1.NetworkPolicyPort, dest *corev1.Pod, proto ruleset.Proto, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		want := corev1.ProtocolTCP
		if pp.Protocol != nil {
			want = *pp.Protocol
		}
		if want != protocolName(proto) {
			continue
		}
		switch {
		case pp.Port == nil:
			return true
		case pp.Port.Type == intstr.Int:
			lo, hi := pp.Port.IntVal, pp.Port.IntVal
			if pp.EndPort != nil {
				hi = *pp.EndPort
			}
			if lo <= int32(port) && int32(port) <= hi {
				return true
			}
		default:
			if dest != nil && hasNamedPort(dest, pp.Port.StrVal, want, port) {
				return true
			}
		}
	}
	return false
}

// protocolName maps a ruleset protocol to the Kubernetes name; protocols
// NetworkPolicy cannot name map to "".
func protocolName(p ruleset.Proto) corev1.Protocol {
	switch p {
	case ruleset.TCP:
		return corev1.ProtocolTCP
	case ruleset.UDP:
		return corev1.ProtocolUDP
	case ruleset.SCTP:
		return corev1.ProtocolSCTP
	}
	return ""
}

// Containers lists the containers whose ports a pod serves: the regular
// containers and the restartable init containers (sidecars), as the
// Kubernetes endpoints controller's FindPort does.
func Containers(p *corev1.Pod) []corev1.Container {
	out := append([]corev1.Container(nil), p.Spec.Containers...)
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			out = append(out, c)
		}
	}
	return out
}

// hasNamedPort reports whether the pod serves a container port with this
// name, protocol and number.
func hasNamedPort(p *corev1.Pod, name string, proto corev1.Protocol, port uint16) bool {
	for _, c := range Containers(p) {
		for _, cp := range c.Ports {
			pr := cp.Protocol
			if pr == "" {
				pr = corev1.ProtocolTCP
			}
			if cp.Name == name && pr == proto && port != 0 && cp.ContainerPort == int32(port) {
				return true
			}
		}
	}
	return false
}

// PortName is the name of the pod's container port (port, proto), or ""
// (the reverse of NamedPort, for tools that resolve ports that way).
func PortName(p *corev1.Pod, port uint16, proto ruleset.Proto) string {
	for _, c := range Containers(p) {
		for _, cp := range c.Ports {
			pr := cp.Protocol
			if pr == "" {
				pr = corev1.ProtocolTCP
			}
			if cp.ContainerPort == int32(port) && pr == protocolName(proto) && cp.Name != "" {
				return cp.Name
			}
		}
	}
	return ""
}
