package query

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Matrix decides every (from, to) pair for every port, in order.
func (q *Query) Matrix(from, to []Endpoint, ports []Port) []Result {
	out := make([]Result, 0, len(from)*len(to)*len(ports))
	for _, p := range ports {
		for _, f := range from {
			for _, t := range to {
				out = append(out, q.Flow(f, t, p))
			}
		}
	}
	return out
}

// WriteJSON writes one JSON object per line.
func WriteJSON(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	for i := range results {
		if err := enc.Encode(&results[i]); err != nil {
			return err
		}
	}
	return nil
}

// WriteTable writes one matrix per port: rows are sources, columns are
// destinations, "." is allowed and "X" denied (the convention of the
// upstream e2e truth tables). results must come from Matrix(from, to, ports).
func WriteTable(w io.Writer, from, to []Endpoint, ports []Port, results []Result) {
	rowW := 4
	for _, f := range from {
		rowW = max(rowW, len(f.Name))
	}
	named := true
	width := rowW
	for _, t := range to {
		width += len(t.Name) + 1
	}
	if width > 120 {
		named = false
	}
	colW := make([]int, len(to))
	for j, t := range to {
		colW[j] = len(fmt.Sprint(j + 1))
		if named {
			colW[j] = len(t.Name)
		}
	}
	i := 0
	for _, p := range ports {
		allowed := 0
		for k := i; k < i+len(from)*len(to); k++ {
			if results[k].Allowed {
				allowed++
			}
		}
		fmt.Fprintf(w, "%s   (. allowed  X denied; %d of %d allowed)\n", p, allowed, len(from)*len(to))
		var line strings.Builder
		flush := func() {
			fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
			line.Reset()
		}
		fmt.Fprintf(&line, "%-*s", rowW, "")
		for j, t := range to {
			label := fmt.Sprint(j + 1)
			if named {
				label = t.Name
			}
			fmt.Fprintf(&line, " %-*s", colW[j], label)
		}
		flush()
		for _, f := range from {
			fmt.Fprintf(&line, "%-*s", rowW, f.Name)
			for j := range to {
				mark := "X"
				if results[i].Allowed {
					mark = "."
				}
				fmt.Fprintf(&line, " %-*s", colW[j], mark)
				i++
			}
			flush()
		}
		if !named {
			for j, t := range to {
				fmt.Fprintf(w, "  %d=%s", j+1, t.Name)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
	}
}

// Explain writes a short account of one flow: the source's egress side and
// the destination's ingress side, which policies select each pod, which rule
// admitted the flow, or why none did.
func (q *Query) Explain(w io.Writer, from, to Endpoint, port Port) Result {
	r := q.Flow(from, to, port)
	verdict := "DENIED"
	if r.Allowed {
		verdict = "ALLOWED"
	}
	fmt.Fprintf(w, "%s → %s on %s: %s\n", endpointLabel(from, r.FromIP), endpointLabel(to, r.ToIP), port, verdict)
	if r.Egress.Reason == "loopback" {
		fmt.Fprintf(w, "  a pod's traffic to its own address is looped back inside the pod; no NetworkPolicy applies\n")
		return r
	}
	if r.FromIP == "" {
		fmt.Fprintf(w, "  the two endpoints share no address family\n")
		return r
	}
	q.explainSide(w, "egress", from, &r.Egress, port)
	q.explainSide(w, "ingress", to, &r.Ingress, port)
	return r
}

func endpointLabel(e Endpoint, ip string) string {
	if e.External() || ip == "" {
		return e.Name
	}
	return fmt.Sprintf("%s (%s)", e.Name, ip)
}

func (q *Query) explainSide(w io.Writer, dir string, e Endpoint, s *Side, port Port) {
	word := "allowed"
	if !s.Allowed {
		word = "denied"
	}
	switch s.verdict.Reason {
	case ruleset.NotIsolated:
		if e.External() {
			fmt.Fprintf(w, "  %s of %s: not enforced (not a pod)\n", dir, e.Name)
		} else {
			fmt.Fprintf(w, "  %s of %s: allowed, no NetworkPolicy selects %s for %s (not isolated)\n", dir, e.Name, e.Name, dir)
		}
		return
	case ruleset.HostNetwork:
		fmt.Fprintf(w, "  %s of %s: allowed, host-network pods are not enforced\n", dir, e.Name)
		return
	case ruleset.UnknownPod, ruleset.NoSnapshot:
		fmt.Fprintf(w, "  %s of %s: denied, %s\n", dir, e.Name, s.verdict.Reason)
		return
	}
	if e.External() {
		fmt.Fprintf(w, "  %s of %s: not enforced (not a pod)\n", dir, e.Name)
		return
	}
	t := s.verdict.Table
	fmt.Fprintf(w, "  %s of %s: %s, selected by %s\n", dir, e.Name, word, strings.Join(s.Policies, ", "))
	peerBits, portBits := t.PeerClauses(q.Rules.Identity(s.peer), s.peer), t.PortClauses(port.Proto, port.Port)
	for _, id := range t.Policies {
		name := q.Rules.Policies[id]
		pol := q.policies[name]
		if err, bad := q.problems[name]; bad {
			fmt.Fprintf(w, "    %s: invalid, admits nothing until fixed: %v\n", name, err)
			continue
		}
		rules := len(pol.Spec.Ingress)
		if t.Dir == ruleset.Egress {
			rules = len(pol.Spec.Egress)
		}
		if rules == 0 {
			fmt.Fprintf(w, "    %s: no %s rules (isolates, admits nothing)\n", name, dir)
			continue
		}
		for ri := 0; ri < rules; ri++ {
			peerOK, portOK, both := false, false, false
			for c, cl := range t.Clauses {
				if cl.Policy != id || int(cl.Rule) != ri {
					continue
				}
				pm, qm := peerBits.Has(c), portBits.Has(c)
				peerOK, portOK, both = peerOK || pm, portOK || qm, both || (pm && qm)
			}
			status := "neither peer nor port matches"
			switch {
			case both:
				status = "ADMITS"
			case peerOK:
				status = "peer matches, port does not"
			case portOK:
				status = "port matches, peer does not"
			}
			fmt.Fprintf(w, "    %s %s[%d] %s: %s\n", name, dir, ri, describeRule(pol, t.Dir, ri), status)
		}
	}
}

// describeRule renders a rule compactly: "from [...] ports [...]".
func describeRule(p *networkingv1.NetworkPolicy, dir ruleset.Direction, i int) string {
	var peers []networkingv1.NetworkPolicyPeer
	var ports []networkingv1.NetworkPolicyPort
	word := "from"
	if dir == ruleset.Egress {
		peers, ports, word = p.Spec.Egress[i].To, p.Spec.Egress[i].Ports, "to"
	} else {
		peers, ports = p.Spec.Ingress[i].From, p.Spec.Ingress[i].Ports
	}
	var ps []string
	for _, peer := range peers {
		var parts []string
		if b := peer.IPBlock; b != nil {
			s := "ipBlock " + b.CIDR
			if len(b.Except) > 0 {
				s += " except " + strings.Join(b.Except, ",")
			}
			parts = append(parts, s)
		}
		if peer.NamespaceSelector != nil {
			parts = append(parts, "namespaces "+selString(peer.NamespaceSelector))
		}
		if peer.PodSelector != nil {
			parts = append(parts, "pods "+selString(peer.PodSelector))
		}
		if peer.NamespaceSelector == nil && peer.IPBlock == nil {
			parts = append(parts, "in "+p.Namespace)
		}
		ps = append(ps, strings.Join(parts, " "))
	}
	peerStr := "any peer"
	if len(ps) > 0 {
		peerStr = "[" + strings.Join(ps, "; ") + "]"
	}
	portStr := "any port"
	if len(ports) > 0 {
		var qs []string
		for _, pp := range ports {
			s := string(*pp.Protocol)
			if pp.Port != nil {
				s += "/" + pp.Port.String()
				if pp.EndPort != nil {
					s += fmt.Sprintf("-%d", *pp.EndPort)
				}
			}
			qs = append(qs, s)
		}
		portStr = "ports " + strings.Join(qs, ",")
	}
	return fmt.Sprintf("(%s %s, %s)", word, peerStr, portStr)
}

func selString(s *metav1.LabelSelector) string {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return "<invalid>"
	}
	if str := sel.String(); str != "" {
		return "{" + str + "}"
	}
	return "{all}"
}
