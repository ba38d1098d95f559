package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Problem is a policy that could not be compiled as written.
type Problem struct {
	Policy ruleset.Policy
	Err    error
}

func (p Problem) Error() string { return fmt.Sprintf("NetworkPolicy %s: %v", p.Policy, p.Err) }

// Compile builds a ruleset from the cluster. Objects must be defaulted (as
// model.Load and model.Cluster.Add do). Invalid policies fail closed and are
// returned as problems; the ruleset is always usable.
func Compile(c *model.Cluster) (*ruleset.Ruleset, []Problem) {
	k := newCompiler(c)
	return k.run()
}

type pod struct {
	obj   *corev1.Pod
	ns    string
	ips   []netip.Addr
	ports []model.ContainerPort
	// peer: the pod can be picked by selectors and is enforced.
	peer bool
}

type compiler struct {
	c        *model.Cluster
	nsLabels map[string]labels.Set
	pods     []pod
	byNS     map[string][]int // peer pods per namespace
	nsNames  []string
	policies []*policy
	selCache map[string][]int
	problems []Problem
}

// policy is one NetworkPolicy with its selectors evaluated.
type policy struct {
	id      int32
	obj     *networkingv1.NetworkPolicy
	types   [2]bool
	rules   [2][]rule
	invalid bool
	// namedIngress lists the named ports its ingress rules use; ingress
	// tables are keyed by their resolution on the pod.
	namedIngress []namedPort
	// egress clauses do not depend on the pod enforcing them.
	egressSpecs []ruleset.ClauseSpec
}

type namedPort struct {
	name  string
	proto ruleset.Proto
}

type rule struct {
	index  int32
	all    bool // no peers listed: every address
	blocks []ruleset.Block
	pods   []int // peer pods picked by selectors
	addrs  []netip.Addr
	ports  []ruleset.PortRange
	named  []namedPort
	any    bool // no ports listed: every protocol and port
}

func newCompiler(c *model.Cluster) *compiler {
	k := &compiler{c: c, nsLabels: map[string]labels.Set{}, byNS: map[string][]int{}, selCache: map[string][]int{}}
	for _, ns := range c.Namespaces {
		k.nsLabels[ns.Name] = labels.Set(ns.Labels)
		k.nsNames = append(k.nsNames, ns.Name)
	}
	for _, p := range c.Pods {
		if _, ok := k.nsLabels[p.Namespace]; !ok {
			// A pod whose Namespace object is missing still has the
			// label the API server would have given it.
			k.nsLabels[p.Namespace] = labels.Set{model.NamespaceNameLabel: p.Namespace}
			k.nsNames = append(k.nsNames, p.Namespace)
		}
	}
	sort.Strings(k.nsNames)
	k.nsNames = slices.Compact(k.nsNames)
	for _, o := range c.Pods {
		p := pod{obj: o, ns: o.Namespace}
		if model.Active(o) {
			p.ips, _ = model.PodIPs(o)
		}
		p.peer = len(p.ips) > 0 && !o.Spec.HostNetwork
		if p.peer {
			p.ports = model.Ports(o)
			k.byNS[o.Namespace] = append(k.byNS[o.Namespace], len(k.pods))
		}
		k.pods = append(k.pods, p)
	}
	return k
}

