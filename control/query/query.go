package query

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Query holds a cluster and its compiled ruleset.
type Query struct {
	Cluster  *model.Cluster
	Rules    *ruleset.Ruleset
	policies map[ruleset.Policy]*networkingv1.NetworkPolicy
	problems map[ruleset.Policy]error
}

// New compiles the cluster. Problems (invalid policies, which fail closed)
// are returned for the caller to report.
func New(c *model.Cluster) (*Query, []compile.Problem) {
	rs, problems := compile.Compile(c)
	return NewCompiled(c, rs, problems), problems
}

// Endpoint is one side of a flow: a pod, or an address no pod owns.
type Endpoint struct {
	Pod  ruleset.PodID // -1 for an external address
	Addr netip.Addr    // set for external addresses
	Name string        // "ns/pod" or the address
}

// External reports whether the endpoint is not a pod.
func (e Endpoint) External() bool { return e.Pod < 0 }

// Endpoints resolves --from/--to arguments ("ns/pod", "ns/*", an IP
// address); none means every pod that has an address.
func (q *Query) Endpoints(specs []string) ([]Endpoint, error) {
	var out []Endpoint
	if len(specs) == 0 {
		specs = []string{"*/*"}
	}
	seen := map[string]bool{}
	add := func(e Endpoint) {
		if !seen[e.Name] {
			seen[e.Name] = true
			out = append(out, e)
		}
	}
	for _, s := range specs {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			if id, ok := q.Rules.PodByIP(a); ok {
				add(q.podEndpoint(id))
			} else {
				add(Endpoint{Pod: -1, Addr: a, Name: a.String()})
			}
			continue
		}
		ns, name, ok := strings.Cut(s, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("%q: want namespace/pod, namespace/* or an IP address", s)
		}
		n := len(out)
		for i, p := range q.Rules.Pods {
			if (ns == "*" || p.Namespace == ns) && (name == "*" || p.Name == name) && len(p.IPs) > 0 {
				add(q.podEndpoint(ruleset.PodID(i)))
			}
		}
		if len(out) == n && s != "*/*" {
			return nil, fmt.Errorf("%q: no pod with an IP address matches", s)
		}
	}
	return out, nil
}

func (q *Query) podEndpoint(id ruleset.PodID) Endpoint {
	p := &q.Rules.Pods[id]
	return Endpoint{Pod: id, Name: p.Namespace + "/" + p.Name}
}

// Port is a port and protocol to probe.
type Port struct {
	Port  uint16
	Proto ruleset.Proto
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Proto) }

// ParsePort parses "80/TCP" (the protocol defaults to TCP).
func ParsePort(s string) (Port, error) {
	num, proto, found := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Port{}, fmt.Errorf("port %q: want N/PROTO with N in 1-65535, e.g. 80/TCP", s)
	}
	pr := ruleset.TCP
	if found {
		if pr, err = ruleset.ParseProto(strings.ToUpper(proto)); err != nil {
			return Port{}, fmt.Errorf("port %q: %w", s, err)
		}
	}
	return Port{uint16(n), pr}, nil
}

// DefaultPorts is every container port of every pod, sorted.
func (q *Query) DefaultPorts() []Port {
	var out []Port
	for _, p := range q.Cluster.Pods {
		for _, cp := range model.Ports(p) {
			pp := Port{cp.Port, protoOf(string(cp.Protocol))}
			if !slices.Contains(out, pp) {
				out = append(out, pp)
			}
		}
	}
	slices.SortFunc(out, func(a, b Port) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return int(a.Proto) - int(b.Proto)
	})
	return out
}

func protoOf(s string) ruleset.Proto {
	p, err := ruleset.ParseProto(s)
	if err != nil {
		return ruleset.TCP
	}
	return p
}

// Side is the verdict of one enforcement point of a flow.
type Side struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	// Pod is the enforcing pod, "" when the endpoint is external.
	Pod string `json:"pod,omitempty"`
	// Policies select the pod in this direction.
	Policies []string `json:"policies"`
	// Rules admitted the flow.
	Rules []RuleRef `json:"rules"`

	verdict ruleset.Verdict
	peer    netip.Addr
}

