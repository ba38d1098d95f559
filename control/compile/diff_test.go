package compile_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/naive"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Cyclonus (github.com/mattfenwick/cyclonus/pkg/matcher) is an independent
// NetworkPolicy interpreter. Two of its label-selector shortcuts deviate
// from Kubernetes (k8s.io/apimachinery/pkg/labels Requirement.Matches), see
// cyclonus v0.5.6 pkg/kube/labelselector.go:
//
//   - IsMatchExpressionMatchForLabels: NotIn does not match objects without
//     the key ("even for NotIn -- if the key isn't there, it's not a
//     match"); Kubernetes' NotIn does match them.
//   - IsLabelsMatchLabelSelector: matchLabels {k: ""} is tested as
//     labels[k] != "", so it matches objects without k; Kubernetes' Equals
//     requires the key.
//
// Rather than skip the verdicts they touch, cyclonusPolicies hands cyclonus
// an equivalent rewrite of the policies that avoids both: matchLabels
// become In requirements, and every selector with NotIn(k, V) is split into
// the two disjoint selectors "DoesNotExist(k)" and "NotIn(k, V)" (which
// cyclonus reads as "k exists and is not in V"): peers by adding a peer,
// spec.podSelector by adding a policy with the same rules. A union of peers
// or of policies selecting disjoint pods is exactly the original.
//
// Cyclonus knows nothing of hostNetwork or terminated pods: their addresses
// are handed to it as external peers, which is what they are to
// NetworkPolicy (never selected, never enforced; ipBlocks still apply).
// IPv4-mapped IPv6 CIDRs (which Go's net.IPNet and netip treat
// differently) are never generated.

func cyclonusPolicies(pols []*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, p := range pols {
		for i, sel := range expandSelector(&p.Spec.PodSelector) {
			q := p.DeepCopy()
			q.Name = fmt.Sprintf("%s-%d", p.Name, i)
			q.Spec.PodSelector = *sel
			for r := range q.Spec.Ingress {
				q.Spec.Ingress[r].From = expandPeers(q.Spec.Ingress[r].From)
			}
			for r := range q.Spec.Egress {
				q.Spec.Egress[r].To = expandPeers(q.Spec.Egress[r].To)
			}
			out = append(out, q)
		}
	}
	return out
}

func expandPeers(peers []networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer {
	if len(peers) == 0 {
		return peers
	}
	var out []networkingv1.NetworkPolicyPeer
	for _, peer := range peers {
		if peer.IPBlock != nil {
			out = append(out, peer)
			continue
		}
		for _, ps := range expandSelector(peer.PodSelector) {
			for _, ns := range expandSelector(peer.NamespaceSelector) {
				out = append(out, networkingv1.NetworkPolicyPeer{PodSelector: ps, NamespaceSelector: ns})
			}
		}
	}
	return out
}

// expandSelector rewrites a selector into disjoint selectors whose union
// Kubernetes and cyclonus evaluate alike. nil stays nil.
func expandSelector(s *metav1.LabelSelector) []*metav1.LabelSelector {
	if s == nil {
		return []*metav1.LabelSelector{nil}
	}
	base := &metav1.LabelSelector{}
	for _, k := range sortedKeys(s.MatchLabels) {
		base.MatchExpressions = append(base.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{s.MatchLabels[k]}})
	}
	out := []*metav1.LabelSelector{base}
	for _, req := range s.MatchExpressions {
		var next []*metav1.LabelSelector
		for _, sel := range out {
			if req.Operator == metav1.LabelSelectorOpNotIn {
				absent := sel.DeepCopy()
				absent.MatchExpressions = append(absent.MatchExpressions, metav1.LabelSelectorRequirement{Key: req.Key, Operator: metav1.LabelSelectorOpDoesNotExist})
				next = append(next, absent)
			}
			sel.MatchExpressions = append(sel.MatchExpressions, req)
			next = append(next, sel)
		}
		out = next
	}
	return out
}

// cyclonusPeer describes an address to cyclonus: a pod (labels, namespace
// and its labels) or an external host.
func cyclonusPeer(c *model.Cluster, a netip.Addr) *matcher.TrafficPeer {
	tp := &matcher.TrafficPeer{IP: a.String()}
	if p := naive.Owner(c, a); p != nil {
		tp.Internal = &matcher.InternalPeer{PodLabels: p.Labels, Namespace: p.Namespace, NamespaceLabels: nsLabels(c, p.Namespace)}
	}
	return tp
}

