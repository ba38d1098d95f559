package flowtable

import (
	"net/netip"
	"testing"

	"github.com/xdpolicy/xdpolicy/dataplane/packet"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

var (
	ipA    = netip.MustParseAddr("10.0.0.1")
	ipB    = netip.MustParseAddr("10.0.0.2")
	ipC    = netip.MustParseAddr("10.0.0.3")
	ipD    = netip.MustParseAddr("10.0.0.4")
	ipNode = netip.MustParseAddr("192.168.0.1")
	ipSvc  = netip.MustParseAddr("10.96.0.10")
)

// testRuleset: pod A egress allows TCP 80 to B only; pod B ingress allows
// TCP 80 from A only; pods C (a client) and D (a backend) are not isolated;
// ipSvc is a Service ClusterIP.
func testRuleset() *ruleset.Ruleset {
	to := func(dir ruleset.Direction, peer netip.Addr) *ruleset.Table {
		return ruleset.NewTable(dir, []int32{0}, []ruleset.ClauseSpec{{
			Blocks: []ruleset.Block{{Prefix: netip.PrefixFrom(peer, 32)}},
			Ports:  []ruleset.PortRange{{Proto: ruleset.TCP, Lo: 80, Hi: 80}},
		}})
	}
	pods := []ruleset.Pod{
		{Namespace: "default", Name: "a", Node: "n", IPs: []netip.Addr{ipA}, Tables: [2]*ruleset.Table{ruleset.Egress: to(ruleset.Egress, ipB)}},
		{Namespace: "default", Name: "b", Node: "n", IPs: []netip.Addr{ipB}, Tables: [2]*ruleset.Table{ruleset.Ingress: to(ruleset.Ingress, ipA)}},
		{Namespace: "default", Name: "c", Node: "n", IPs: []netip.Addr{ipC}},
		{Namespace: "default", Name: "d", Node: "other", IPs: []netip.Addr{ipD}},
		{Namespace: "default", Name: "host", Node: "n", IPs: []netip.Addr{ipNode}, HostNetwork: true},
	}
	none := int32(ruleset.NoIdentity)
	rs := ruleset.New(pods, []ruleset.Policy{{Namespace: "default", Name: "p"}}, []int32{none, none, none, none, none})
	rs.SetServiceIPs([]netip.Addr{ipSvc})
	return rs
}

func TestDecide(t *testing.T) {
	rs := testRuleset()
	var c Classifier
	c.SetNodeAddrs([]netip.Addr{ipNode})
	const (
		leaving  = xdpprog.HookEgress
		entering = xdpprog.HookIngress
	)
	tests := []struct {
		name       string
		hook       xdpprog.Hook
		src, dst   netip.Addr
		port       uint16
		want       bool
		wantReason ruleset.Reason
		// wantDir is the direction of the table that decided, when one did.
		wantDir ruleset.Direction
	}{
		{"A egress to B:80", leaving, ipA, ipB, 80, true, ruleset.RuleMatched, ruleset.Egress},
		{"A egress to B:81", leaving, ipA, ipB, 81, false, ruleset.NoRuleMatched, ruleset.Egress},
		{"A egress to node", leaving, ipA, ipNode, 80, false, ruleset.NoRuleMatched, ruleset.Egress},
		{"B ingress from A:80", entering, ipA, ipB, 80, true, ruleset.RuleMatched, ruleset.Ingress},
		{"B ingress from A:22", entering, ipA, ipB, 22, false, ruleset.NoRuleMatched, ruleset.Ingress},
		{"B ingress from node (always allowed)", entering, ipNode, ipB, 22, true, ruleset.HostNetwork, 0},
		{"B egress (not isolated)", leaving, ipB, ipA, 5, true, ruleset.NotIsolated, 0},
		{"unknown pod fails closed", leaving, netip.MustParseAddr("10.9.9.9"), ipB, 80, false, ruleset.UnknownPod, 0},

		// Services: deferred at the leaving hook, decided at the backend.
		{"A egress to ClusterIP:443 is deferred", leaving, ipA, ipSvc, 443, true, ruleset.Deferred, 0},
		{"A egress to ClusterIP (4-in-6) is deferred", leaving, ipA, netip.AddrFrom16(ipSvc.As16()), 443, true, ruleset.Deferred, 0},
		{"C (egress not isolated) to ClusterIP", leaving, ipC, ipSvc, 443, true, ruleset.NotIsolated, 0},
		{"A→D after DNAT: A's egress denies D", entering, ipA, ipD, 8080, false, ruleset.NoRuleMatched, ruleset.Egress},
		{"A→B after DNAT to port 80: both sides allow", entering, ipA, ipB, 80, true, ruleset.RuleMatched, ruleset.Ingress},
		{"A→B after DNAT to port 81: ingress denies first", entering, ipA, ipB, 81, false, ruleset.NoRuleMatched, ruleset.Ingress},
		{"C→D: neither side isolated", entering, ipC, ipD, 8080, true, ruleset.NotIsolated, 0},
		{"C→B: ingress of B denies", entering, ipC, ipB, 80, false, ruleset.NoRuleMatched, ruleset.Ingress},
		{"external source to D: no egress to check", entering, netip.MustParseAddr("203.0.113.9"), ipD, 80, true, ruleset.NotIsolated, 0},
		{"node to D (always allowed)", entering, ipNode, ipD, 22, true, ruleset.HostNetwork, 0},
		{"hostNetwork pod to ClusterIP", leaving, ipNode, ipSvc, 443, true, ruleset.HostNetwork, 0},
	}
	for _, tc := range tests {
		v := c.Decide(rs, tc.hook, 6, tc.src, tc.dst, tc.port)
		if v.Allowed != tc.want || v.Reason != tc.wantReason {
			t.Errorf("%s: allowed=%v reason=%v, want %v %v", tc.name, v.Allowed, v.Reason, tc.want, tc.wantReason)
			continue
		}
		if v.Table != nil && v.Table.Dir != tc.wantDir {
			t.Errorf("%s: decided by the %v table, want %v", tc.name, v.Table.Dir, tc.wantDir)
		}
	}
	if c.Decide(nil, xdpprog.HookEgress, 6, ipB, ipA, 5).Allowed {
		t.Error("nil ruleset allowed a flow")
	}
	if ruleset.Deferred.String() != "deferred-to-destination" {
		t.Errorf("Deferred.String() = %q", ruleset.Deferred.String())
	}
	// Once the Service is gone its address is an ordinary external one.
	plain := testRuleset()
	plain.SetServiceIPs(nil)
	if v := c.Decide(plain, leaving, 6, ipA, ipSvc, 443); v.Allowed || v.Reason != ruleset.NoRuleMatched {
		t.Errorf("A to a former ClusterIP: %+v, want denied by A's egress", v)
	}
}

// A deferred flow is cached with the reply entry the leaving hook's veth
// really sees: kube-proxy un-DNATs the answer, so it comes from the
// ClusterIP. Revalidating both entries keeps the flow deferred.
func TestDeferredReplyKey(t *testing.T) {
	rs := testRuleset()
	var c Classifier
	client, svc := netip.AddrPortFrom(ipA, 40000), netip.AddrPortFrom(ipSvc, 443)
	k := xdpprog.NewFlowKey(xdpprog.HookEgress, 6, 7, client, svc)
	want := xdpprog.NewFlowKey(xdpprog.HookIngress, 6, 7, svc, client)
	if r := ReplyKey(&k); r != want {
		t.Fatalf("ReplyKey = %+v, want %+v (from the ClusterIP)", r, want)
	}
	for _, tc := range []struct {
		k     xdpprog.FlowKey
		reply bool
	}{{k, false}, {want, true}} {
		if v := c.DecideKey(rs, &tc.k, tc.reply); !v.Allowed || v.Reason != ruleset.Deferred {
			t.Errorf("DecideKey(reply=%v) = %+v, want deferred", tc.reply, v)
		}
	}
	// At the backend (post-DNAT) the reply entry is re-decided with A's
	// egress: D is not allowed.
	back := xdpprog.NewFlowKey(xdpprog.HookEgress, 6, 9, netip.AddrPortFrom(ipD, 8080), client)
	if v := c.DecideKey(rs, &back, true); v.Allowed {
		t.Errorf("backend reply entry re-decided as allowed: %+v", v)
	}
}

func TestDefersEgress(t *testing.T) {
	rs := testRuleset()
	if !rs.DefersEgress() {
		t.Error("Services and an egress-isolated pod: DefersEgress = false")
	}
	rs.SetServiceIPs(nil)
	if rs.DefersEgress() {
		t.Error("no Services: DefersEgress = true")
	}
}

func TestReplyKey(t *testing.T) {
	src, dst := netip.AddrPortFrom(ipA, 40000), netip.AddrPortFrom(ipB, 80)
	k := xdpprog.NewFlowKey(xdpprog.HookEgress, 6, 7, src, dst)
	r := ReplyKey(&k)
	want := xdpprog.NewFlowKey(xdpprog.HookIngress, 6, 7, dst, src)
	if r != want {
		t.Fatalf("ReplyKey = %+v, want %+v", r, want)
	}
	if rr := ReplyKey(&r); rr != k {
		t.Fatalf("ReplyKey twice = %+v, want the original %+v", rr, k)
	}
	// The reply entry is re-decided as the flow it answers: A→B:80 at A's
	// leaving hook, allowed, whereas B→A:40000 at A's entering hook would
	// be decided by A's (non-isolated) ingress.
	rs := testRuleset()
	var c Classifier
	if !c.DecideKey(rs, &r, true).Allowed {
		t.Error("reply entry of an allowed flow re-decided as denied")
	}
	k2 := xdpprog.NewFlowKey(xdpprog.HookEgress, 6, 7, src, netip.AddrPortFrom(ipB, 81))
	r2 := ReplyKey(&k2)
	if c.DecideKey(rs, &r2, true).Allowed {
		t.Error("reply entry of a denied flow re-decided as allowed")
	}
}

// Decode + key + verdict, the per-packet work of a worker, allocates
// nothing.
func TestDecodeVerdictNoAllocs(t *testing.T) {
	frame := make([]byte, 14+20+20)
	frame[12], frame[13] = 0x08, 0x00
	ip := frame[14:]
	ip[0], ip[3], ip[9] = 0x45, 40, 6
	copy(ip[12:], ipA.AsSlice())
	copy(ip[16:], ipB.AsSlice())
	tcp := ip[20:]
	tcp[0], tcp[1], tcp[2], tcp[3] = 0x9c, 0x40, 0, 80
	rs := testRuleset()
	var c Classifier
	c.SetNodeAddrs([]netip.Addr{ipNode})
	var p packet.Parsed
	var k xdpprog.FlowKey
	allowed := 0
	n := testing.AllocsPerRun(1000, func() {
		if !p.Decode(frame) {
			panic("decode")
		}
		k = xdpprog.NewFlowKey(xdpprog.HookEgress, p.Proto, 7, netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
		if c.Decide(rs, xdpprog.HookEgress, p.Proto, p.Src, p.Dst, p.DstPort).Allowed {
			allowed++
		}
		if c.Decide(rs, xdpprog.HookEgress, p.Proto, p.Src, ipSvc, p.DstPort).Reason != ruleset.Deferred ||
			c.Decide(rs, xdpprog.HookIngress, p.Proto, p.Src, ipD, p.DstPort).Allowed {
			panic("service verdicts")
		}
		_ = ReplyKey(&k)
	})
	if n != 0 {
		t.Errorf("%v allocations per decode+verdict, want 0", n)
	}
	if allowed == 0 {
		t.Error("verdict never allowed the flow")
	}
}
