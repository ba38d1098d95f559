package compile

import (
	"fmt"
	"maps"
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
	return newCompiler(c).run()
}

type pod struct {
	obj   *corev1.Pod
	ns    string
	ips   []netip.Addr
	ports []model.ContainerPort
	// peer: the pod can be picked by selectors and is enforced.
	peer  bool
	ident uint32
}

// identity is the class of peer pods that no selector and no named port
// can tell apart: same namespace, same labels, same container ports.
type identity struct {
	ns     string
	labels labels.Set
	ports  []model.ContainerPort
	// pods are the pods of the identity; an incremental change may
	// leave it empty (it then stays until the next full compile).
	pods []int
}

type compiler struct {
	c        *model.Cluster
	nsLabels map[string]labels.Set
	pods     []pod
	idents   []identity
	addrs    []addrPod // peer pod addresses, sorted; built on first use
	named    map[namedPort][]portIdents
	byNS     map[string][]uint32 // identities per namespace
	nsNames  []string
	policies []*policy
	selCache map[string]*selection
	problems []Problem

	identByKey map[string]uint32
	pols       []ruleset.Policy
	selected   [2][][]int32 // per direction and pod: the policies selecting it
	tables     map[string]*tableEntry
	rs         *ruleset.Ruleset

	// Changes to addrs since it was built or merged
	// (incremental_pods.go): new entries, and entries that are gone.
	addrsNew  []addrPod
	addrsGone map[addrPod]bool
	// inc is what the incremental path adds (incremental.go).
	inc *incState
}

// selection is one evaluated selector: the identities it picks among the
// namespaces it covers.
type selection struct {
	namespaces []string
	sel        labels.Selector
	// nsSel picks the namespaces (nil: the policy's own namespace only).
	nsSel  labels.Selector
	idents []uint32 // ascending
	// has is idents as a bitset, built on first use by picks (the
	// incremental path asks often) and dropped when idents change.
	has []uint64
}

// picks reports whether the selection picks identity id.
func (s *selection) picks(id uint32) bool {
	if s.has == nil {
		s.has = make([]uint64, 1, 1+len(s.idents)/32)
		for _, x := range s.idents {
			for int(x/64) >= len(s.has) {
				s.has = append(s.has, 0)
			}
			s.has[x/64] |= 1 << (x % 64)
		}
	}
	return int(id/64) < len(s.has) && s.has[id/64]&(1<<(id%64)) != 0
}

// setIdents replaces the identities the selection picks (a new list:
// rules built from the old one keep it).
func (s *selection) setIdents(ids []uint32) { s.idents, s.has = ids, nil }

// policy is one NetworkPolicy with its selectors evaluated.
type policy struct {
	id  int32
	obj *networkingv1.NetworkPolicy // nil: deleted (incremental.go)
	// podSel is spec.podSelector, nil when it does not parse (then the
	// policy selects every pod of its namespace, failing closed).
	podSel  labels.Selector
	types   [2]bool
	rules   [2][]rule
	invalid bool
	// namedIngress lists the named ports its ingress rules use; ingress
	// tables are keyed by their resolution on the pod.
	namedIngress []namedPort
	// egress clauses do not depend on the pod enforcing them.
	egressSpecs []ruleset.ClauseSpec
	egressMeta  []clauseMeta
	egressStale bool // identities were added since egressSpecs was built
}

type namedPort struct {
	name  string
	proto ruleset.Proto
}

type rule struct {
	index  int32
	all    bool // no peers listed: every address
	blocks []ruleset.Block
	// idents are the identities its selectors pick, ascending; when
	// stale, identList computes them again from sels.
	idents []uint32
	stale  bool
	sels   []*selection
	ports  []ruleset.PortRange
	named  []namedPort
	any    bool // no ports listed: every protocol and port
}

func newCompiler(c *model.Cluster) *compiler {
	k := &compiler{c: c, nsLabels: map[string]labels.Set{}, byNS: map[string][]uint32{}, selCache: map[string]*selection{}, identByKey: map[string]uint32{}}
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
			p.ident, _ = k.identity(o.Namespace, o.Labels, p.ports)
			k.idents[p.ident].pods = append(k.idents[p.ident].pods, len(k.pods))
		}
		k.pods = append(k.pods, p)
	}
	return k
}

// identity finds or creates the identity of a peer pod.
func (k *compiler) identity(ns string, lbls map[string]string, ports []model.ContainerPort) (id uint32, created bool) {
	key := identKey(ns, lbls, ports)
	if id, ok := k.identByKey[key]; ok {
		return id, false
	}
	id = uint32(len(k.idents))
	k.identByKey[key] = id
	k.idents = append(k.idents, identity{ns: ns, labels: labels.Set(lbls), ports: ports})
	k.byNS[ns] = append(k.byNS[ns], id)
	return id, true
}