// RuleRef names a rule: "ns/policy" and its index in spec.ingress or
// spec.egress, with the named port it resolved, if any.
type RuleRef struct {
	Policy    string `json:"policy"`
	Direction string `json:"direction"`
	Rule      int    `json:"rule"`
	NamedPort string `json:"namedPort,omitempty"`
}

func (r RuleRef) String() string {
	s := fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Rule)
	if r.NamedPort != "" {
		s += " (" + r.NamedPort + ")"
	}
	return s
}

// Result is one cell of the truth table. The JSON form is the contract of
// `xdpolicy probe -o json`.
type Result struct {
	From     string `json:"from"`
	To       string `json:"to"`
	FromIP   string `json:"fromIP,omitempty"`
	ToIP     string `json:"toIP,omitempty"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Allowed  bool   `json:"allowed"`
	// Egress is the source pod's verdict, Ingress the destination's.
	Egress  Side `json:"egress"`
	Ingress Side `json:"ingress"`
}

// Flow decides from → to on port: the source pod's egress and the
// destination pod's ingress, each "not enforced" for external endpoints.
// Pods are addressed by their first address of a family both share.
func (q *Query) Flow(from, to Endpoint, port Port) Result {
	src, dst := q.addrs(from, to)
	r := Result{From: from.Name, To: to.Name, Port: int(port.Port), Protocol: port.Proto.String()}
	if src.IsValid() {
		r.FromIP, r.ToIP = src.String(), dst.String()
	}
	if !from.External() && from.Pod == to.Pod {
		// A pod's traffic to its own address is looped back inside the
		// pod and never reaches an enforcement point.
		loop := Side{Allowed: true, Reason: "loopback", Pod: from.Name, Policies: []string{}, Rules: []RuleRef{}}
		r.Egress, r.Ingress, r.Allowed = loop, loop, true
		return r
	}
	r.Egress = q.side(from, ruleset.Egress, dst, port)
	r.Ingress = q.side(to, ruleset.Ingress, src, port)
	if !src.IsValid() {
		r.Egress = Side{Reason: "no-common-address-family", Policies: []string{}, Rules: []RuleRef{}}
	}
	r.Allowed = r.Egress.Allowed && r.Ingress.Allowed
	return r
}

// addrs picks the addresses a flow uses: the destination's first address
// and the source's address of the same family.
func (q *Query) addrs(from, to Endpoint) (src, dst netip.Addr) {
	ips := func(e Endpoint) []netip.Addr {
		if e.External() {
			return []netip.Addr{e.Addr}
		}
		return q.Rules.Pods[e.Pod].IPs
	}
	for _, d := range ips(to) {
		for _, s := range ips(from) {
			if s.Is4() == d.Is4() {
				return s, d
			}
		}
	}
	return netip.Addr{}, netip.Addr{}
}

func (q *Query) side(e Endpoint, dir ruleset.Direction, peer netip.Addr, port Port) Side {
	s := Side{Policies: []string{}, Rules: []RuleRef{}, peer: peer}
	if e.External() {
		s.Allowed, s.Reason = true, "external"
		return s
	}
	s.Pod = e.Name
	v := q.Rules.Verdict(e.Pod, dir, peer, port.Proto, port.Port)
	s.verdict = v
	s.Allowed, s.Reason = v.Allowed, v.Reason.String()
	if t := v.Table; t != nil {
		for _, id := range t.Policies {
			s.Policies = append(s.Policies, q.Rules.Policies[id].String())
		}
		for _, c := range t.Matches(q.Rules.Identity(peer), peer, port.Proto, port.Port) {
			s.Rules = append(s.Rules, q.ruleRef(t, c))
		}
	}
	return s
}

func (q *Query) ruleRef(t *ruleset.Table, c int32) RuleRef {
	cl := t.Clauses[c]
	return RuleRef{Policy: q.Rules.Policies[cl.Policy].String(), Direction: t.Dir.String(), Rule: int(cl.Rule), NamedPort: cl.NamedPort}
}
