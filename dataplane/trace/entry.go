package trace

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// History keeps the last few published snapshots so that records can be
// named against the snapshot that decided them. Its methods are safe for
// concurrent use (control path only).
type History struct {
	mu   sync.Mutex
	keep []*ruleset.Ruleset // newest last
}

// historyLen bounds the snapshots kept alive for naming.
const historyLen = 8

// Remember adds a published snapshot.
func (h *History) Remember(rs *ruleset.Ruleset) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keep) == historyLen {
		copy(h.keep, h.keep[1:])
		h.keep = h.keep[:historyLen-1]
	}
	h.keep = append(h.keep, rs)
}

// Get returns the snapshot of generation gen, or nil when it is no longer
// (or was never) kept.
func (h *History) Get(gen uint64) *ruleset.Ruleset {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.keep) - 1; i >= 0; i-- {
		if h.keep[i].Generation == gen {
			return h.keep[i]
		}
	}
	return nil
}

// Current returns the newest snapshot, or nil.
func (h *History) Current() *ruleset.Ruleset {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keep) == 0 {
		return nil
	}
	return h.keep[len(h.keep)-1]
}

// Entry is a record with its names resolved: one line of the NDJSON stream
// of GET /trace and of `xdpolicy trace -o json`.
type Entry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`
	Hook    string    `json:"hook"` // egress (leaving the pod) or ingress (entering it)
	Proto   string    `json:"proto"`
	Src     string    `json:"src"` // address:port
	Dst     string    `json:"dst"`
	SrcPod  string    `json:"srcPod,omitempty"`
	DstPod  string    `json:"dstPod,omitempty"`
	Verdict string    `json:"verdict"` // allow or deny
	Reason  string    `json:"reason"`  // ruleset.Reason
	// Pod and Direction name the enforcement point whose verdict this is.
	Pod       string `json:"pod,omitempty"`
	Direction string `json:"direction"`
	// Policy and Rule name the deciding rule (reason rule-matched).
	Policy    string `json:"policy,omitempty"`
	Rule      *int   `json:"rule,omitempty"`
	NamedPort string `json:"namedPort,omitempty"`
	// Policies select Pod in Direction (reasons rule-matched and
	// no-rule-matched).
	Policies []string `json:"policies,omitempty"`
	// Why is the explanation in one phrase.
	Why        string `json:"why"`
	Kept       bool   `json:"kept,omitempty"`
	Generation uint64 `json:"generation"`
	LatencyNs  uint32 `json:"latencyNs"`
	Source     string `json:"source"`
	// Lost counts records this reader lost just before this one.
	Lost uint64 `json:"lost,omitempty"`
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return ruleset.Proto(p).String()
}

func hookName(h uint8) string {
	switch h {
	case 1:
		return "egress"
	case 2:
		return "ingress"
	}
	return "hook-" + strconv.Itoa(int(h))
}

// Resolve names e's pods, policies and rule against the snapshot of its
// generation (from h, which may be nil).
func Resolve(node string, e *Event, h *History) Entry {
	en := Entry{
		Seq: e.Seq, Time: time.Unix(0, e.Time), Node: node, Hook: hookName(e.Hook), Proto: protoName(e.Proto),
		Src: netip.AddrPortFrom(e.Src, e.Sport).String(), Dst: netip.AddrPortFrom(e.Dst, e.Dport).String(),
		Verdict: "deny", Reason: e.Reason.String(), Direction: e.Dir.String(), Kept: e.Kept,
		Generation: e.Generation, LatencyNs: e.LatencyNs, Source: e.Source.String(),
	}
	if e.Allowed {
		en.Verdict = "allow"
	}
	var rs *ruleset.Ruleset
	if h != nil {
		rs = h.Get(e.Generation)
	}
	if rs == nil {
		en.Why = fmt.Sprintf("%s (snapshot %d no longer kept: names unknown)", e.Reason, e.Generation)
		return en
	}
	srcID, srcOK := rs.PodByIP(e.Src)
	dstID, dstOK := rs.PodByIP(e.Dst)
	podName := func(id ruleset.PodID) string { return rs.Pods[id].Namespace + "/" + rs.Pods[id].Name }
	if srcOK {
		en.SrcPod = podName(srcID)
	}
	if dstOK {
		en.DstPod = podName(dstID)
	}
	pod, ok := dstID, dstOK
	if e.Dir == ruleset.Egress {
		pod, ok = srcID, srcOK
	}
	if ok {
		en.Pod = podName(pod)
	}
	switch e.Reason {
	case ruleset.RuleMatched, ruleset.NoRuleMatched:
		if !ok {
			break
		}
		t := rs.Pods[pod].Tables[e.Dir&1]
		if t == nil {
			break
		}
		for _, id := range t.Policies {
			en.Policies = append(en.Policies, rs.Policies[id].String())
		}
		if e.Reason == ruleset.RuleMatched && e.Clause >= 0 && int(e.Clause) < len(t.Clauses) {
			c := t.Clauses[e.Clause]
			rule := int(c.Rule)
			en.Policy, en.Rule, en.NamedPort = rs.Policies[c.Policy].String(), &rule, c.NamedPort
		}
	}
	en.Why = why(&en, e)
	return en
}

func why(en *Entry, e *Event) string {
	var s string
	switch e.Reason {
	case ruleset.RuleMatched:
		if en.Policy == "" {
			s = "rule matched"
			break
		}
		s = fmt.Sprintf("%s %s[%d]", en.Policy, en.Direction, *en.Rule)
		if en.NamedPort != "" {
			s += " (" + en.NamedPort + ")"
		}
	case ruleset.NoRuleMatched:
		s = fmt.Sprintf("%s of %s selected by %s, no rule matched", en.Direction, en.Pod, strings.Join(en.Policies, ", "))
	case ruleset.NotIsolated:
		s = fmt.Sprintf("%s of %s not isolated", en.Direction, orAddr(en.Pod, "the pod"))
	case ruleset.HostNetwork:
		s = "from the node's own address (always allowed)"
	case ruleset.Deferred:
		s = "to a Service ClusterIP: egress decided at the backend's entering hook"
	case ruleset.Related:
		s = "ICMP error about a flow allowed here (related)"
	case ruleset.NoFirstFragment:
		s = "later fragment of a datagram whose first fragment was not seen (fail closed)"
	case ruleset.UnknownPod:
		s = "enforcement point not in the snapshot (fail closed)"
	case ruleset.NoSnapshot:
		s = "no snapshot yet (fail closed)"
	default:
		s = e.Reason.String()
	}
	if e.Kept {
		s += "; kept: the flow was already allowed (--existing-connections=keep)"
	}
	return s
}

func orAddr(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

// Filter selects entries; the zero Filter selects every entry.
type Filter struct {
	Pod       string // ns/name: the source or destination pod
	Namespace string // the source or destination pod's namespace
	Verdict   string // allow, deny or ""
}

// ParseFilter reads pod, namespace and verdict from a query string.
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Pod: q.Get("pod"), Namespace: q.Get("namespace"), Verdict: strings.ToLower(q.Get("verdict"))}
	if f.Pod != "" {
		if ns, name, ok := strings.Cut(f.Pod, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return f, fmt.Errorf("pod=%q: want namespace/name", f.Pod)
		}
	}
	switch f.Verdict {
	case "", "allow", "deny":
	default:
		return f, fmt.Errorf("verdict=%q: want allow or deny", f.Verdict)
	}
	return f, nil
}

// Query renders f as a query string (for clients).
func (f Filter) Query() url.Values {
	q := url.Values{}
	if f.Pod != "" {
		q.Set("pod", f.Pod)
	}
	if f.Namespace != "" {
		q.Set("namespace", f.Namespace)
	}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	return q
}

// Match reports whether en passes the filter.
func (f Filter) Match(en *Entry) bool {
	if f.Verdict != "" && en.Verdict != f.Verdict {
		return false
	}
	if f.Pod != "" && en.SrcPod != f.Pod && en.DstPod != f.Pod {
		return false
	}
	if f.Namespace != "" && nsOf(en.SrcPod) != f.Namespace && nsOf(en.DstPod) != f.Namespace {
		return false
	}
	return true
}

func nsOf(pod string) string {
	ns, _, _ := strings.Cut(pod, "/")
	return ns
}

// Text renders en as one line: time, node, hook, 5-tuple, pods, verdict,
// rule or reason, generation, latency.
func (en *Entry) Text() string {
	pods := orAddr(en.SrcPod, "-") + " → " + orAddr(en.DstPod, "-")
	lost := ""
	if en.Lost > 0 {
		lost = fmt.Sprintf(" (%d records lost before this one)", en.Lost)
	}
	return fmt.Sprintf("%s %s %-7s %s %s → %s  %s  %s  %s  gen %d  %s%s",
		en.Time.Format("15:04:05.000000"), en.Node, en.Hook, en.Proto, en.Src, en.Dst, pods,
		strings.ToUpper(en.Verdict), en.Why, en.Generation, time.Duration(en.LatencyNs), lost)
}