func (k *compiler) run() (*ruleset.Ruleset, []Problem) {
	pols := make([]ruleset.Policy, len(k.c.Policies))
	// selected[dir][pod] lists the policies selecting the pod in dir.
	selected := [2][][]int32{make([][]int32, len(k.pods)), make([][]int32, len(k.pods))}
	for i, o := range k.c.Policies {
		pols[i] = ruleset.Policy{Namespace: o.Namespace, Name: o.Name}
		p := k.policy(int32(i), o)
		k.policies = append(k.policies, p)
		for _, pi := range k.selectPods(o) {
			for d := range 2 {
				if p.types[d] {
					selected[d][pi] = append(selected[d][pi], p.id)
				}
			}
		}
	}

	tables := map[string]*ruleset.Table{}
	out := make([]ruleset.Pod, len(k.pods))
	var key strings.Builder
	for i := range k.pods {
		p := &k.pods[i]
		out[i] = ruleset.Pod{Namespace: p.ns, Name: p.obj.Name, Node: p.obj.Spec.NodeName, IPs: p.ips, HostNetwork: p.obj.Spec.HostNetwork}
		if !p.peer {
			continue
		}
		for d := range 2 {
			ids := selected[d][i]
			if len(ids) == 0 {
				continue
			}
			key.Reset()
			key.WriteByte(byte('0' + d))
			for _, id := range ids {
				key.WriteString(strconv.Itoa(int(id)))
				key.WriteByte(',')
			}
			var resolved map[namedPort][]uint16
			if d == int(ruleset.Ingress) {
				resolved = k.resolveIngress(ids, p, &key)
			}
			t, ok := tables[key.String()]
			if !ok {
				t = k.table(ruleset.Direction(d), ids, resolved)
				tables[key.String()] = t
			}
			out[i].Tables[d] = t
		}
	}
	return ruleset.New(out, pols), k.problems
}

// resolveIngress resolves the named ports the policies' ingress rules use on
// the pod itself, appending the resolution to the table key.
func (k *compiler) resolveIngress(ids []int32, p *pod, key *strings.Builder) map[namedPort][]uint16 {
	var res map[namedPort][]uint16
	for _, id := range ids {
		for _, np := range k.policies[id].namedIngress {
			if _, done := res[np]; done {
				continue
			}
			if res == nil {
				res = map[namedPort][]uint16{}
			}
			ports := resolve(p.ports, np)
			res[np] = ports
			fmt.Fprintf(key, "|%s/%d=%v", np.name, np.proto, ports)
		}
	}
	return res
}

func resolve(ports []model.ContainerPort, np namedPort) []uint16 {
	var out []uint16
	for _, cp := range ports {
		if cp.Name == np.name && protoOf(cp.Protocol) == np.proto && !slices.Contains(out, cp.Port) {
			out = append(out, cp.Port)
		}
	}
	return out
}

func protoOf(p corev1.Protocol) ruleset.Proto {
	switch p {
	case corev1.ProtocolUDP:
		return ruleset.UDP
	case corev1.ProtocolSCTP:
		return ruleset.SCTP
	}
	return ruleset.TCP
}

// table compiles the union of the policies' rules in one direction.
func (k *compiler) table(dir ruleset.Direction, ids []int32, resolved map[namedPort][]uint16) *ruleset.Table {
	var specs []ruleset.ClauseSpec
	for _, id := range ids {
		p := k.policies[id]
		if dir == ruleset.Egress {
			specs = append(specs, p.egressSpecs...)
			continue
		}
		for _, r := range p.rules[ruleset.Ingress] {
			s := r.spec(id)
			for _, np := range r.named {
				for _, port := range resolved[np] {
					s.Ports = append(s.Ports, ruleset.PortRange{Proto: np.proto, Lo: port, Hi: port})
				}
			}
			if s.AllPorts || len(s.Ports) > 0 {
				specs = append(specs, s)
			}
		}
	}
	return ruleset.NewTable(dir, ids, specs)
}

func (r *rule) spec(policy int32) ruleset.ClauseSpec {
	s := ruleset.ClauseSpec{
		Clause:   ruleset.Clause{Policy: policy, Rule: r.index},
		Blocks:   r.blocks,
		Addrs:    r.addrs,
		AllPorts: r.any,
		Ports:    slices.Clip(r.ports),
	}
	if r.all {
		s.Blocks = everywhere
	}
	return s
}

var everywhere = []ruleset.Block{
	{Prefix: netip.MustParsePrefix("0.0.0.0/0")},
	{Prefix: netip.MustParsePrefix("::/0")},
}

