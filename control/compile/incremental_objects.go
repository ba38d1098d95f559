package compile

import (
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

func (k *compiler) setNamespace(o *corev1.Namespace) {
	k.inc.nsObjs[o.Name] = o
	k.relabelNamespace(o.Name, labels.Set(o.Labels))
}

// deleteNamespace forgets a namespace no pod was ever in. Otherwise it
// gives it the labels a full compile gives the namespace of a pod without a
// Namespace object (a namespace without pods matters to no selector, and
// its identities stay until the next full compile).
func (k *compiler) deleteNamespace(name string) {
	delete(k.inc.nsObjs, name)
	if _, ok := k.nsLabels[name]; !ok {
		return
	}
	if len(k.byNS[name]) > 0 {
		k.relabelNamespace(name, defaultNSLabels(name))
		return
	}
	delete(k.nsLabels, name)
	if i, ok := slices.BinarySearch(k.nsNames, name); ok {
		k.nsNames = slices.Delete(k.nsNames, i, i+1)
	}
	for _, s := range k.selCache {
		if s.nsSel != nil && slices.Contains(s.namespaces, name) {
			s.namespaces = slices.DeleteFunc(slices.Clone(s.namespaces), func(ns string) bool { return ns == name })
		}
	}
}

func defaultNSLabels(name string) labels.Set {
	return labels.Set{model.NamespaceNameLabel: name}
}

// ensureNamespace makes a pod's namespace known, with the labels a full
// compile gives it while its Namespace object is missing.
func (k *compiler) ensureNamespace(name string) {
	if _, ok := k.nsLabels[name]; !ok {
		k.relabelNamespace(name, defaultNSLabels(name))
	}
}

// relabelNamespace gives a namespace (known or new) its labels: the cached
// namespace selectors are evaluated on it again, the rules with a
// selection that gained or lost the namespace's identities get their
// identities again, and the rows of those identities are recomputed in the
// tables built with such rules.
func (k *compiler) relabelNamespace(name string, lbls labels.Set) {
	old, known := k.nsLabels[name]
	if known && maps.Equal(old, lbls) {
		return
	}
	k.nsLabels[name] = lbls
	if !known {
		i, _ := slices.BinarySearch(k.nsNames, name)
		k.nsNames = slices.Insert(k.nsNames, i, name)
	}
	changed := map[*selection]bool{}
	for _, s := range k.selCache {
		if s.nsSel == nil {
			continue
		}
		was, now := slices.Contains(s.namespaces, name), s.nsSel.Matches(lbls)
		if was == now {
			continue
		}
		n := len(s.idents)
		if now {
			s.namespaces = append(slices.Clip(s.namespaces), name)
			var add []uint32
			for _, id := range k.byNS[name] {
				if s.sel.Matches(k.idents[id].labels) {
					add = append(add, id)
				}
			}
			s.setIdents(mergeIdents(s.idents, add))
		} else {
			s.namespaces = slices.DeleteFunc(slices.Clone(s.namespaces), func(ns string) bool { return ns == name })
			s.setIdents(slices.DeleteFunc(slices.Clone(s.idents), func(id uint32) bool { return k.idents[id].ns == name }))
		}
		if len(s.idents) != n {
			changed[s] = true
		}
	}
	if len(changed) == 0 {
		return
	}
	// The policies with such rules, per direction: the tables built with
	// them get their rows again (all of them: an egress rule whose named
	// ports resolved on none of its peers has no clause yet).
	var policies [2]map[int32]bool
	policies[0], policies[1] = map[int32]bool{}, map[int32]bool{}
	for _, p := range k.policies {
		for d := range 2 {
			for i := range p.rules[d] {
				r := &p.rules[d][i]
				if !slices.ContainsFunc(r.sels, func(s *selection) bool { return changed[s] }) {
					continue
				}
				r.stale = true
				policies[d][p.id] = true
				if d != int(ruleset.Egress) {
					continue
				}
				p.egressStale = true
				if listsAddrs(r) {
					// Pods inside the blocks are listed by address
					// unless the rule's selectors pick them.
					if slices.ContainsFunc(k.podsInBlocks(r.blocks), func(ap addrPod) bool { return k.pods[ap.pod].ns == name }) {
						k.inc.d.egress[p.id] = true
					}
				}
			}
		}
	}
	ids := k.byNS[name]
	for _, e := range k.tables {
		if slices.ContainsFunc(e.ids, func(id int32) bool { return policies[e.dir][id] }) {
			k.refreshRows(e, ids)
		}
	}
}

// mergeIdents merges two ascending lists of distinct identities into a new
// one.
func mergeIdents(a, b []uint32) []uint32 {
	out := make([]uint32, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] < b[0]:
			out, a = append(out, a[0]), a[1:]
		case a[0] > b[0]:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return append(append(out, a...), b...)
}

func (k *compiler) setService(o *corev1.Service) {
	key := o.Namespace + "/" + o.Name
	old := k.inc.svcs[key]
	ips, _ := model.ClusterIPs(o)
	k.inc.svcs[key] = service{o, ips}
	k.serviceIPs(old.ips, ips)
}

func (k *compiler) deleteService(namespace, name string) {
	key := namespace + "/" + name
	old, ok := k.inc.svcs[key]
	if !ok {
		return
	}
	delete(k.inc.svcs, key)
	k.serviceIPs(old.ips, nil)
}

// serviceIPs moves the references of one Service from its old addresses to
// its new ones; an address is a ClusterIP while any Service has it.
func (k *compiler) serviceIPs(old, now []netip.Addr) {
	refs := k.inc.svcRefs
	for _, a := range old {
		if refs[a]--; refs[a] <= 0 {
			delete(refs, a)
			k.inc.d.svcs[a] = false
		}
	}
	for _, a := range now {
		if refs[a]++; refs[a] == 1 {
			k.inc.d.svcs[a] = true
		}
	}
}