func nsLabels(c *model.Cluster, ns string) map[string]string {
	for _, n := range c.Namespaces {
		if n.Name == ns {
			return n.Labels
		}
	}
	return map[string]string{model.NamespaceNameLabel: ns}
}

func k8sProto(p ruleset.Proto) corev1.Protocol {
	switch p {
	case ruleset.UDP:
		return corev1.ProtocolUDP
	case ruleset.SCTP:
		return corev1.ProtocolSCTP
	}
	return corev1.ProtocolTCP
}

// cyclonusAllowed evaluates a flow with cyclonus; the destination's named
// port is resolved on the destination pod.
func cyclonusAllowed(c *model.Cluster, pol *matcher.Policy, f flow) (egress, ingress bool) {
	tr := &matcher.Traffic{
		Source:       cyclonusPeer(c, f.src),
		Destination:  cyclonusPeer(c, f.dst),
		ResolvedPort: int(f.port),
		Protocol:     k8sProto(f.proto),
	}
	if p := naive.Owner(c, f.dst); p != nil {
		tr.ResolvedPortName = naive.PortName(p, f.port, f.proto)
	}
	res := pol.IsTrafficAllowed(tr)
	return res.Egress.IsAllowed(), res.Ingress.IsAllowed()
}

type diffStats struct {
	clusters, flows, allowed int
	mismatches               int
	reasons                  [8]int // compiled verdict reasons, both directions
}

func (st *diffStats) add(o diffStats) {
	st.clusters += o.clusters
	st.flows += o.flows
	st.allowed += o.allowed
	st.mismatches += o.mismatches
	for i := range st.reasons {
		st.reasons[i] += o.reasons[i]
	}
}

func (st *diffStats) String() string {
	var parts []string
	for r, n := range st.reasons {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", ruleset.Reason(r), n))
		}
	}
	return fmt.Sprintf("%d clusters, %d flows (%d allowed; per-direction verdicts: %s), %d mismatches",
		st.clusters, st.flows, st.allowed, strings.Join(parts, ", "), st.mismatches)
}

// checkCoverage fails the test unless the flows compared mixed allowed and
// denied ones, decided by a rule, by no rule matching and by no policy
// selecting the pod: a generator drifting into clusters where everything
// is allowed would otherwise pass every comparison and test nothing.
func (st *diffStats) checkCoverage(t *testing.T) {
	t.Helper()
	if st.allowed == 0 || st.allowed == st.flows || st.reasons[ruleset.RuleMatched] == 0 ||
		st.reasons[ruleset.NoRuleMatched] == 0 || st.reasons[ruleset.NotIsolated] == 0 {
		t.Errorf("the random flows cover too little: %s", st)
	}
}

// diffCluster compares compiled, naive and (when withCyclonus) cyclonus
// verdicts on n random flows of one generated cluster.
func diffCluster(t testing.TB, g *gen, label string, n int, withCyclonus bool, st *diffStats) {
	c := g.cluster()
	rs, problems := compile.Compile(c)
	if withCyclonus && len(problems) > 0 {
		t.Fatalf("%s: generator produced invalid policies: %v", label, problems)
	}
	var cy *matcher.Policy
	if withCyclonus {
		cy = matcher.BuildNetworkPolicies(false, cyclonusPolicies(c.Policies))
	}
	st.clusters++
	for range n {
		f := g.flow(c, !withCyclonus)
		ce, ci := compiledAllowed(rs, f.src, f.dst, f.proto, f.port)
		ne, ni := naive.Allowed(c, f.src, f.dst, f.proto, f.port)
		ye, yi := ne, ni
		if withCyclonus {
			ye, yi = cyclonusAllowed(c, cy, f)
		}
		st.flows++
		for _, pt := range [][2]netip.Addr{{f.src, f.dst}, {f.dst, f.src}} {
			dir := ruleset.Egress
			if pt[0] == f.dst {
				dir = ruleset.Ingress
			}
			if id, ok := rs.PodByIP(pt[0]); ok {
				st.reasons[rs.Verdict(id, dir, pt[1], f.proto, f.port).Reason&7]++
			}
		}
		if ce && ci {
			st.allowed++
		}
		if ce == ne && ci == ni && ne == ye && ni == yi {
			continue
		}
		st.mismatches++
		if st.mismatches <= 10 {
			t.Errorf("%s: flow %s:\n  compiled egress=%v ingress=%v\n  naive    egress=%v ingress=%v\n  cyclonus egress=%v ingress=%v\n%s",
				label, f, ce, ci, ne, ni, ye, yi, describe(c, rs, f))
		}
	}
}

