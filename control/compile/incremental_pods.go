package compile

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// setPod adds pod o or replaces the pod of that name: its addresses
// (status.podIPs, or none once it has terminated), labels, ports, node.
func (k *compiler) setPod(o *corev1.Pod) {
	in := k.inc
	key := o.Namespace + "/" + o.Name
	pi, ok := in.podByName[key]
	if !ok {
		if n := len(in.freePods); n > 0 {
			pi, in.freePods = in.freePods[n-1], in.freePods[:n-1]
		} else {
			pi = len(k.pods)
			k.pods = append(k.pods, pod{})
			k.selected[0] = append(k.selected[0], nil)
			k.selected[1] = append(k.selected[1], nil)
		}
		in.podByName[key] = pi
	}
	np := pod{obj: o, ns: o.Namespace}
	if model.Active(o) {
		np.ips, _ = model.PodIPs(o)
	}
	np.peer = len(np.ips) > 0 && !o.Spec.HostNetwork
	if np.peer {
		np.ports = model.Ports(o)
	}
	k.ensureNamespace(o.Namespace)
	k.movePod(pi, np)
}

// deletePod leaves a tombstone in the pod's slot.
func (k *compiler) deletePod(namespace, name string) {
	in := k.inc
	key := namespace + "/" + name
	pi, ok := in.podByName[key]
	if !ok {
		return
	}
	k.movePod(pi, pod{})
	delete(in.podByName, key)
	in.freePods = append(in.freePods, pi)
}

// movePod replaces the pod in slot pi by np (obj nil: a tombstone), moving
// it between identities and updating the address owners, the peer address
// index and the egress clauses that list pod addresses.
func (k *compiler) movePod(pi int, np pod) {
	d := &k.inc.d
	old := k.pods[pi]
	created := false
	if np.peer {
		np.ident, created = k.identity(np.ns, np.obj.Labels, np.ports)
	}
	identChanged := old.peer != np.peer || (np.peer && old.ident != np.ident)
	addrsChanged := !slices.Equal(old.ips, np.ips) || hostNetwork(old) != hostNetwork(np)
	if identChanged || addrsChanged || old.obj == nil || np.obj == nil || old.obj.Spec.NodeName != np.obj.Spec.NodeName {
		d.dirty[pi] = true
	}
	if old.peer && identChanged {
		ids := k.idents[old.ident].pods
		if i := slices.Index(ids, pi); i >= 0 {
			k.idents[old.ident].pods = slices.Delete(ids, i, i+1)
		}
	}
	if np.peer && identChanged {
		k.idents[np.ident].pods = append(k.idents[np.ident].pods, pi)
	}
	k.pods[pi] = np
	if created {
		k.addIdentity(np.ident)
	}
	if addrsChanged {
		for _, a := range old.ips {
			k.unclaim(a, pi)
		}
		for _, a := range np.ips {
			k.inc.claims[a] = append(k.inc.claims[a], pi)
		}
		for _, a := range old.ips {
			d.addrs[a] = k.owner(a)
		}
		for _, a := range np.ips {
			d.addrs[a] = k.owner(a)
		}
	}
	if (old.peer || np.peer) && (identChanged || addrsChanged) {
		var peerAddrs []netip.Addr
		if old.peer {
			peerAddrs = append(peerAddrs, old.ips...)
			k.unindexAddrs(pi, old.ips)
		}
		if np.peer {
			peerAddrs = append(peerAddrs, np.ips...)
			k.indexAddrs(pi, np.ips)
		}
		k.touchBlocks(peerAddrs)
	}
	if identChanged {
		k.reselect(pi)
	}
}

func hostNetwork(p pod) bool { return p.obj != nil && p.obj.Spec.HostNetwork }

func (k *compiler) unclaim(a netip.Addr, pi int) {
	c := k.inc.claims[a]
	if i := slices.Index(c, pi); i >= 0 {
		c = slices.Delete(c, i, i+1)
	}
	if len(c) == 0 {
		delete(k.inc.claims, a)
		return
	}
	k.inc.claims[a] = c
}

