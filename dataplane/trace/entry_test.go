package trace

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

var (
	ipA = netip.MustParseAddr("10.0.0.1")
	ipB = netip.MustParseAddr("10.0.0.2")
	ipC = netip.MustParseAddr("10.0.0.3")
)

// testRuleset: policy 0 (default/allow-a) selects b for ingress and admits
// TCP 80 from a (rule 0); c is not isolated.
func testRuleset() *ruleset.Ruleset {
	t := ruleset.NewTable(ruleset.Ingress, []int32{0, 1}, []ruleset.ClauseSpec{{
		Clause: ruleset.Clause{Policy: 0, Rule: 0},
		Blocks: []ruleset.Block{{Prefix: netip.PrefixFrom(ipA, 32)}},
		Ports:  []ruleset.PortRange{{Proto: ruleset.TCP, Lo: 80, Hi: 80}},
	}})
	pods := []ruleset.Pod{
		{Namespace: "ns1", Name: "a", IPs: []netip.Addr{ipA}},
		{Namespace: "ns2", Name: "b", IPs: []netip.Addr{ipB}, Tables: [2]*ruleset.Table{ruleset.Ingress: t}},
		{Namespace: "ns1", Name: "c", IPs: []netip.Addr{ipC}},
	}
	none := int32(ruleset.NoIdentity)
	rs := ruleset.New(pods, []ruleset.Policy{{Namespace: "ns2", Name: "allow-a"}, {Namespace: "ns2", Name: "deny-all"}}, []int32{none, none, none})
	rs.Generation = 3
	return rs
}

func TestResolve(t *testing.T) {
	rs := testRuleset()
	var h History
	h.Remember(rs)
	decide := func(src, dst netip.Addr, port uint16) Event {
		id, _ := rs.PodByIP(dst)
		v := rs.Verdict(id, ruleset.Ingress, src, ruleset.TCP, port)
		dir := ruleset.Ingress
		if v.Table != nil {
			dir = v.Table.Dir
		}
		return Event{Generation: 3, Src: src, Dst: dst, Sport: 40000, Dport: port, Proto: 6, Hook: 2,
			Allowed: v.Allowed, Reason: v.Reason, Dir: dir, Clause: v.Clause}
	}
	tests := []struct {
		e       Event
		verdict string
		why     string
	}{
		{decide(ipA, ipB, 80), "allow", "ns2/allow-a ingress[0]"},
		{decide(ipC, ipB, 80), "deny", "ingress of ns2/b selected by ns2/allow-a, ns2/deny-all, no rule matched"},
		{decide(ipB, ipC, 80), "allow", "ingress of ns1/c not isolated"},
	}
	for _, tc := range tests {
		en := Resolve("node-1", &tc.e, &h)
		if en.Verdict != tc.verdict || en.Why != tc.why {
			t.Errorf("%s → %s: %s %q, want %s %q", tc.e.Src, tc.e.Dst, en.Verdict, en.Why, tc.verdict, tc.why)
		}
		if en.SrcPod == "" || en.DstPod == "" || en.Node != "node-1" {
			t.Errorf("pods or node not named: %+v", en)
		}
		if !strings.Contains(en.Text(), strings.ToUpper(tc.verdict)) {
			t.Errorf("text %q", en.Text())
		}
	}
	en := Resolve("node-1", &tests[0].e, &h)
	if en.Policy != "ns2/allow-a" || en.Rule == nil || *en.Rule != 0 || en.Pod != "ns2/b" {
		t.Errorf("allow entry: %+v", en)
	}
	old := tests[0].e
	old.Generation = 2
	if en := Resolve("node-1", &old, &h); !strings.Contains(en.Why, "no longer kept") {
		t.Errorf("unknown generation: %q", en.Why)
	}
}

func TestHistoryBounded(t *testing.T) {
	var h History
	for g := uint64(1); g <= 20; g++ {
		rs := testRuleset()
		rs.Generation = g
		h.Remember(rs)
	}
	if h.Get(20) == nil || h.Get(13) == nil || h.Get(12) != nil || h.Current().Generation != 20 {
		t.Errorf("history keeps the wrong snapshots")
	}
}

func TestFilter(t *testing.T) {
	en := Entry{SrcPod: "ns1/a", DstPod: "ns2/b", Verdict: "deny"}
	tests := []struct {
		q    string
		want bool
		bad  bool
	}{
		{"", true, false},
		{"pod=ns1/a", true, false},
		{"pod=ns2/b", true, false},
		{"pod=ns1/b", false, false},
		{"namespace=ns2", true, false},
		{"namespace=ns3", false, false},
		{"verdict=deny", true, false},
		{"verdict=allow", false, false},
		{"verdict=DENY&namespace=ns1", true, false},
		{"verdict=maybe", false, true},
		{"pod=a", false, true},
	}
	for _, tc := range tests {
		q, _ := url.ParseQuery(tc.q)
		f, err := ParseFilter(q)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v", tc.q, err)
			continue
		}
		if err == nil && f.Match(&en) != tc.want {
			t.Errorf("%q: match %v, want %v", tc.q, !tc.want, tc.want)
		}
		if err == nil {
			if g, _ := ParseFilter(f.Query()); g != f {
				t.Errorf("%q: Query round trip %+v", tc.q, g)
			}
		}
	}
}
