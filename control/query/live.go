package query

import (
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// NewCompiled answers questions about a cluster already compiled into rs
// with problems (the agent's current snapshot), without compiling again.
// rs must be the compilation of c.
func NewCompiled(c *model.Cluster, rs *ruleset.Ruleset, problems []compile.Problem) *Query {
	q := &Query{Cluster: c, Rules: rs, policies: map[ruleset.Policy]*networkingv1.NetworkPolicy{}, problems: map[ruleset.Policy]error{}}
	for _, pr := range problems {
		q.problems[pr.Policy] = pr.Err
	}
	for _, p := range c.Policies {
		q.policies[ruleset.Policy{Namespace: p.Namespace, Name: p.Name}] = p
	}
	return q
}
