package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

func ser(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	for _, l := range ls {
		if n, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			for _, m := range ls {
				if nl, ok := m.(gopacket.NetworkLayer); ok {
					n.SetNetworkLayerForChecksum(nl)
				}
			}
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: typ}
}

func v4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
}

func v6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next,
		SrcIP: netip.MustParseAddr("fd00::1").AsSlice(), DstIP: netip.MustParseAddr("fd00::2").AsSlice()}
}

func TestDecode(t *testing.T) {
	payload := gopacket.Payload([]byte("hello"))
	frag := v4(layers.IPProtocolUDP)
	frag.FragOffset = 10
	vlan := &layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4}
	e8021q := eth(layers.EthernetTypeDot1Q)
	hop := &layers.IPv6HopByHop{}
	hop.NextHeader = layers.IPProtocolTCP
	hop.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
	tests := []struct {
		name      string
		frame     []byte
		ok, nd    bool
		proto     uint8
		src, dst  string
		sp, dp    uint16
		laterFrag bool
	}{
		{"v4 tcp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true}), true, false, ProtoTCP, "10.0.0.1", "10.0.0.2", 1234, 80, false},
		{"v4 udp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 53, DstPort: 5353}, payload), true, false, ProtoUDP, "10.0.0.1", "10.0.0.2", 53, 5353, false},
		{"v4 sctp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolSCTP), &layers.SCTP{SrcPort: 7, DstPort: 9}), true, false, ProtoSCTP, "10.0.0.1", "10.0.0.2", 7, 9, false},
		{"v4 icmp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}), true, false, ProtoICMP, "10.0.0.1", "10.0.0.2", 0, 0, false},
		{"v4 later fragment", ser(t, eth(layers.EthernetTypeIPv4), frag, payload), true, false, ProtoUDP, "10.0.0.1", "10.0.0.2", 0, 0, true},
		{"vlan v4 udp", ser(t, e8021q, vlan, v4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 1, DstPort: 2}), true, false, ProtoUDP, "10.0.0.1", "10.0.0.2", 1, 2, false},
		{"v6 tcp", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 443}), true, false, ProtoTCP, "fd00::1", "fd00::2", 1, 443, false},
		{"v6 hop-by-hop tcp", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolIPv6HopByHop), hop, &layers.TCP{SrcPort: 3, DstPort: 4}), true, false, ProtoTCP, "fd00::1", "fd00::2", 3, 4, false},
		{"v6 nd", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(135, 0)}, gopacket.Payload(make([]byte, 20))), true, true, ProtoICMPv6, "fd00::1", "fd00::2", 0, 0, false},
		{"arp", ser(t, eth(layers.EthernetTypeARP), &layers.ARP{AddrType: 1, Protocol: 0x800, HwAddressSize: 6, ProtAddressSize: 4, SourceHwAddress: macA, SourceProtAddress: []byte{1, 2, 3, 4}, DstHwAddress: macB, DstProtAddress: []byte{1, 2, 3, 5}}), false, false, 0, "", "", 0, 0, false},
		{"short", []byte{1, 2, 3}, false, false, 0, "", "", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Parsed
			ok := p.Decode(tc.frame)
			if ok != tc.ok {
				t.Fatalf("Decode = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if p.ND != tc.nd || p.Proto != tc.proto || p.Src.String() != tc.src || p.Dst.String() != tc.dst ||
				p.SrcPort != tc.sp || p.DstPort != tc.dp || p.LaterFragment != tc.laterFrag {
				t.Errorf("got %+v", p)
			}
		})
	}
	// Truncation anywhere inside the headers is never OK and never panics.
	full := tests[0].frame
	for n := 0; n < 14+20+20; n++ {
		var p Parsed
		if p.Decode(full[:n]) {
			t.Errorf("truncated to %d bytes: decoded", n)
		}
	}
}

// partialize turns a frame's full L4 checksum into what a veth pod sends
// with checksum offload: the folded pseudo-header sum only.
func partialize(frame []byte, p *Parsed, field int) {
	seg := frame[p.L4Off:p.End]
	var acc uint64
	ip := frame[p.L3Off:]
	if p.Version == 4 {
		acc = sum(0, ip[12:20])
	} else {
		acc = sum(0, ip[8:40])
	}
	acc += uint64(p.Proto) + uint64(len(seg))
	binary.BigEndian.PutUint16(seg[field:], fold(acc))
}

