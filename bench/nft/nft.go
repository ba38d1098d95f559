package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/model"
)

// Table is the nftables table the ruleset lives in.
const Table = "xdpbench"

// Stats describes a rendered ruleset.
type Stats struct {
	Sets, Chains, Rules, MapEntries int
}

// Render returns an `nft -f` script that replaces table inet xdpbench.
func Render(c *model.Cluster) (string, Stats, error) { return render(c, "") }

// RenderNode is Render for the node named node: only the pods scheduled on
// it are enforced (the verdict maps hold only them), as an nftables-based
// implementation running on every node enforces its local pods; peers are
// still every pod of the cluster.
func RenderNode(c *model.Cluster, node string) (string, Stats, error) { return render(c, node) }

func render(c *model.Cluster, node string) (string, Stats, error) {
	r := &renderer{c: c, sets: map[string]string{}, chains: map[string]string{}, nsLabels: map[string]labels.Set{},
		peerCache: map[peerKey]peerSet{}, selCache: map[*metav1.LabelSelector]labels.Selector{}}
	for _, ns := range c.Namespaces {
		r.nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	for _, p := range c.Pods {
		if !model.Active(p) || p.Spec.HostNetwork {
			continue
		}
		ips, err := model.PodIPs(p)
		if err != nil {
			return "", Stats{}, err
		}
		for _, a := range ips {
			if a.Is4() {
				r.pods = append(r.pods, pod{p: p, ip: a})
				break
			}
		}
	}
	type entry struct {
		ip    netip.Addr
		chain string
	}
	var ing, eg []entry
	for _, pd := range r.pods {
		if node != "" && pd.p.Spec.NodeName != node {
			continue
		}
		for _, dir := range []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress} {
			var rules []string
			isolated := false
			for _, pol := range c.Policies {
				if pol.Namespace != pd.p.Namespace || !model.HasType(pol, dir) {
					continue
				}
				sel, err := r.selector(&pol.Spec.PodSelector)
				if err != nil || !sel.Matches(labels.Set(pd.p.Labels)) {
					continue
				}
				isolated = true
				if dir == networkingv1.PolicyTypeIngress {
					for ri, rule := range pol.Spec.Ingress {
						rules = append(rules, r.rules(peerKey{pol, dir, ri}, "saddr", rule.From, rule.Ports, pd.p, "accept")...)
					}
				} else {
					for ri, rule := range pol.Spec.Egress {
						rules = append(rules, r.rules(peerKey{pol, dir, ri}, "daddr", rule.To, rule.Ports, nil, "return")...)
					}
				}
			}
			if !isolated {
				continue
			}
			body := strings.Join(rules, "\n") + "\n\t\tdrop"
			name, ok := r.chains[body]
			if !ok {
				prefix := "in"
				if dir == networkingv1.PolicyTypeEgress {
					prefix = "eg"
				}
				name = fmt.Sprintf("%s-%d", prefix, len(r.chains))
				r.chains[body] = name
				r.st.Rules += len(rules) + 1
			}
			if dir == networkingv1.PolicyTypeIngress {
				ing = append(ing, entry{pd.ip, name})
			} else {
				eg = append(eg, entry{pd.ip, name})
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", Table, Table, Table)
	b.WriteString(strings.Join(r.setDefs, ""))
	bodies := make([]string, 0, len(r.chains))
	for body := range r.chains {
		bodies = append(bodies, body)
	}
	sort.Slice(bodies, func(i, j int) bool { return r.chains[bodies[i]] < r.chains[bodies[j]] })
	for _, body := range bodies {
		fmt.Fprintf(&b, "\tchain %s {\n\t\t%s\n\t}\n", r.chains[body], strings.TrimPrefix(body, "\t\t"))
	}
	for _, m := range []struct {
		name string
		es   []entry
	}{{"ingress-pods", ing}, {"egress-pods", eg}} {
		fmt.Fprintf(&b, "\tmap %s {\n\t\ttype ipv4_addr : verdict\n", m.name)
		if len(m.es) > 0 {
			b.WriteString("\t\telements = {")
			for i, e := range m.es {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, "\n\t\t\t%s : jump %s", e.ip, e.chain)
			}
			b.WriteString(" }\n")
		}
		b.WriteString("\t}\n")
		r.st.MapEntries += len(m.es)
	}
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n" +
		"\t\tct state established,related accept\n" +
		"\t\tip saddr vmap @egress-pods\n" +
		"\t\tip daddr vmap @ingress-pods\n\t}\n}\n")
	r.st.Chains = len(r.chains) + 1
	r.st.Sets = len(r.sets)
	return b.String(), r.st, nil
}

type pod struct {
	p  *corev1.Pod
	ip netip.Addr
}

type renderer struct {
	c         *model.Cluster
	pods      []pod
	nsLabels  map[string]labels.Set
	sets      map[string]string // definition body -> name
	setDefs   []string
	chains    map[string]string // body -> name
	peerCache map[peerKey]peerSet
	selCache  map[*metav1.LabelSelector]labels.Selector
	st        Stats
}

// set returns the name of a named set with these elements, defining it
// once.
func (r *renderer) set(typ string, interval bool, elems []string) string {
	flags := ""
	if interval {
		flags = "\t\tflags interval\n"
	}
	body := fmt.Sprintf("\t\ttype %s\n%s\t\telements = { %s }\n", typ, flags, strings.Join(elems, ", "))
	if n, ok := r.sets[body]; ok {
		return n
	}
	n := fmt.Sprintf("s%d", len(r.sets))
	r.sets[body] = n
	r.setDefs = append(r.setDefs, fmt.Sprintf("\tset %s {\n%s\t}\n", n, body))
	return n
}

// rules renders one NetworkPolicy rule. dest is the enforcing pod for
// ingress (named ports resolve on it); for egress named ports resolve on
// each peer pod.
func (r *renderer) rules(k peerKey, field string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, dest *corev1.Pod, verdict string) []string {
	ps := r.peers(k, field, peers)
	if ps.match == "-" {
		return nil // admits no IPv4 peer
	}
	peerMatch, peerPods := ps.match, ps.pods
	if len(ports) == 0 {
		return []string{"\t\t" + peerMatch + verdict}
	}
	var numeric []string
	named := map[string]bool{}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		pn := strings.ToLower(string(proto))
		switch {
		case p.Port == nil:
			numeric = append(numeric, pn+" . 0-65535")
		case p.Port.Type == intstr.String: // named
			if dest != nil {
				for _, cp := range model.Ports(dest) {
					if cp.Name == p.Port.StrVal && cp.Protocol == proto {
						numeric = append(numeric, fmt.Sprintf("%s . %d", pn, cp.Port))
					}
				}
			} else {
				named[p.Port.StrVal+"/"+string(proto)] = true
			}
		case p.EndPort != nil && *p.EndPort > p.Port.IntVal:
			numeric = append(numeric, fmt.Sprintf("%s . %d-%d", pn, p.Port.IntVal, *p.EndPort))
		default:
			numeric = append(numeric, fmt.Sprintf("%s . %d", pn, p.Port.IntVal))
		}
	}
	var out []string
	if len(numeric) > 0 {
		slices.Sort(numeric)
		numeric = slices.Compact(numeric)
		s := r.set("inet_proto . inet_service", true, numeric)
		out = append(out, fmt.Sprintf("\t\t%smeta l4proto . th dport @%s %s", peerMatch, s, verdict))
	}
	if len(named) > 0 {
		// Egress named ports: resolved on each peer pod.
		cand := peerPods
		if len(peers) == 0 {
			cand = r.pods
		}
		var elems []string
		for _, pd := range cand {
			for _, cp := range model.Ports(pd.p) {
				if named[cp.Name+"/"+string(cp.Protocol)] {
					elems = append(elems, fmt.Sprintf("%s . %s . %d", pd.ip, strings.ToLower(string(cp.Protocol)), cp.Port))
				}
			}
		}
		if len(elems) > 0 {
			slices.Sort(elems)
			elems = slices.Compact(elems)
			s := r.set("ipv4_addr . inet_proto . inet_service", false, elems)
			out = append(out, fmt.Sprintf("\t\tip daddr . meta l4proto . th dport @%s %s", s, verdict))
		}
	}
	return out
}

