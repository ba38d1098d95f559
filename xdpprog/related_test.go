package xdpprog

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// fragments returns the first and a later fragment of one UDP datagram from
// src to dst (5000 -> 6000) with fragment id id, caught entering the pod.
func fragments(t testing.TB, v6 bool, id uint32) (first, later []byte) {
	in := HookIngress
	if v6 {
		hdr := func(offset uint16, more bool) []byte {
			b := ipv6Frag(17, offset, more)
			b[4], b[5], b[6], b[7] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
			return b
		}
		first = serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6Fragment),
			gopacket.Payload(hdr(0, true)), &layers.UDP{SrcPort: 5000, DstPort: 6000}, gopacket.Payload(make([]byte, 1224)))
		later = serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6Fragment),
			gopacket.Payload(hdr(1232, false)), gopacket.Payload(make([]byte, 100)))
		return first, later
	}
	f := withMoreFragments(ip4(peerIP, podIP, layers.IPProtocolUDP))
	f.Id = uint16(id)
	first = serialize(t, eth(in, layers.EthernetTypeIPv4), f, &layers.UDP{SrcPort: 5000, DstPort: 6000}, gopacket.Payload(make([]byte, 1472)))
	l := withFragOffset(ip4(peerIP, podIP, layers.IPProtocolUDP), 185)
	l.Id = uint16(id)
	later = serialize(t, eth(in, layers.EthernetTypeIPv4), l, gopacket.Payload(make([]byte, 100)))
	return first, later
}

// TestFragments checks that a later fragment, which has no L4 header, is
// keyed as its datagram's first fragment (so it gets the same cached
// verdict, or is punted with it), and dropped when no first fragment was
// seen.
func TestFragments(t *testing.T) {
	requireBPF(t)
	in := HookIngress
	for _, v6 := range []bool{false, true} {
		name, peer, pod := "ipv4", peerIP, podIP
		if v6 {
			name, peer, pod = "ipv6", peerIP6, podIP6
		}
		key := NewFlowKey(in, 17, testIfindex, netip.AddrPortFrom(peer, 5000), netip.AddrPortFrom(pod, 6000))
		t.Run(name, func(t *testing.T) {
			t.Run("orphan later fragment is dropped", func(t *testing.T) {
				f := newFixture(t)
				f.putFlow(key, VerdictAllow, 3)
				_, later := fragments(t, v6, 7)
				ret, _, moved := f.run(in, later, 0)
				wantRet(t, ret, actShot)
				wantCounters(t, moved, CounterDropFragOrphan)
				if n, err := f.PodDropCount(testIfindex); err != nil || n != 1 {
					t.Errorf("pod drops = %d, %v; want 1", n, err)
				}
			})
			t.Run("later fragment follows the first", func(t *testing.T) {
				f := newFixture(t)
				first, later := fragments(t, v6, 7)
				// Both miss: both punted, the later one under the first's
				// ports (the worker reads them from frags too).
				ret, out, _ := f.run(in, first, 0)
				wantPunted(t, in, ret, first, out)
				var fv FragVal
				fk := FragKey{Hook: uint8(in), Proto: 17, Ifindex: testIfindex, Id: 7, Saddr: key.Saddr, Daddr: key.Daddr}
				if err := f.Frags.Lookup(&fk, &fv); err != nil {
					t.Fatalf("frags has no entry for the first fragment: %v", err)
				}
				if fv.Sport != key.Sport || fv.Dport != key.Dport {
					t.Errorf("frags entry ports %d/%d, want %d/%d", fv.Sport, fv.Dport, key.Sport, key.Dport)
				}
				ret, out, _ = f.run(in, later, 0)
				wantPunted(t, in, ret, later, out)

				f.putFlow(key, VerdictAllow, 3)
				for _, fr := range [][]byte{first, later} {
					ret, _, moved := f.run(in, fr, 0)
					wantRet(t, ret, actPass)
					wantCounters(t, moved, CounterPassCached)
				}
				f.putFlow(key, VerdictDeny, 3)
				ret, _, moved := f.run(in, later, 0)
				wantRet(t, ret, actShot)
				wantCounters(t, moved, CounterDropCached)
				// Another datagram's later fragment is an orphan.
				_, other := fragments(t, v6, 8)
				ret, _, moved = f.run(in, other, 0)
				wantRet(t, ret, actShot)
				wantCounters(t, moved, CounterDropFragOrphan)
			})
		})
	}
}

// icmpError returns an ICMP(v6) error of type/code sent by from to the pod
// about a packet the pod sent to peer (inner is its L4 layer), caught
// entering the pod.
func icmpError(t testing.TB, from netip.Addr, typ, code uint8, inner ...gopacket.SerializableLayer) []byte {
	in := HookIngress
	var ls []gopacket.SerializableLayer
	if from.Is4() {
		orig := serialize(t, append([]gopacket.SerializableLayer{ip4(podIP, peerIP, innerProto(inner[0]))}, inner...)...)
		ls = []gopacket.SerializableLayer{eth(in, layers.EthernetTypeIPv4), ip4(from, podIP, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}, gopacket.Payload(orig[:28])}
	} else {
		orig := serialize(t, append([]gopacket.SerializableLayer{ip6(podIP6, peerIP6, innerProto(inner[0]))}, inner...)...)
		ls = []gopacket.SerializableLayer{eth(in, layers.EthernetTypeIPv6), ip6(from, podIP6, layers.IPProtocolICMPv6),
			&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}, gopacket.Payload(make([]byte, 4)), gopacket.Payload(orig[:48])}
	}
	return serialize(t, ls...)
}