// egressSpecs builds a policy's egress clauses. A rule's named ports are
// resolved on each destination pod the rule's peers cover, one clause per
// resolved port number holding exactly the pods that resolve to it.
func (k *compiler) egressSpecs(p *policy) []ruleset.ClauseSpec {
	var specs []ruleset.ClauseSpec
	for i := range p.rules[ruleset.Egress] {
		r := &p.rules[ruleset.Egress][i]
		if r.any || len(r.ports) > 0 {
			specs = append(specs, r.spec(p.id))
		}
		if len(r.named) == 0 {
			continue
		}
		byPort := map[string]*ruleset.ClauseSpec{}
		var order []string
		for _, pi := range k.coveredPods(r) {
			for _, a := range pi.addrs {
				for _, np := range r.named {
					for _, port := range resolve(k.pods[pi.pod].ports, np) {
						label := fmt.Sprintf("%s=%d/%s", np.name, port, np.proto)
						s, ok := byPort[label]
						if !ok {
							s = &ruleset.ClauseSpec{
								Clause: ruleset.Clause{Policy: p.id, Rule: r.index, NamedPort: label},
								Ports:  []ruleset.PortRange{{Proto: np.proto, Lo: port, Hi: port}},
							}
							byPort[label] = s
							order = append(order, label)
						}
						s.Addrs = append(s.Addrs, a)
					}
				}
			}
		}
		sort.Strings(order)
		for _, label := range order {
			specs = append(specs, *byPort[label])
		}
	}
	return specs
}

type coveredPod struct {
	pod   int
	addrs []netip.Addr
}