// peerKey identifies one rule's peer list.
type peerKey struct {
	pol  *networkingv1.NetworkPolicy
	dir  networkingv1.PolicyType
	rule int
}

type peerSet struct {
	match string // "ip saddr @sN " or "" (any peer); "-" when it admits no IPv4 peer
	pods  []pod
}

// peers renders a rule's peer list once.
func (r *renderer) peers(k peerKey, field string, peers []networkingv1.NetworkPolicyPeer) peerSet {
	if ps, ok := r.peerCache[k]; ok {
		return ps
	}
	var ps peerSet
	if len(peers) > 0 {
		var ranges [][2]uint32
		for _, pr := range peers {
			if pr.IPBlock != nil {
				ranges = append(ranges, blockRanges(pr.IPBlock)...)
				continue
			}
			for _, pd := range r.pods {
				if r.matchPeer(k.pol.Namespace, pr, pd.p) {
					ps.pods = append(ps.pods, pd)
					v := u32(pd.ip)
					ranges = append(ranges, [2]uint32{v, v})
				}
			}
		}
		ranges = merge(ranges)
		if len(ranges) == 0 {
			ps.match = "-"
		} else {
			var elems []string
			for _, rg := range ranges {
				if rg[0] == rg[1] {
					elems = append(elems, ip4(rg[0]))
				} else {
					elems = append(elems, ip4(rg[0])+"-"+ip4(rg[1]))
				}
			}
			ps.match = fmt.Sprintf("ip %s @%s ", field, r.set("ipv4_addr", true, elems))
		}
	}
	r.peerCache[k] = ps
	return ps
}