func innerProto(l gopacket.SerializableLayer) layers.IPProtocol {
	switch l.(type) {
	case *layers.TCP:
		return layers.IPProtocolTCP
	case *layers.UDP:
		return layers.IPProtocolUDP
	case *layers.ICMPv4:
		return layers.IPProtocolICMPv4
	}
	return layers.IPProtocolICMPv6
}

// TestICMPErrors checks that an ICMP error about a flow with a cached allow
// passes as related, whoever sent it, and that any other ICMP is decided by
// policy as ICMP (the cache of its own key, or a punt).
func TestICMPErrors(t *testing.T) {
	requireBPF(t)
	in := HookIngress
	router, router6 := netip.MustParseAddr("192.168.9.1"), netip.MustParseAddr("fd00:9::1")
	udp := func() *layers.UDP { return &layers.UDP{SrcPort: 6000, DstPort: 5000} }
	tcp := func() *layers.TCP { return &layers.TCP{SrcPort: 6000, DstPort: 5000, ACK: true} }
	// The reply keys of the pod's flows to its peer at the entering hook.
	reply := func(proto uint8, peer, pod netip.Addr, sport, dport uint16) FlowKey {
		return NewFlowKey(in, proto, testIfindex, netip.AddrPortFrom(peer, sport), netip.AddrPortFrom(pod, dport))
	}
	tests := []struct {
		name    string
		frame   []byte
		related FlowKey // the reply key of the flow the error is about
		outer   FlowKey // the error's own key as ICMP
	}{
		{"port unreachable from the peer", icmpError(t, peerIP, 3, 3, udp()),
			reply(17, peerIP, podIP, 5000, 6000), reply(1, peerIP, podIP, 0, 0)},
		{"fragmentation needed from a router", icmpError(t, router, 3, 4, tcp()),
			reply(6, peerIP, podIP, 5000, 6000), reply(1, router, podIP, 0, 0)},
		{"time exceeded about an echo request", icmpError(t, router, 11, 0,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1}),
			reply(1, peerIP, podIP, 0, 0), reply(1, router, podIP, 0, 0)},
		{"parameter problem", icmpError(t, peerIP, 12, 0, udp()),
			reply(17, peerIP, podIP, 5000, 6000), reply(1, peerIP, podIP, 0, 0)},
		{"icmp6 port unreachable", icmpError(t, peerIP6, 1, 4, udp()),
			reply(17, peerIP6, podIP6, 5000, 6000), reply(58, peerIP6, podIP6, 0, 0)},
		{"icmp6 packet too big from a router", icmpError(t, router6, 2, 0, tcp()),
			reply(6, peerIP6, podIP6, 5000, 6000), reply(58, router6, podIP6, 0, 0)},
		{"icmp6 time exceeded", icmpError(t, router6, 3, 0, udp()),
			reply(17, peerIP6, podIP6, 5000, 6000), reply(58, router6, podIP6, 0, 0)},
		{"icmp6 parameter problem", icmpError(t, peerIP6, 4, 1, tcp()),
			reply(6, peerIP6, podIP6, 5000, 6000), reply(58, peerIP6, podIP6, 0, 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			// No flow: decided as ICMP, so punted.
			ret, out, _ := f.run(in, tc.frame, 0)
			wantPunted(t, in, ret, tc.frame, out)
			// An allowed flow of an older generation is no proof.
			f.putFlow(tc.related, VerdictAllow, 2)
			ret, out, _ = f.run(in, tc.frame, 0)
			wantPunted(t, in, ret, tc.frame, out)
			// A denied one neither; then the ICMP's own cached deny holds.
			f.putFlow(tc.related, VerdictDeny, 3)
			f.putFlow(tc.outer, VerdictDeny, 3)
			ret, _, moved := f.run(in, tc.frame, 0)
			wantRet(t, ret, actShot)
			wantCounters(t, moved, CounterDropCached)
			// The flow allowed now: related, whatever ICMP's own verdict.
			f.putFlow(tc.related, VerdictAllow, 3)
			ret, _, moved = f.run(in, tc.frame, 0)
			wantRet(t, ret, actPass)
			wantCounters(t, moved, CounterPassRelated)
		})
	}
	t.Run("echo request is no error", func(t *testing.T) {
		f := newFixture(t)
		frame := serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1},
			gopacket.Payload(make([]byte, 28)))
		f.putFlow(reply(1, peerIP, podIP, 0, 0), VerdictDeny, 3)
		ret, _, moved := f.run(in, frame, 0)
		wantRet(t, ret, actShot)
		wantCounters(t, moved, CounterDropCached)
	})
}
