package compile

import (
	"slices"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// SetPolicy returns the last ruleset with NetworkPolicy o (defaulted) added
// or replacing the policy of that namespace and name (Apply with one
// change). Only the policy itself is evaluated and only the tables of the
// pods it selected before or selects now are looked up or built again.
func (c *Compiler) SetPolicy(o *networkingv1.NetworkPolicy) (*ruleset.Ruleset, []Problem, error) {
	return c.Apply(Change{Policy: o})
}

// DeletePolicy deletes a NetworkPolicy (Apply with one change).
func (c *Compiler) DeletePolicy(namespace, name string) (*ruleset.Ruleset, []Problem, error) {
	o := &networkingv1.NetworkPolicy{}
	o.Namespace, o.Name = namespace, name
	return c.Apply(Change{Policy: o, Delete: true})
}

// setPolicy evaluates a new or updated policy. A new one takes the number
// of a deleted one, or the next, so that no other policy is renumbered and
// the tables built without it stay valid.
func (k *compiler) setPolicy(o *networkingv1.NetworkPolicy) {
	in := k.inc
	key := o.Namespace + "/" + o.Name
	id, ok := in.polByName[key]
	if ok {
		k.unselect(id)
	} else {
		if n := len(in.freePols); n > 0 {
			id, in.freePols = in.freePols[n-1], in.freePols[:n-1]
		} else {
			id = int32(len(k.policies))
			k.policies = append(k.policies, nil)
			k.pols = append(slices.Clip(k.pols), ruleset.Policy{})
		}
		in.polByName[key] = id
		// Snapshots share the names: copy before writing.
		k.pols = slices.Clone(k.pols)
		k.pols[id] = ruleset.Policy{Namespace: o.Namespace, Name: o.Name}
		k.inc.d.policies = true
	}
	k.dropProblem(o.Namespace, o.Name)
	p := k.policy(id, o)
	k.policies[id] = p
	for _, ident := range k.selectPods(o) {
		for _, pi := range k.idents[ident].pods {
			k.inc.d.dirty[pi] = true
			for d := range 2 {
				if !p.types[d] {
					continue
				}
				s := k.selected[d][pi]
				i, _ := slices.BinarySearch(s, id)
				k.selected[d][pi] = slices.Insert(slices.Clone(s), i, id)
			}
		}
	}
	k.dropTables(id)
}

func (k *compiler) deletePolicy(namespace, name string) {
	in := k.inc
	key := namespace + "/" + name
	id, ok := in.polByName[key]
	if !ok {
		return
	}
	k.unselect(id)
	k.dropProblem(namespace, name)
	k.policies[id] = &policy{id: id}
	delete(in.polByName, key)
	in.freePols = append(in.freePols, id)
	k.dropTables(id)
}

// unselect removes policy id from the pods it selects, which need their
// tables again.
func (k *compiler) unselect(id int32) {
	for _, ident := range k.selectPods(k.policies[id].obj) {
		for _, pi := range k.idents[ident].pods {
			k.inc.d.dirty[pi] = true
			for d := range 2 {
				if slices.Contains(k.selected[d][pi], id) {
					k.selected[d][pi] = slices.DeleteFunc(slices.Clone(k.selected[d][pi]), func(x int32) bool { return x == id })
				}
			}
		}
	}
}

// dropTables forgets the tables built with policy id; only pods it selects
// or selected have them, and they get their tables again.
func (k *compiler) dropTables(id int32) {
	for key, e := range k.tables {
		if slices.Contains(e.ids, id) {
			delete(k.tables, key)
		}
	}
}

func (k *compiler) dropProblem(namespace, name string) {
	k.problems = slices.DeleteFunc(slices.Clone(k.problems), func(p Problem) bool {
		return p.Policy.Namespace == namespace && p.Policy.Name == name
	})
}