// coveredPods lists the peer pods, and which of their addresses, a rule's
// peers include: those its selectors picked, and those inside its ipBlocks.
func (k *compiler) coveredPods(r *rule) []coveredPod {
	var out []coveredPod
	picked := map[int]bool{}
	for _, pi := range r.pods {
		picked[pi] = true
	}
	for i := range k.pods {
		p := &k.pods[i]
		if !p.peer || (!r.all && !picked[i] && len(r.blocks) == 0) {
			continue
		}
		var addrs []netip.Addr
		for _, a := range p.ips {
			if r.all || picked[i] || inBlocks(r.blocks, a) {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) > 0 {
			out = append(out, coveredPod{i, addrs})
		}
	}
	return out
}

func inBlocks(bs []ruleset.Block, a netip.Addr) bool {
	for _, b := range bs {
		if b.Prefix.Contains(a) && !slices.ContainsFunc(b.Except, func(e netip.Prefix) bool { return e.Contains(a) }) {
			return true
		}
	}
	return false
}

// policy evaluates one policy's rules. An invalid policy keeps its
// selection and policy types but admits nothing.
func (k *compiler) policy(id int32, o *networkingv1.NetworkPolicy) *policy {
	p := &policy{id: id, obj: o}
	p.types[ruleset.Ingress] = model.HasType(o, networkingv1.PolicyTypeIngress)
	p.types[ruleset.Egress] = model.HasType(o, networkingv1.PolicyTypeEgress)
	if err := model.ValidatePolicy(o); err != nil {
		// Fail closed: whatever the policy meant, its pods admit nothing
		// in either direction until it is fixed.
		p.invalid = true
		p.types = [2]bool{true, true}
		k.problems = append(k.problems, Problem{Policy: ruleset.Policy{Namespace: o.Namespace, Name: o.Name}, Err: err})
		return p
	}
	if p.types[ruleset.Ingress] {
		for i, r := range o.Spec.Ingress {
			p.rules[ruleset.Ingress] = append(p.rules[ruleset.Ingress], k.rule(o.Namespace, int32(i), r.From, r.Ports))
		}
		for _, r := range p.rules[ruleset.Ingress] {
			for _, np := range r.named {
				if !slices.Contains(p.namedIngress, np) {
					p.namedIngress = append(p.namedIngress, np)
				}
			}
		}
	}
	if p.types[ruleset.Egress] {
		for i, r := range o.Spec.Egress {
			p.rules[ruleset.Egress] = append(p.rules[ruleset.Egress], k.rule(o.Namespace, int32(i), r.To, r.Ports))
		}
		p.egressSpecs = k.egressSpecs(p)
	}
	return p
}

func (k *compiler) rule(ns string, index int32, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) rule {
	r := rule{index: index, all: len(peers) == 0, any: len(ports) == 0}
	for _, pp := range ports {
		proto := protoOf(*pp.Protocol)
		switch {
		case pp.Port == nil:
			r.ports = append(r.ports, ruleset.PortRange{Proto: proto, Lo: 0, Hi: 65535})
		case pp.Port.Type == intstr.String:
			r.named = append(r.named, namedPort{name: pp.Port.StrVal, proto: proto})
		default:
			hi := pp.Port.IntVal
			if pp.EndPort != nil {
				hi = *pp.EndPort
			}
			r.ports = append(r.ports, ruleset.PortRange{Proto: proto, Lo: uint16(pp.Port.IntVal), Hi: uint16(hi)})
		}
	}
	seen := map[int]bool{}
	for _, peer := range peers {
		if b := peer.IPBlock; b != nil {
			blk := ruleset.Block{Prefix: mustCIDR(b.CIDR)}
			for _, e := range b.Except {
				blk.Except = append(blk.Except, mustCIDR(e))
			}
			r.blocks = append(r.blocks, blk)
			continue
		}
		for _, pi := range k.selectPeers(ns, peer.NamespaceSelector, peer.PodSelector) {
			if !seen[pi] {
				seen[pi] = true
				r.pods = append(r.pods, pi)
			}
		}
	}
	slices.Sort(r.pods)
	for _, pi := range r.pods {
		r.addrs = append(r.addrs, k.pods[pi].ips...)
	}
	return r
}

func mustCIDR(s string) netip.Prefix {
	p, err := model.ParseCIDR(s)
	if err != nil {
		panic(fmt.Sprintf("validated CIDR %q does not parse: %v", s, err))
	}
	return p
}

// selectPods returns the pods a policy's spec.podSelector picks in its own
// namespace. An unparsable selector picks every pod there, so that the
// policy fails closed.
func (k *compiler) selectPods(o *networkingv1.NetworkPolicy) []int {
	sel, err := metav1.LabelSelectorAsSelector(&o.Spec.PodSelector)
	if err != nil {
		return k.byNS[o.Namespace]
	}
	return k.match(o.Namespace+"\x00"+sel.String(), []string{o.Namespace}, sel)
}

// selectPeers evaluates one peer's selectors: namespaceSelector alone picks
// every pod of the matching namespaces, podSelector alone pods of the
// policy's namespace, both together the matching pods of the matching
// namespaces.
func (k *compiler) selectPeers(ns string, nsSel, podSel *metav1.LabelSelector) []int {
	namespaces := []string{ns}
	nsKey := ns
	if nsSel != nil {
		s, err := metav1.LabelSelectorAsSelector(nsSel)
		if err != nil {
			return nil
		}
		namespaces = namespaces[:0]
		for _, name := range k.nsNames {
			if s.Matches(k.nsLabels[name]) {
				namespaces = append(namespaces, name)
			}
		}
		nsKey = "ns:" + s.String()
	}
	ps := labels.Everything()
	if podSel != nil {
		s, err := metav1.LabelSelectorAsSelector(podSel)
		if err != nil {
			return nil
		}
		ps = s
	}
	return k.match(nsKey+"\x00"+ps.String(), namespaces, ps)
}

func (k *compiler) match(key string, namespaces []string, sel labels.Selector) []int {
	if r, ok := k.selCache[key]; ok {
		return r
	}
	var out []int
	for _, ns := range namespaces {
		for _, pi := range k.byNS[ns] {
			if sel.Matches(labels.Set(k.pods[pi].obj.Labels)) {
				out = append(out, pi)
			}
		}
	}
	k.selCache[key] = out
	return out
}
