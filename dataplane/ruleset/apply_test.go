package ruleset_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Apply derives a snapshot without touching the one it derives from: a pod
// added, one deleted (a tombstone), an address moved, Service addresses
// added and removed; both answer for themselves.
func TestApply(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::3")
	svc1, svc2 := netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.96.0.2")
	pods := []ruleset.Pod{{Namespace: "n", Name: "a", IPs: []netip.Addr{a}}, {Namespace: "n", Name: "b", IPs: []netip.Addr{b}}}
	old := ruleset.New(pods, nil, []int32{0, 1})
	old.SetServiceIPs([]netip.Addr{svc1})

	next := slices.Clone(old.Pods)
	next[0] = ruleset.Pod{} // a deleted
	next = append(next, ruleset.Pod{Namespace: "n", Name: "c", IPs: []netip.Addr{a, c}})
	rs := old.Apply(ruleset.Patch{
		Pods:     next,
		Idents:   map[ruleset.PodID]int32{0: ruleset.NoIdentity, 2: 5},
		Addrs:    map[netip.Addr]ruleset.PodID{a: 2, c: 2},
		Services: map[netip.Addr]bool{svc1: false, svc2: true},
	})

	for _, tc := range []struct {
		rs      *ruleset.Ruleset
		addr    netip.Addr
		pod     ruleset.PodID
		ok      bool
		ident   int32
		service bool
	}{
		{old, a, 0, true, 0, false},
		{old, b, 1, true, 1, false},
		{old, c, 0, false, ruleset.NoIdentity, false},
		{old, svc1, 0, false, ruleset.NoIdentity, true},
		{old, svc2, 0, false, ruleset.NoIdentity, false},
		{rs, a, 2, true, 5, false},
		{rs, b, 1, true, 1, false},
		{rs, c, 2, true, 5, false},
		{rs, svc1, 0, false, ruleset.NoIdentity, false},
		{rs, svc2, 0, false, ruleset.NoIdentity, true},
	} {
		name := "old"
		if tc.rs == rs {
			name = "derived"
		}
		if p, ok := tc.rs.PodByIP(tc.addr); ok != tc.ok || (ok && p != tc.pod) {
			t.Errorf("%s: PodByIP(%v) = %d, %v; want %d, %v", name, tc.addr, p, ok, tc.pod, tc.ok)
		}
		if id := tc.rs.Identity(tc.addr); id != tc.ident {
			t.Errorf("%s: Identity(%v) = %d, want %d", name, tc.addr, id, tc.ident)
		}
		if s := tc.rs.IsServiceIP(tc.addr); s != tc.service {
			t.Errorf("%s: IsServiceIP(%v) = %v, want %v", name, tc.addr, s, tc.service)
		}
	}
	if len(old.Pods) != 2 || old.Pods[0].Name != "a" {
		t.Errorf("old snapshot's pods changed: %v", old.Pods)
	}
}

// WithIdentities copies only what it changes: the table it was given
// answers as before, the copy with the new rows, in the identity chunks
// it touched (an identity beyond the table's array included) and the ones
// it shares.
func TestWithIdentities(t *testing.T) {
	web := netip.MustParseAddr("10.0.0.9")
	tb := ruleset.NewTable(ruleset.Ingress, []int32{0}, []ruleset.ClauseSpec{
		{Clause: ruleset.Clause{Policy: 0, Rule: 0}, Idents: []uint32{1, 130}, AllPorts: true},
		{Clause: ruleset.Clause{Policy: 0, Rule: 1}, Idents: []uint32{2}, Ports: []ruleset.PortRange{{Proto: ruleset.TCP, Lo: 80, Hi: 80}}},
	})
	nt := tb.WithIdentities([]uint32{1, 2, 700}, []ruleset.Bits{nil, {0b11}, {0b10}})
	for _, tc := range []struct {
		t     *ruleset.Table
		ident int32
		port  uint16
		want  int32
	}{
		{tb, 1, 22, 0}, {tb, 2, 80, 1}, {tb, 2, 22, -1}, {tb, 130, 22, 0}, {tb, 700, 80, -1}, {tb, ruleset.NoIdentity, 80, -1},
		{nt, 1, 22, -1}, {nt, 2, 22, 0}, {nt, 2, 80, 0}, {nt, 130, 22, 0}, {nt, 700, 80, 1}, {nt, 700, 22, -1}, {nt, ruleset.NoIdentity, 80, -1},
	} {
		if got := tc.t.Match(tc.ident, web, ruleset.TCP, tc.port); got != tc.want {
			t.Errorf("table %p identity %d port %d: clause %d, want %d", tc.t, tc.ident, tc.port, got, tc.want)
		}
	}
	if got := nt.IdentityClauses(2).Indices(); !slices.Equal(got, []int32{0, 1}) {
		t.Errorf("IdentityClauses(2) = %v, want [0 1]", got)
	}
	if n := testing.AllocsPerRun(100, func() { nt.Match(700, web, ruleset.TCP, 80) }); n != 0 {
		t.Errorf("Match allocates %v times", n)
	}
}
