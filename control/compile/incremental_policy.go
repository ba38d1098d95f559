package compile

import (
	"errors"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// ErrNotIncremental says a change cannot be applied to the last compile;
// compile the cluster again with Compile.
var ErrNotIncremental = errors.New("change needs a full compile")

// SetPolicy returns the last ruleset as it would be compiled with one
// existing NetworkPolicy (same namespace and name) replaced by o, which
// must be defaulted. Only the policy itself is evaluated again and only the
// tables of the pods it selected before or selects now are rebuilt; the
// result equals a full compile of the changed cluster (the tests check
// this). A policy not in the last compile is ErrNotIncremental: adding or
// removing one renumbers the policies.
func (c *Compiler) SetPolicy(o *networkingv1.NetworkPolicy) (*ruleset.Ruleset, []Problem, error) {
	k := c.k
	if k == nil {
		return nil, nil, ErrNotIncremental
	}
	id := slices.IndexFunc(k.c.Policies, func(p *networkingv1.NetworkPolicy) bool {
		return p.Namespace == o.Namespace && p.Name == o.Name
	})
	if id < 0 {
		return nil, nil, ErrNotIncremental
	}
	old := k.policies[id]
	affected := map[int]bool{}
	for _, ident := range k.selectPods(old.obj) {
		for _, pi := range k.idents[ident].pods {
			affected[pi] = true
			for d := range 2 {
				k.selected[d][pi] = slices.DeleteFunc(slices.Clone(k.selected[d][pi]), func(x int32) bool { return x == int32(id) })
			}
		}
	}

	k.c.Policies[id] = o
	k.problems = slices.DeleteFunc(slices.Clone(k.problems), func(p Problem) bool {
		return p.Policy.Namespace == o.Namespace && p.Policy.Name == o.Name
	})
	p := k.policy(int32(id), o)
	k.policies[id] = p
	for _, ident := range k.selectPods(o) {
		for _, pi := range k.idents[ident].pods {
			affected[pi] = true
			for d := range 2 {
				if !p.types[d] {
					continue
				}
				s := k.selected[d][pi]
				i, _ := slices.BinarySearch(s, int32(id))
				k.selected[d][pi] = slices.Insert(slices.Clone(s), i, int32(id))
			}
		}
	}

	// Tables made with the policy are stale; the others stay valid.
	sid := strconv.Itoa(id)
	for key := range k.tables {
		set, _, _ := strings.Cut(key[1:], "|")
		if slices.Contains(strings.Split(set, ","), sid) {
			delete(k.tables, key)
		}
	}
	pods := slices.Clone(k.rs.Pods)
	for pi := range affected {
		if k.pods[pi].peer {
			pods[pi].Tables = k.podTables(pi)
		}
	}
	if len(pods) > 0 {
		// Pods, addresses and identities are unchanged: share the
		// address index and identities (Derive with pod 0's own).
		id0 := int32(ruleset.NoIdentity)
		if k.pods[0].peer {
			id0 = int32(k.pods[0].ident)
		}
		k.rs = k.rs.Derive(pods, 0, id0)
	}
	return k.rs, slices.Clone(k.problems), nil
}