// matchPeer reports whether a pod/namespace-selector peer of a policy in
// namespace polNS picks pod p.
func (r *renderer) matchPeer(polNS string, pr networkingv1.NetworkPolicyPeer, p *corev1.Pod) bool {
	if pr.NamespaceSelector == nil {
		if p.Namespace != polNS {
			return false
		}
	} else {
		sel, err := r.selector(pr.NamespaceSelector)
		if err != nil || !sel.Matches(r.nsLabels[p.Namespace]) {
			return false
		}
	}
	if pr.PodSelector == nil {
		return true
	}
	sel, err := r.selector(pr.PodSelector)
	return err == nil && sel.Matches(labels.Set(p.Labels))
}

func (r *renderer) selector(s *metav1.LabelSelector) (labels.Selector, error) {
	if sel, ok := r.selCache[s]; ok {
		return sel, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, err
	}
	r.selCache[s] = sel
	return sel, nil
}

// blockRanges returns an ipBlock's IPv4 addresses as ranges: the CIDR
// minus its excepts.
func blockRanges(b *networkingv1.IPBlock) [][2]uint32 {
	p, err := model.ParseCIDR(b.CIDR)
	if err != nil || !p.Addr().Is4() {
		return nil
	}
	out := [][2]uint32{prefixRange(p)}
	for _, e := range b.Except {
		ep, err := model.ParseCIDR(e)
		if err != nil || !ep.Addr().Is4() {
			continue
		}
		hole := prefixRange(ep)
		var next [][2]uint32
		for _, rg := range out {
			if hole[1] < rg[0] || hole[0] > rg[1] {
				next = append(next, rg)
				continue
			}
			if hole[0] > rg[0] {
				next = append(next, [2]uint32{rg[0], hole[0] - 1})
			}
			if hole[1] < rg[1] {
				next = append(next, [2]uint32{hole[1] + 1, rg[1]})
			}
		}
		out = next
	}
	return out
}

func prefixRange(p netip.Prefix) [2]uint32 {
	p = p.Masked()
	lo := u32(p.Addr())
	size := uint64(1) << (32 - p.Bits())
	return [2]uint32{lo, uint32(uint64(lo) + size - 1)}
}

// merge sorts ranges and joins overlapping or adjacent ones.
func merge(rs [][2]uint32) [][2]uint32 {
	sort.Slice(rs, func(i, j int) bool { return rs[i][0] < rs[j][0] })
	var out [][2]uint32
	for _, rg := range rs {
		if n := len(out); n > 0 && uint64(rg[0]) <= uint64(out[n-1][1])+1 {
			out[n-1][1] = max(out[n-1][1], rg[1])
			continue
		}
		out = append(out, rg)
	}
	return out
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func ip4(v uint32) string {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}