// owner is the pod an address maps to, as ruleset.New picks it from pods
// in a full compile's order (namespace, name): the first pod that is not
// hostNetwork, else the last hostNetwork one; NoPod if none has it.
func (k *compiler) owner(a netip.Addr) ruleset.PodID {
	best, bestHost := -1, false
	for _, pi := range k.inc.claims[a] {
		host := hostNetwork(k.pods[pi])
		switch {
		case best < 0:
		case bestHost && !host:
		case bestHost == host && (k.before(pi, best) != host):
		default:
			continue
		}
		best, bestHost = pi, host
	}
	return ruleset.PodID(best)
}

// before orders pods as a full compile does.
func (k *compiler) before(i, j int) bool {
	a, b := k.pods[i].obj, k.pods[j].obj
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c < 0
	}
	return a.Name < b.Name
}

// indexAddrs and unindexAddrs keep the peer address index (built on
// first use by podsInBlocks) up to date: changes go to small overlays,
// merged into the sorted list once they have grown.
func (k *compiler) indexAddrs(pi int, ips []netip.Addr) {
	if k.addrs == nil {
		return
	}
	for _, a := range ips {
		ap := addrPod{a, pi}
		if k.addrsGone[ap] {
			delete(k.addrsGone, ap)
			continue
		}
		k.addrsNew = append(k.addrsNew, ap)
	}
	k.mergeAddrs()
}

func (k *compiler) unindexAddrs(pi int, ips []netip.Addr) {
	if k.addrs == nil {
		return
	}
	for _, a := range ips {
		ap := addrPod{a, pi}
		if i := slices.Index(k.addrsNew, ap); i >= 0 {
			k.addrsNew = slices.Delete(k.addrsNew, i, i+1)
			continue
		}
		if k.addrsGone == nil {
			k.addrsGone = map[addrPod]bool{}
		}
		k.addrsGone[ap] = true
	}
	k.mergeAddrs()
}

func (k *compiler) mergeAddrs() {
	if len(k.addrsNew)+len(k.addrsGone) < min(256, compactSlack) {
		return
	}
	cmp := func(x, y addrPod) int {
		if c := x.addr.Compare(y.addr); c != 0 {
			return c
		}
		return x.pod - y.pod
	}
	slices.SortFunc(k.addrsNew, cmp)
	out := make([]addrPod, 0, len(k.addrs)+len(k.addrsNew))
	old, add := k.addrs, k.addrsNew
	for len(old) > 0 || len(add) > 0 {
		if len(add) == 0 || (len(old) > 0 && cmp(old[0], add[0]) <= 0) {
			if !k.addrsGone[old[0]] {
				out = append(out, old[0])
			}
			old = old[1:]
			continue
		}
		out, add = append(out, add[0]), add[1:]
	}
	k.addrs, k.addrsNew, k.addrsGone = out, nil, nil
}

// touchBlocks marks the policies whose egress clauses list pod addresses
// (a named port resolved on pods inside an ipBlock) in which the peer
// addresses may appear or disappear.
func (k *compiler) touchBlocks(addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	for _, p := range k.policies {
		if p.obj == nil || k.inc.d.egress[p.id] {
			continue
		}
		for i := range p.rules[ruleset.Egress] {
			r := &p.rules[ruleset.Egress][i]
			if listsAddrs(r) && slices.ContainsFunc(addrs, func(a netip.Addr) bool { return inBlocks(r.blocks, a) }) {
				k.inc.d.egress[p.id] = true
				break
			}
		}
	}
}

// listsAddrs reports whether an egress rule's clauses may list single pod
// addresses (see egressSpecs).
func listsAddrs(r *rule) bool { return len(r.named) > 0 && !r.all && len(r.blocks) > 0 }
