package compile

import (
	"fmt"
	"maps"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Compiler compiles clusters and keeps what it learned, so that the most
// frequent change, a pod's labels, is republished without recompiling: the
// pod moves to another identity, a new identity is added to the tables whose
// clauses pick it, and only the pod's own tables are looked up again.
//
// A Compiler is used by one goroutine. It owns the Cluster given to
// Compile; later changes go through its methods.
type Compiler struct {
	k       *compiler
	podByID map[string]int
}

// Compile builds a ruleset from scratch and remembers the cluster.
func (c *Compiler) Compile(cl *model.Cluster) (*ruleset.Ruleset, []Problem) {
	c.k = newCompiler(cl)
	c.podByID = nil
	return c.k.run()
}

// SetPodLabels returns the last ruleset as it would be compiled with one
// pod's labels replaced. The result equals a full compile of the changed
// cluster (the tests check this), except that identities no pod uses any
// more stay in the tables until the next full Compile.
func (c *Compiler) SetPodLabels(namespace, name string, lbls map[string]string) (*ruleset.Ruleset, error) {
	k := c.k
	if k == nil {
		return nil, fmt.Errorf("SetPodLabels before Compile")
	}
	if c.podByID == nil {
		c.podByID = make(map[string]int, len(k.pods))
		for i := range k.pods {
			c.podByID[k.pods[i].ns+"/"+k.pods[i].obj.Name] = i
		}
	}
	pi, ok := c.podByID[namespace+"/"+name]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s is not in the compiled cluster", namespace, name)
	}
	p := &k.pods[pi]
	obj := *p.obj
	obj.Labels = maps.Clone(lbls)
	p.obj = &obj
	k.c.Pods[pi] = &obj
	if !p.peer {
		// Neither enforced nor selectable: labels do not matter.
		return k.rs, nil
	}
	old := p.ident
	id, created := k.identity(p.ns, obj.Labels, p.ports)
	if id == old {
		return k.rs, nil
	}
	k.idents[old].pods = slices.DeleteFunc(slices.Clip(k.idents[old].pods), func(i int) bool { return i == pi })
	k.idents[id].pods = append(k.idents[id].pods, pi)
	p.ident = id

	replaced := map[*ruleset.Table]*ruleset.Table{}
	if created {
		k.addIdentity(id, replaced)
	}
	k.reselect(pi)

	pods := slices.Clone(k.rs.Pods)
	if len(replaced) > 0 {
		for i := range pods {
			for d, t := range pods[i].Tables {
				if nt, ok := replaced[t]; ok {
					pods[i].Tables[d] = nt
				}
			}
		}
	}
	pods[pi].Tables = k.podTables(pi)
	k.rs = k.rs.Derive(pods, ruleset.PodID(pi), int32(id))
	return k.rs, nil
}

// addIdentity makes a newly created identity known to every selection,
// rule, named-port partition and table that picks it.
func (k *compiler) addIdentity(id uint32, replaced map[*ruleset.Table]*ruleset.Table) {
	ni := &k.idents[id]
	changed := map[*selection]bool{}
	for _, s := range k.selCache {
		if slices.Contains(s.namespaces, ni.ns) && s.sel.Matches(ni.labels) {
			s.idents = append(slices.Clip(s.idents), id)
			changed[s] = true
		}
	}
	ports := k.pods[ni.pods[0]].ports
	for np, parts := range k.named {
		for _, port := range resolve(ports, np) {
			i := slices.IndexFunc(parts, func(p portIdents) bool { return p.port == port })
			if i < 0 {
				parts = append(slices.Clip(parts), portIdents{port: port})
				i = len(parts) - 1
			} else {
				parts = slices.Clone(parts)
			}
			parts[i].idents = append(slices.Clip(parts[i].idents), id)
		}
		k.named[np] = parts
	}
	for _, p := range k.policies {
		egress := false
		for d := range 2 {
			for i := range p.rules[d] {
				r := &p.rules[d][i]
				if slices.ContainsFunc(r.sels, func(s *selection) bool { return changed[s] }) {
					// id is the largest identity, so the list stays sorted.
					r.idents = append(slices.Clip(r.idents), id)
					egress = egress || d == int(ruleset.Egress)
				}
			}
		}
		if egress || (p.types[ruleset.Egress] && slices.ContainsFunc(p.rules[ruleset.Egress], func(r rule) bool { return r.all && len(r.named) > 0 })) {
			// Rebuilt when a new table needs them; existing tables are
			// patched below.
			p.egressStale = true
		}
	}
	for _, e := range k.tables {
		var b ruleset.Bits
		for ci, m := range e.meta {
			if k.picks(m, id) {
				if b == nil {
					b = make(ruleset.Bits, (len(e.meta)+63)/64)
				}
				b[ci/64] |= 1 << (ci % 64)
			}
		}
		if b != nil {
			nt := e.t.WithIdentity(id, b)
			replaced[e.t] = nt
			e.t = nt
		}
	}
}

// picks reports whether a clause admits identity id.
func (k *compiler) picks(m clauseMeta, id uint32) bool {
	_, in := slices.BinarySearch(m.r.idents, id)
	if !m.named {
		return in
	}
	if !in && !m.r.all {
		return false
	}
	return slices.Contains(resolve(k.pods[k.idents[id].pods[0]].ports, m.np), m.port)
}

// reselect recomputes which policies select pod pi.
func (k *compiler) reselect(pi int) {
	p := &k.pods[pi]
	for d := range 2 {
		k.selected[d][pi] = nil
	}
	for _, pol := range k.policies {
		if pol.obj.Namespace != p.ns {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&pol.obj.Spec.PodSelector)
		if err == nil && !sel.Matches(k.idents[p.ident].labels) {
			continue
		}
		for d := range 2 {
			if pol.types[d] {
				k.selected[d][pi] = append(k.selected[d][pi], pol.id)
			}
		}
	}
}