// identKey is what tells identities apart: namespace, labels and ports.
func identKey(ns string, lbls map[string]string, ports []model.ContainerPort) string {
	var key strings.Builder
	key.WriteString(ns)
	key.WriteByte(0)
	key.WriteString(labels.Set(lbls).String())
	for _, cp := range ports {
		key.WriteByte(0)
		key.WriteString(cp.Name)
		key.WriteByte('=')
		key.WriteString(strconv.Itoa(int(cp.Port)))
		key.WriteString(string(cp.Protocol))
	}
	return key.String()
}

func (k *compiler) run() (*ruleset.Ruleset, []Problem) {
	k.pols = make([]ruleset.Policy, len(k.c.Policies))
	k.selected = [2][][]int32{make([][]int32, len(k.pods)), make([][]int32, len(k.pods))}
	for i, o := range k.c.Policies {
		k.pols[i] = ruleset.Policy{Namespace: o.Namespace, Name: o.Name}
		p := k.policy(int32(i), o)
		k.policies = append(k.policies, p)
		for _, id := range k.selectPods(o) {
			for _, pi := range k.idents[id].pods {
				for d := range 2 {
					if p.types[d] {
						k.selected[d][pi] = append(k.selected[d][pi], p.id)
					}
				}
			}
		}
	}
	k.tables = map[string]*tableEntry{}
	out := make([]ruleset.Pod, len(k.pods))
	for i := range k.pods {
		p := &k.pods[i]
		out[i] = ruleset.Pod{Namespace: p.ns, Name: p.obj.Name, Node: p.obj.Spec.NodeName, IPs: p.ips, HostNetwork: p.obj.Spec.HostNetwork}
		if p.peer {
			out[i].Tables = k.podTables(i)
		}
	}
	ident := make([]int32, len(k.pods))
	for i := range k.pods {
		ident[i] = ruleset.NoIdentity
		if k.pods[i].peer {
			ident[i] = int32(k.pods[i].ident)
		}
	}
	k.rs = ruleset.New(out, k.pols, ident)
	k.rs.SetServiceIPs(serviceIPs(k.c.Services))
	return k.rs, k.problems
}

// serviceIPs collects the ClusterIPs of every Service. A Service whose
// addresses do not parse (model.Load rejects those) contributes none: egress
// to it is then decided at the leaving hook like any non-pod address, which
// fails closed for pods whose egress is isolated.
func serviceIPs(svcs []*corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, s := range svcs {
		ips, _ := model.ClusterIPs(s)
		out = append(out, ips...)
	}
	return out
}

// tableEntry is a table with what its clauses were made from, so that a new
// identity can be added to it without recompiling.
type tableEntry struct {
	t    *ruleset.Table
	meta []clauseMeta
	// What it was built from (k.table's arguments), to build it again.
	dir      ruleset.Direction
	ids      []int32
	resolved map[namedPort][]uint16
}

// clauseMeta says which identities a clause picks: those its rule picks,
// and for a named-port clause only those on which the port resolves to
// port.
type clauseMeta struct {
	r     *rule
	named bool
	np    namedPort
	port  uint16
}

// podTables finds or builds the pod's table in each direction, keyed by its
// policy set (and, for ingress, the resolution of the named ports those
// policies use on the pod).
func (k *compiler) podTables(i int) [2]*ruleset.Table {
	var out [2]*ruleset.Table
	var key strings.Builder
	for d := range 2 {
		ids := k.selected[d][i]
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
			resolved = k.resolveIngress(ids, &k.pods[i], &key)
		}
		e, ok := k.tables[key.String()]
		if !ok {
			e = k.table(ruleset.Direction(d), ids, resolved)
			k.tables[key.String()] = e
		}
		out[d] = e.t
	}
	return out
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
func (k *compiler) table(dir ruleset.Direction, ids []int32, resolved map[namedPort][]uint16) *tableEntry {
	var specs []ruleset.ClauseSpec
	var meta []clauseMeta
	for _, id := range ids {
		p := k.policies[id]
		if dir == ruleset.Egress {
			if p.egressStale {
				p.egressSpecs, p.egressMeta = k.egressSpecs(p)
				p.egressStale = false
			}
			specs = append(specs, p.egressSpecs...)
			meta = append(meta, p.egressMeta...)
			continue
		}
		for i := range p.rules[ruleset.Ingress] {
			r := &p.rules[ruleset.Ingress][i]
			s := r.spec(id)
			for _, np := range r.named {
				for _, port := range resolved[np] {
					s.Ports = append(s.Ports, ruleset.PortRange{Proto: np.proto, Lo: port, Hi: port})
				}
			}
			if s.AllPorts || len(s.Ports) > 0 {
				specs = append(specs, s)
				meta = append(meta, clauseMeta{r: r})
			}
		}
	}
	return &tableEntry{t: ruleset.NewTable(dir, ids, specs), meta: meta, dir: dir, ids: ids, resolved: resolved}
}