// describe prints what a mismatch needs: the pods owning the flow's
// addresses and the policies of their namespaces, as YAML.
func describe(c *model.Cluster, rs *ruleset.Ruleset, f flow) string {
	var b strings.Builder
	nss := map[string]bool{}
	for _, a := range []netip.Addr{f.src, f.dst} {
		p := naive.Owner(c, a)
		if p == nil {
			fmt.Fprintf(&b, "  %s: no enforced pod\n", a)
			continue
		}
		nss[p.Namespace] = true
		fmt.Fprintf(&b, "  %s: pod %s/%s labels=%v ns labels=%v ports=%v\n", a, p.Namespace, p.Name, p.Labels, nsLabels(c, p.Namespace), podPorts(p))
	}
	for _, dir := range []ruleset.Direction{ruleset.Egress, ruleset.Ingress} {
		a, peer := f.src, f.dst
		if dir == ruleset.Ingress {
			a, peer = f.dst, f.src
		}
		if id, ok := rs.PodByIP(a); ok {
			v := rs.Verdict(id, dir, peer, f.proto, f.port)
			fmt.Fprintf(&b, "  compiled %s at %s: %s", dir, a, v.Reason)
			if v.Table != nil && v.Clause >= 0 {
				cl := v.Table.Clauses[v.Clause]
				fmt.Fprintf(&b, " by %s rule %d %s", rs.Policies[cl.Policy], cl.Rule, cl.NamedPort)
			}
			b.WriteString("\n")
		}
	}
	var pols []*networkingv1.NetworkPolicy
	for _, p := range c.Policies {
		if nss[p.Namespace] {
			pols = append(pols, p)
		}
	}
	b.WriteString(policiesYAML(pols))
	return b.String()
}

func podPorts(p *corev1.Pod) string {
	var parts []string
	for _, ctr := range naive.Containers(p) {
		for _, cp := range ctr.Ports {
			parts = append(parts, fmt.Sprintf("%s=%d/%s", cp.Name, cp.ContainerPort, cp.Protocol))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// TestDifferential checks the compiled ruleset, the naive interpreter and
// cyclonus against each other on random clusters, policies and flows.
func TestDifferential(t *testing.T) {
	seeds, clusters, flows := 8, 40, 400
	if testing.Short() {
		seeds, clusters, flows = 2, 10, 200
	}
	start := time.Now()
	var total diffStats
	for seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			g := &gen{r: rand.New(rand.NewPCG(uint64(seed), 0x7864706f6c696379))}
			var st diffStats
			for i := range clusters {
				diffCluster(t, g, fmt.Sprintf("seed %d cluster %d", seed, i), flows, true, &st)
			}
			total.add(st)
		})
	}
	t.Logf("compiled vs naive vs cyclonus: %s, in %v", &total, time.Since(start).Round(time.Millisecond))
	total.checkCoverage(t)
}

// TestDifferentialInvalid lets the generator break policies, which compile
// fails closed and the naive interpreter mirrors (cyclonus panics on
// invalid policies and is left out), and adds non-port protocols.
func TestDifferentialInvalid(t *testing.T) {
	clusters := 100
	if testing.Short() {
		clusters = 20
	}
	g := &gen{r: rand.New(rand.NewPCG(42, 0x696e76616c6964)), invalid: true}
	var st diffStats
	for i := range clusters {
		diffCluster(t, g, fmt.Sprintf("invalid seed 42 cluster %d", i), 200, false, &st)
	}
	t.Logf("compiled vs naive (invalid policies, other protocols): %s", &st)
	st.checkCoverage(t)
}
