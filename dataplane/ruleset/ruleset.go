package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
)

// Direction is the side of a pod a verdict is taken for.
type Direction uint8

const (
	// Ingress is traffic entering the pod; the peer is the source.
	Ingress Direction = iota
	// Egress is traffic leaving the pod; the peer is the destination.
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Proto is an IP protocol number.
type Proto uint8

// The protocols NetworkPolicy ports can name. Any other protocol (ICMP, …)
// is matched only by rules that list no ports.
const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProto parses TCP, UDP or SCTP (any case).
func ParseProto(s string) (Proto, error) {
	switch s {
	case "TCP", "tcp":
		return TCP, nil
	case "UDP", "udp":
		return UDP, nil
	case "SCTP", "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: use TCP, UDP or SCTP", s)
}

// protoIndex maps a protocol to its port table.
func protoIndex(p Proto) int {
	switch p {
	case TCP:
		return 0
	case UDP:
		return 1
	case SCTP:
		return 2
	}
	return 3
}

// PodID indexes Ruleset.Pods.
type PodID int32

// Pod is one pod as the ruleset sees it.
type Pod struct {
	Namespace, Name, Node string
	IPs                   []netip.Addr
	// HostNetwork pods share the node's addresses; they are never enforced
	// and never selected as peers.
	HostNetwork bool
	// Tables holds the pod's table per Direction; nil means no policy
	// selects the pod in that direction (it is not isolated).
	Tables [2]*Table
}

// Policy names a NetworkPolicy.
type Policy struct{ Namespace, Name string }

func (p Policy) String() string { return p.Namespace + "/" + p.Name }

// Ruleset is one compiled, immutable snapshot of the cluster's policy.
type Ruleset struct {
	// Generation is assigned by Publisher.Publish and increases with every
	// snapshot.
	Generation uint64
	Pods       []Pod
	Policies   []Policy
	byIP       addrIndex[PodID]
	// ident is the identity of every pod, NoIdentity for pods that are
	// never peers (hostNetwork, no address).
	ident []int32
	// services holds the Service ClusterIPs: egress to them is deferred to
	// the backend's entering hook (see IsServiceIP).
	services addrIndex[struct{}]
}

// SetServiceIPs records the cluster's Service ClusterIPs (unmapped). Call it
// before Publish: a published Ruleset is immutable.
func (r *Ruleset) SetServiceIPs(ips []netip.Addr) {
	r.services = addrIndex[struct{}]{}
	for _, a := range ips {
		r.services.put(a.Unmap(), struct{}{})
	}
}

// IsServiceIP reports whether a is a Service ClusterIP. A flow leaving a
// pod for one has not been DNATed yet (kube-proxy does that in the node's
// prerouting, after the leaving hook), so its real destination, the one
// egress policy names, is known only at the backend's entering hook. It
// never allocates.
func (r *Ruleset) IsServiceIP(a netip.Addr) bool {
	_, ok := r.services.get(a.Unmap())
	return ok
}

// DefersEgress reports whether egress may be decided at a destination's
// entering hook: the snapshot has Service ClusterIPs and the egress of some
// (non-hostNetwork) pod is isolated. Then the entering hook of every pod,
// isolated for ingress or not, must send new flows to the slow path, or a
// deferred flow would reach a non-isolated backend unchecked. It walks the
// pods (for the control loop, not the hot path).
func (r *Ruleset) DefersEgress() bool {
	if r == nil || r.services.len() == 0 {
		return false
	}
	for i := range r.Pods {
		if !r.Pods[i].HostNetwork && r.Pods[i].Tables[Egress] != nil {
			return true
		}
	}
	return false
}

// ServiceIPs lists the Service ClusterIPs, sorted (allocates; for tools).
func (r *Ruleset) ServiceIPs() []netip.Addr {
	var out []netip.Addr
	for _, m := range r.services.shards {
		for a := range m {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Identity returns the identity of the pod owning addr, or NoIdentity.
func (r *Ruleset) Identity(addr netip.Addr) int32 {
	if id, ok := r.byIP.get(addr); ok {
		return r.ident[id]
	}
	return NoIdentity
}

// PodByIP finds the pod that owns an address (IPv4-mapped addresses are
// unmapped).
func (r *Ruleset) PodByIP(a netip.Addr) (PodID, bool) {
	return r.byIP.get(a.Unmap())
}

// Tables reports how many distinct tables the pods share.
func (r *Ruleset) Tables() int {
	seen := map[*Table]bool{}
	for i := range r.Pods {
		for _, t := range r.Pods[i].Tables {
			if t != nil {
				seen[t] = true
			}
		}
	}
	return len(seen)
}

// Derive returns a snapshot with the same pods (by index, with the same
// addresses) and policies but new tables, and with pod's identity changed.
// r is not modified.
func (r *Ruleset) Derive(pods []Pod, pod PodID, ident int32) *Ruleset {
	n := *r
	n.Generation = 0
	n.Pods = pods
	n.ident = slices.Clone(r.ident)
	n.ident[pod] = ident
	return &n
}

// NoPod is the PodID of no pod: in a Patch, it unmaps an address.
const NoPod PodID = -1

// Patch is what changes between a snapshot and the next one derived from
// it by Apply; the compiler's incremental path describes single-object
// changes this way.
type Patch struct {
	// Pods is the complete new pod list (a new slice: the base's is
	// shared with readers). It may be longer than the base's; a deleted
	// pod may stay as a tombstone (a zero Pod that no address maps to).
	Pods []Pod
	// Policies, when not nil, replaces the policy names.
	Policies []Policy
	// Idents sets the identity of pods; pods beyond the base's list have
	// NoIdentity unless set here.
	Idents map[PodID]int32
	// Addrs maps each address to its new owner, or to NoPod to unmap it.
	Addrs map[netip.Addr]PodID
	// Services adds (true) or removes (false) Service ClusterIPs.
	Services map[netip.Addr]bool
}

// Apply returns a snapshot derived from r by p. r is not modified, and the
// result shares with it everything p does not change: the address index
// and the Service addresses are copied only in the shards p touches.
func (r *Ruleset) Apply(p Patch) *Ruleset {
	n := *r
	n.Generation = 0
	n.Pods = p.Pods
	if p.Policies != nil {
		n.Policies = p.Policies
	}
	if len(p.Idents) > 0 || len(p.Pods) != len(r.ident) {
		n.ident = make([]int32, len(p.Pods))
		m := copy(n.ident, r.ident)
		for i := m; i < len(n.ident); i++ {
			n.ident[i] = NoIdentity
		}
		for id, v := range p.Idents {
			n.ident[id] = v
		}
	}
	if len(p.Addrs) > 0 {
		e := addrEdit[PodID]{x: &n.byIP}
		for a, id := range p.Addrs {
			if id == NoPod {
				e.del(a)
			} else {
				e.set(a, id)
			}
		}
	}
	if len(p.Services) > 0 {
		e := addrEdit[struct{}]{x: &n.services}
		for a, add := range p.Services {
			if add {
				e.set(a.Unmap(), struct{}{})
			} else {
				e.del(a.Unmap())
			}
		}
	}
	return &n
}

// Reason says why a verdict came out as it did.
type Reason uint8

const (
	// NoSnapshot: nothing published yet; fail closed.
	NoSnapshot Reason = iota
	// UnknownPod: the enforcement point is not in this snapshot; fail closed.
	UnknownPod
	// NotIsolated: no policy selects the pod in this direction.
	NotIsolated
	// HostNetwork: the pod uses the node's network and is not enforced.
	HostNetwork
	// RuleMatched: a rule of a selecting policy admits the flow.
	RuleMatched
	// NoRuleMatched: policies select the pod but none of their rules admit
	// the flow.
	NoRuleMatched
	// Deferred: the destination is a Service ClusterIP; the flow is let
	// out of the pod and its egress is decided at the backend's entering
	// hook, after DNAT, against the backend pod.
	Deferred
	// Related: an ICMP or ICMPv6 error about a flow allowed here (as
	// conntrack's RELATED): it travels as that flow's replies do.
	Related
	// NoFirstFragment: a later fragment whose datagram's first fragment,
	// and so its ports and flow, was not seen; fail closed.
	NoFirstFragment
)

var reasonNames = [...]string{"no-snapshot", "unknown-pod", "not-isolated", "host-network", "rule-matched", "no-rule-matched", "deferred-to-destination", "related", "no-first-fragment"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Verdict is the decision for one flow at one enforcement point, and enough
// to explain it without allocating: the table consulted and the first clause
// that matched.
type Verdict struct {
	Allowed bool
	Reason  Reason
	Table   *Table
	// Clause indexes Table.Clauses when Reason is RuleMatched, else -1.
	Clause int32
}

// Verdict decides a flow at the enforcement point (pod, dir) against the
// peer address, protocol and port. It never allocates or blocks. A nil
// Ruleset denies everything.
func (r *Ruleset) Verdict(pod PodID, dir Direction, peer netip.Addr, proto Proto, port uint16) Verdict {
	if r == nil {
		return Verdict{Reason: NoSnapshot, Clause: -1}
	}
	if pod < 0 || int(pod) >= len(r.Pods) {
		return Verdict{Reason: UnknownPod, Clause: -1}
	}
	p := &r.Pods[pod]
	if p.HostNetwork {
		return Verdict{Allowed: true, Reason: HostNetwork, Clause: -1}
	}
	t := p.Tables[dir&1]
	if t == nil {
		return Verdict{Allowed: true, Reason: NotIsolated, Clause: -1}
	}
	peer = peer.Unmap()
	c := t.Match(r.Identity(peer), peer, proto, port)
	if c < 0 {
		return Verdict{Reason: NoRuleMatched, Table: t, Clause: -1}
	}
	return Verdict{Allowed: true, Reason: RuleMatched, Table: t, Clause: c}
}

// Publisher holds the current snapshot for lock-free readers. Readers load
// it once per batch; Go's garbage collector is the grace period.
type Publisher struct {
	cur atomic.Pointer[Ruleset]
	gen atomic.Uint64
}

// Load returns the current snapshot, nil before the first Publish.
func (p *Publisher) Load() *Ruleset { return p.cur.Load() }

// Publish stamps r with the next generation and makes it current. r must
// not be modified afterwards, nor published twice.
func (p *Publisher) Publish(r *Ruleset) uint64 {
	g := p.gen.Add(1)
	r.Generation = g
	p.cur.Store(r)
	return g
}

// New assembles a snapshot from pods whose Tables are set, the policies
// their clauses index, and the identity of every pod (NoIdentity for pods
// that are never peers). Addresses claimed by several pods go to the first
// non-hostNetwork pod in order.
func New(pods []Pod, policies []Policy, ident []int32) *Ruleset {
	r := &Ruleset{Pods: pods, Policies: policies, ident: ident}
	for i := range pods {
		for _, a := range pods[i].IPs {
			if prev, ok := r.byIP.get(a); ok && !pods[prev].HostNetwork {
				continue
			}
			r.byIP.put(a, PodID(i))
		}
	}
	return r
}