func (r *rule) spec(policy int32) ruleset.ClauseSpec {
	s := ruleset.ClauseSpec{
		Clause:   ruleset.Clause{Policy: policy, Rule: r.index},
		Idents:   r.identList(),
		Blocks:   r.blocks,
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
// resolved port number holding exactly the pods that resolve to it: whole
// identities for pods its selectors picked (an identity fixes the ports),
// single addresses for pods inside its ipBlocks.
func (k *compiler) egressSpecs(p *policy) ([]ruleset.ClauseSpec, []clauseMeta) {
	var specs []ruleset.ClauseSpec
	var meta []clauseMeta
	for i := range p.rules[ruleset.Egress] {
		r := &p.rules[ruleset.Egress][i]
		if r.any || len(r.ports) > 0 {
			specs = append(specs, r.spec(p.id))
			meta = append(meta, clauseMeta{r: r})
		}
		if len(r.named) == 0 {
			continue
		}
		byPort := map[resolved]*ruleset.ClauseSpec{}
		clause := func(np namedPort, port uint16) *ruleset.ClauseSpec {
			s, ok := byPort[resolved{np, port}]
			if !ok {
				s = &ruleset.ClauseSpec{
					Clause: ruleset.Clause{Policy: p.id, Rule: r.index, NamedPort: fmt.Sprintf("%s=%d/%s", np.name, port, np.proto)},
					Ports:  []ruleset.PortRange{{Proto: np.proto, Lo: port, Hi: port}},
				}
				byPort[resolved{np, port}] = s
			}
			return s
		}
		for _, np := range r.named {
			for _, pi := range k.resolvedIdents(np) {
				ids := pi.idents
				if !r.all {
					ids = intersect(r.identList(), ids)
				}
				if len(ids) > 0 {
					s := clause(np, pi.port)
					s.Idents = append(s.Idents, ids...)
				}
			}
		}
		if !r.all {
			for _, ap := range k.podsInBlocks(r.blocks) {
				pod := &k.pods[ap.pod]
				if r.picks(pod.ident) {
					continue
				}
				for _, np := range r.named {
					for _, port := range resolve(pod.ports, np) {
						s := clause(np, port)
						s.Addrs = append(s.Addrs, ap.addr)
					}
				}
			}
		}
		keys := slices.SortedFunc(maps.Keys(byPort), func(a, b resolved) int {
			return strings.Compare(byPort[a].Clause.NamedPort, byPort[b].Clause.NamedPort)
		})
		for _, key := range keys {
			specs = append(specs, *byPort[key])
			meta = append(meta, clauseMeta{r: r, named: true, np: key.np, port: key.port})
		}
	}
	return specs, meta
}

type resolved struct {
	np   namedPort
	port uint16
}

// portIdents are the identities on which a named port resolves to port.
type portIdents struct {
	port   uint16
	idents []uint32
}

// resolvedIdents partitions the identities by what np resolves to on them
// (identities on which it does not resolve are left out), computed once per
// compile.
func (k *compiler) resolvedIdents(np namedPort) []portIdents {
	if r, ok := k.named[np]; ok {
		return r
	}
	var out []portIdents
	for id := range k.idents {
		// Identities emptied by incremental changes are kept: a pod may
		// join them again, and tables treat them as any other.
		for _, port := range resolve(k.idents[id].ports, np) {
			i := slices.IndexFunc(out, func(p portIdents) bool { return p.port == port })
			if i < 0 {
				i = len(out)
				out = append(out, portIdents{port: port})
			}
			out[i].idents = append(out[i].idents, uint32(id))
		}
	}
	if k.named == nil {
		k.named = map[namedPort][]portIdents{}
	}
	k.named[np] = out
	return out
}

// intersect returns the elements of two ascending lists present in both.
func intersect(a, b []uint32) []uint32 {
	var out []uint32
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

type addrPod struct {
	addr netip.Addr
	pod  int
}

// podsInBlocks lists the peer pod addresses inside the blocks (minus their
// holes), using the sorted address index.
func (k *compiler) podsInBlocks(bs []ruleset.Block) []addrPod {
	if len(bs) == 0 {
		return nil
	}
	if k.addrs == nil {
		for i := range k.pods {
			if k.pods[i].peer {
				for _, a := range k.pods[i].ips {
					k.addrs = append(k.addrs, addrPod{a, i})
				}
			}
		}
		slices.SortFunc(k.addrs, func(x, y addrPod) int { return x.addr.Compare(y.addr) })
	}
	var out []addrPod
	for _, b := range bs {
		i, _ := slices.BinarySearchFunc(k.addrs, b.Prefix.Addr(), func(x addrPod, a netip.Addr) int { return x.addr.Compare(a) })
		for ; i < len(k.addrs) && b.Prefix.Contains(k.addrs[i].addr); i++ {
			if inBlocks([]ruleset.Block{b}, k.addrs[i].addr) && !k.addrsGone[k.addrs[i]] && !slices.Contains(out, k.addrs[i]) {
				out = append(out, k.addrs[i])
			}
		}
		for _, ap := range k.addrsNew {
			if inBlocks([]ruleset.Block{b}, ap.addr) && !slices.Contains(out, ap) {
				out = append(out, ap)
			}
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
	if sel, err := metav1.LabelSelectorAsSelector(&o.Spec.PodSelector); err == nil {
		p.podSel = sel
	}
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
		p.egressSpecs, p.egressMeta = k.egressSpecs(p)
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
	for _, peer := range peers {
		if b := peer.IPBlock; b != nil {
			blk := ruleset.Block{Prefix: mustCIDR(b.CIDR)}
			for _, e := range b.Except {
				blk.Except = append(blk.Except, mustCIDR(e))
			}
			r.blocks = append(r.blocks, blk)
			continue
		}
		if sel := k.selectPeers(ns, peer.NamespaceSelector, peer.PodSelector); sel != nil {
			r.sels = append(r.sels, sel)
			r.idents = append(r.idents, sel.idents...)
		}
	}
	slices.Sort(r.idents)
	r.idents = slices.Compact(r.idents)
	return r
}

// identList returns the identities the rule's selectors pick, ascending.
func (r *rule) identList() []uint32 {
	if r.stale {
		var ids []uint32
		for _, s := range r.sels {
			ids = append(ids, s.idents...)
		}
		slices.Sort(ids)
		r.idents, r.stale = slices.Compact(ids), false
	}
	return r.idents
}

// picks reports whether one of the rule's selectors picks identity id.
func (r *rule) picks(id uint32) bool {
	for _, s := range r.sels {
		if s.picks(id) {
			return true
		}
	}
	return false
}

func mustCIDR(s string) netip.Prefix {
	p, err := model.ParseCIDR(s)
	if err != nil {
		panic(fmt.Sprintf("validated CIDR %q does not parse: %v", s, err))
	}
	return p
}

// selectPods returns the identities a policy's spec.podSelector picks in
// its own namespace. An unparsable selector picks every pod there, so that
// the policy fails closed.
func (k *compiler) selectPods(o *networkingv1.NetworkPolicy) []uint32 {
	sel, err := metav1.LabelSelectorAsSelector(&o.Spec.PodSelector)
	if err != nil {
		return k.byNS[o.Namespace]
	}
	return k.match(o.Namespace+"\x00"+sel.String(), []string{o.Namespace}, nil, sel).idents
}

// selectPeers evaluates one peer's selectors: namespaceSelector alone picks
// every pod of the matching namespaces, podSelector alone pods of the
// policy's namespace, both together the matching pods of the matching
// namespaces.
func (k *compiler) selectPeers(ns string, nsSel, podSel *metav1.LabelSelector) *selection {
	namespaces := []string{ns}
	nsKey := ns
	var nss labels.Selector
	if nsSel != nil {
		s, err := metav1.LabelSelectorAsSelector(nsSel)
		if err != nil {
			return nil
		}
		namespaces = nil
		for _, name := range k.nsNames {
			if s.Matches(k.nsLabels[name]) {
				namespaces = append(namespaces, name)
			}
		}
		nsKey = "ns:" + s.String()
		nss = s
	}
	ps := labels.Everything()
	if podSel != nil {
		s, err := metav1.LabelSelectorAsSelector(podSel)
		if err != nil {
			return nil
		}
		ps = s
	}
	return k.match(nsKey+"\x00"+ps.String(), namespaces, nss, ps)
}

func (k *compiler) match(key string, namespaces []string, nsSel, sel labels.Selector) *selection {
	if r, ok := k.selCache[key]; ok {
		return r
	}
	r := &selection{namespaces: namespaces, sel: sel, nsSel: nsSel}
	for _, ns := range namespaces {
		for _, id := range k.byNS[ns] {
			if sel.Matches(k.idents[id].labels) {
				r.idents = append(r.idents, id)
			}
		}
	}
	slices.Sort(r.idents) // kept sorted by incremental changes
	k.selCache[key] = r
	return r
}