func TestCompleteChecksum(t *testing.T) {
	big := gopacket.Payload(make([]byte, 1001))
	for i := range big {
		big[i] = byte(i * 7)
	}
	tests := []struct {
		name  string
		frame []byte
		field int
	}{
		{"v4 tcp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2, ACK: true, Window: 100}, big), 16},
		{"v4 udp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 1, DstPort: 2}, big), 6},
		{"v6 tcp", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2, PSH: true}, big), 16},
		{"v6 udp", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolUDP), &layers.UDP{SrcPort: 1, DstPort: 2}, big[:3]), 6},
		{"v4 sctp", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolSCTP), &layers.SCTP{SrcPort: 1, DstPort: 2}, big[:40]), 8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := append([]byte(nil), tc.frame...)
			var p Parsed
			if !p.Decode(tc.frame) {
				t.Fatal("decode")
			}
			got := append([]byte(nil), tc.frame...)
			if p.Proto == ProtoSCTP {
				copy(got[p.L4Off+8:], []byte{0, 0, 0, 0}) // CRC offload leaves it empty
			} else {
				partialize(got, &p, tc.field)
			}
			if !CompleteChecksum(got, &p) {
				t.Fatal("CompleteChecksum = false")
			}
			off := p.L4Off + tc.field
			w := 2
			if p.Proto == ProtoSCTP {
				w = 4
			}
			if string(got[off:off+w]) != string(want[off:off+w]) {
				t.Errorf("checksum % x, gopacket computed % x", got[off:off+w], want[off:off+w])
			}
		})
	}
	frag := v4(layers.IPProtocolUDP)
	frag.Flags = layers.IPv4MoreFragments
	f := ser(t, eth(layers.EthernetTypeIPv4), frag, &layers.UDP{SrcPort: 1, DstPort: 2}, big[:16])
	var p Parsed
	if !p.Decode(f) || CompleteChecksum(f, &p) {
		t.Error("first fragment: CompleteChecksum must leave it alone")
	}
}

func TestDecodeAndChecksumNoAllocs(t *testing.T) {
	f := ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2}, gopacket.Payload(make([]byte, 100)))
	var p Parsed
	if n := testing.AllocsPerRun(1000, func() {
		if !p.Decode(f) || !CompleteChecksum(f, &p) {
			panic("decode")
		}
	}); n != 0 {
		t.Errorf("%v allocations per decode+checksum, want 0", n)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(ser(f, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2}))
	f.Add(ser(f, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolUDP), &layers.UDP{SrcPort: 1, DstPort: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parsed
		if p.Decode(b) {
			if p.L4Off > len(b) || p.End > len(b) || p.L3Off > p.L4Off {
				t.Fatalf("offsets out of range: %+v len %d", p, len(b))
			}
			CompleteChecksum(b, &p)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	f := ser(b, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2})
	var p Parsed
	b.ReportAllocs()
	for b.Loop() {
		if !p.Decode(f) || p.DstPort != 2 {
			b.Fatal("decode")
		}
	}
}

func TestDecodeFragmentAndICMPError(t *testing.T) {
	frag := v4(layers.IPProtocolUDP)
	frag.Id, frag.Flags = 0x1234, layers.IPv4MoreFragments
	inner4 := ser(t, v4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 4000, DstPort: 53})
	inner6 := ser(t, v6(layers.IPProtocolTCP), &layers.TCP{SrcPort: 4000, DstPort: 443})
	echo6 := ser(t, v6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}, gopacket.Payload(make([]byte, 4)))
	laterInner := v4(layers.IPProtocolUDP)
	laterInner.FragOffset = 3
	v6frag := []byte{ProtoUDP, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef} // offset 0, more fragments
	tests := []struct {
		name   string
		frame  []byte
		fragID uint32
		icmpOK bool
		inner  Flow
	}{
		{"v4 first fragment", ser(t, eth(layers.EthernetTypeIPv4), frag, &layers.UDP{SrcPort: 1, DstPort: 2}, gopacket.Payload(make([]byte, 64))), 0x1234, false, Flow{}},
		{"v6 first fragment", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolIPv6Fragment), gopacket.Payload(v6frag), &layers.UDP{SrcPort: 1, DstPort: 2}), 0xdeadbeef, false, Flow{}},
		{"v4 port unreachable", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(inner4[:28])), 0, true,
			Flow{ProtoUDP, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 4000, 53}},
		{"v4 time exceeded, inner cut after the ports", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(11, 0)}, gopacket.Payload(inner4[:24])), 0, true,
			Flow{ProtoUDP, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 4000, 53}},
		{"v4 error about a later fragment", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(ser(t, laterInner, gopacket.Payload(make([]byte, 8))))), 0, false, Flow{}},
		{"v4 echo request is no error", ser(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}, gopacket.Payload(inner4[:28])), 0, false, Flow{}},
		{"v6 packet too big", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}, gopacket.Payload(make([]byte, 4)), gopacket.Payload(inner6[:48])), 0, true,
			Flow{ProtoTCP, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 4000, 443}},
		{"v6 time exceeded about an echo", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(3, 0)}, gopacket.Payload(make([]byte, 4)), gopacket.Payload(echo6)), 0, true,
			Flow{ProtoICMPv6, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 0, 0}},
		{"v6 error with a v4 header inside", ser(t, eth(layers.EthernetTypeIPv6), v6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(1, 4)}, gopacket.Payload(make([]byte, 4)), gopacket.Payload(append(inner4, make([]byte, 20)...))), 0, false, Flow{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Parsed
			if !p.Decode(tc.frame) {
				t.Fatal("not decoded")
			}
			if p.FragID != tc.fragID || p.ICMPError != tc.icmpOK {
				t.Errorf("FragID %#x ICMPError %v, want %#x %v", p.FragID, p.ICMPError, tc.fragID, tc.icmpOK)
			}
			if tc.icmpOK && p.Inner != tc.inner {
				t.Errorf("Inner = %+v, want %+v", p.Inner, tc.inner)
			}
		})
	}
}
