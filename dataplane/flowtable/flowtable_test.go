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
	ipNode = netip.MustParseAddr("192.168.0.1")
)

// testRuleset: pod A egress allows TCP 80 to B only; pod B ingress allows
// TCP 80 from A only.
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
	}
	return ruleset.New(pods, []ruleset.Policy{{Namespace: "default", Name: "p"}}, []int32{ruleset.NoIdentity, ruleset.NoIdentity})
}

func TestDecide(t *testing.T) {
	rs := testRuleset()
	var c Classifier
	c.SetNodeAddrs([]netip.Addr{ipNode})
	tests := []struct {
		name     string
		hook     xdpprog.Hook
		src, dst netip.Addr
		port     uint16
		want     bool
	}{
		{"A egress to B:80", xdpprog.HookEgress, ipA, ipB, 80, true},
		{"A egress to B:81", xdpprog.HookEgress, ipA, ipB, 81, false},
		{"A egress to node", xdpprog.HookEgress, ipA, ipNode, 80, false},
		{"B ingress from A:80", xdpprog.HookIngress, ipA, ipB, 80, true},
		{"B ingress from A:22", xdpprog.HookIngress, ipA, ipB, 22, false},
		{"B ingress from node (always allowed)", xdpprog.HookIngress, ipNode, ipB, 22, true},
		{"B egress (not isolated)", xdpprog.HookEgress, ipB, ipA, 5, true},
		{"unknown pod fails closed", xdpprog.HookEgress, netip.MustParseAddr("10.9.9.9"), ipB, 80, false},
	}
	for _, tc := range tests {
		if got := c.Decide(rs, tc.hook, 6, tc.src, tc.dst, tc.port).Allowed; got != tc.want {
			t.Errorf("%s: allowed=%v, want %v", tc.name, got, tc.want)
		}
	}
	if c.Decide(nil, xdpprog.HookEgress, 6, ipB, ipA, 5).Allowed {
		t.Error("nil ruleset allowed a flow")
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
		_ = ReplyKey(&k)
	})
	if n != 0 {
		t.Errorf("%v allocations per decode+verdict, want 0", n)
	}
	if allowed == 0 {
		t.Error("verdict never allowed the flow")
	}
}
