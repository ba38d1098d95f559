package xdpprog

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Return codes of the tc programs (TC_ACT_*; TCX_NEXT is TC_ACT_UNSPEC).
const (
	actPass     = ^uint32(0) // TC_ACT_UNSPEC: pass, let later programs run
	actShot     = 2
	actRedirect = 7
)

// test_run gives a tc program the loopback device unless the context names
// another, so the pod under test is the one keyed by lo's ifindex.
const testIfindex = 1

var (
	podMAC  = net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x01}
	hostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
	podIP   = netip.MustParseAddr("10.244.1.5")
	peerIP  = netip.MustParseAddr("10.244.2.9")
	podIP6  = netip.MustParseAddr("fd00:244:1::5")
	peerIP6 = netip.MustParseAddr("fd00:244:2::9")
)

// requireBPF skips unless the test can load BPF programs.
func requireBPF(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
}

func loadObjects(t *testing.T, opts Options) *Objects {
	t.Helper()
	requireBPF(t)
	if opts.FlowsMaxEntries == 0 {
		opts.FlowsMaxEntries = 1024
	}
	o, err := Load(opts)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks a BPF feature: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// fixture is a loaded program set with one isolated pod on lo and an agent.
type fixture struct {
	*Objects
	t *testing.T
}

const testPuntIfindex = 42

func newFixture(t *testing.T) fixture {
	o := loadObjects(t, Options{})
	f := fixture{o, t}
	f.setPod(PodIsolatedIngress | PodIsolatedEgress)
	f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex})
	return f
}

func (f fixture) setPod(flags uint32) {
	f.t.Helper()
	pi := PodInfo{Flags: flags, PodId: 77}
	copy(pi.PodMac[:], podMAC)
	copy(pi.HostMac[:], hostMAC)
	if err := f.Pods.Put(uint32(testIfindex), pi); err != nil {
		f.t.Fatal(err)
	}
}

func (f fixture) setConfig(c Config) {
	f.t.Helper()
	if err := f.SetConfig(c); err != nil {
		f.t.Fatal(err)
	}
}

func (f fixture) putFlow(k FlowKey, verdict uint8, gen uint32) {
	f.t.Helper()
	if err := f.Flows.Put(k, FlowVal{Verdict: verdict, Generation: gen}); err != nil {
		f.t.Fatal(err)
	}
}

// run runs the program for hook on frame and returns its verdict, the
// frame as the program left it, and the counters that moved.
func (f fixture) run(hook Hook, frame []byte, gsoSegs uint32) (uint32, []byte, map[Counter]uint64) {
	f.t.Helper()
	ret, out, moved, err := f.tryRun(hook, frame, gsoSegs)
	if err != nil {
		f.t.Fatalf("run: %v", err)
	}
	return ret, out, moved
}

// tryRun is run returning the error of BPF_PROG_TEST_RUN, which refuses
// frames shorter than the headers their EtherType announces.
func (f fixture) tryRun(hook Hook, frame []byte, gsoSegs uint32) (uint32, []byte, map[Counter]uint64, error) {
	f.t.Helper()
	before, err := f.ReadCounters()
	if err != nil {
		f.t.Fatal(err)
	}
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	if gsoSegs != 0 {
		opts.Context = skbContext(f.t, gsoSegs)
	}
	ret, err := f.Program(hook).Run(&opts)
	if err != nil {
		return 0, nil, nil, err
	}
	after, err := f.ReadCounters()
	if err != nil {
		f.t.Fatal(err)
	}
	moved := map[Counter]uint64{}
	for c := range NumCounters {
		if d := after[c] - before[c]; d != 0 {
			moved[c] = d
		}
	}
	return ret, opts.DataOut, moved, nil
}

// skbContext is a struct __sk_buff with only gso_segs set; the offset comes
// from the kernel's BTF so the test follows the running kernel's layout.
func skbContext(t *testing.T, gsoSegs uint32) []byte {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skipf("kernel BTF unavailable: %v", err)
	}
	var s *btf.Struct
	if err := spec.TypeByName("__sk_buff", &s); err != nil {
		t.Skipf("no struct __sk_buff in kernel BTF: %v", err)
	}
	ctx := make([]byte, s.Size)
	for _, m := range s.Members {
		if m.Name == "gso_segs" {
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], gsoSegs)
			return ctx
		}
	}
	t.Skip("struct __sk_buff has no gso_segs")
	return nil
}

// serialize builds a frame with lengths and checksums filled in.
func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.TCP:
			setNetwork(l, ls)
		case *layers.UDP:
			setNetwork(l, ls)
		case *layers.ICMPv6:
			setNetwork(l, ls)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func setNetwork(l interface {
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}, ls []gopacket.SerializableLayer) {
	for _, n := range ls {
		if nl, ok := n.(gopacket.NetworkLayer); ok {
			l.SetNetworkLayerForChecksum(nl)
		}
	}
}

// eth returns the Ethernet header of a frame caught at hook: leaving the
// pod it is addressed to H, entering the pod to P.
func eth(hook Hook, typ layers.EthernetType) *layers.Ethernet {
	if hook == HookEgress {
		return &layers.Ethernet{SrcMAC: podMAC, DstMAC: hostMAC, EthernetType: typ}
	}
	return &layers.Ethernet{SrcMAC: hostMAC, DstMAC: podMAC, EthernetType: typ}
}

func ip4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

func ip6(src, dst netip.Addr, next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

// tcp4 is a TCP SYN from the pod to its peer, as caught when leaving it.
func tcp4(t *testing.T) ([]byte, FlowKey) {
	frame := serialize(t, eth(HookEgress, layers.EthernetTypeIPv4), ip4(podIP, peerIP, layers.IPProtocolTCP),
		&layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 1000}, gopacket.Payload("hello"))
	return frame, NewFlowKey(HookEgress, 6, testIfindex, netip.AddrPortFrom(podIP, 40000), netip.AddrPortFrom(peerIP, 80))
}

func wantCounters(t *testing.T, got map[Counter]uint64, want ...Counter) {
	t.Helper()
	w := map[Counter]uint64{}
	for _, c := range want {
		w[c]++
	}
	if diff := cmp.Diff(w, got); diff != "" {
		t.Errorf("counters moved (-want +got):\n%s", diff)
	}
}

func wantRet(t *testing.T, got, want uint32) {
	t.Helper()
	if got != want {
		t.Errorf("return code = %d, want %d", int32(got), int32(want))
	}
}

// wantPunted checks a punted frame: redirected, the hook's address
// rewritten to the encoding, every other byte unchanged.
func wantPunted(t *testing.T, hook Hook, ret uint32, in, out []byte) {
	t.Helper()
	wantRet(t, ret, actRedirect)
	want := append([]byte(nil), in...)
	PutPunt(want, hook, testIfindex)
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("punted frame (-want +got):\n%s", diff)
	}
}

func TestCachedVerdicts(t *testing.T) {
	f := newFixture(t)
	frame, key := tcp4(t)

	f.putFlow(key, VerdictAllow, 3)
	ret, out, moved := f.run(HookEgress, frame, 0)
	wantRet(t, ret, actPass)
	wantCounters(t, moved, CounterPassCached)
	if diff := cmp.Diff(frame, out); diff != "" {
		t.Errorf("allowed frame changed (-want +got):\n%s", diff)
	}
	var v FlowVal
	if err := f.Flows.Lookup(key, &v); err != nil {
		t.Fatal(err)
	}
	if v.LastSeenNs == 0 {
		t.Error("allow hit did not refresh last_seen_ns")
	}

	f.putFlow(key, VerdictDeny, 3)
	ret, _, moved = f.run(HookEgress, frame, 0)
	wantRet(t, ret, actShot)
	wantCounters(t, moved, CounterDropCached)
	if err := f.Flows.Lookup(key, &v); err != nil {
		t.Fatal(err)
	}
	if v.LastSeenNs != 0 {
		t.Error("deny hit refreshed last_seen_ns; denies must age from creation")
	}

	// The same 5-tuple at the other hook is another flow: a miss.
	ret, out, moved = f.run(HookIngress, frame, 0)
	wantPunted(t, HookIngress, ret, frame, out)
	wantCounters(t, moved, CounterPunt)
}

// TestReinjectToken checks the fast-path-off path for re-injected frames:
// an allow entry carrying the re-injection mark lets exactly one frame
// through, and the next one is punted again.
func TestReinjectToken(t *testing.T) {
	requireBPF(t)
	frame, key := tcp4(t)
	f := newFixture(t)
	f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex, Flags: ConfigFastpathOff})
	if err := f.Flows.Put(key, FlowVal{Verdict: VerdictAllow, Generation: 3, LastSeenNs: 42 | LastSeenReinject}); err != nil {
		t.Fatal(err)
	}
	ret, _, moved := f.run(HookEgress, frame, 0)
	wantRet(t, ret, actPass)
	wantCounters(t, moved, CounterPassReinjected)
	var v FlowVal
	if err := f.Flows.Lookup(key, &v); err != nil {
		t.Fatal(err)
	}
	if v.LastSeenNs != 42 {
		t.Errorf("last_seen_ns = %#x after the token was taken, want 42", v.LastSeenNs)
	}
	ret, out, moved := f.run(HookEgress, frame, 0)
	wantPunted(t, HookEgress, ret, frame, out)
	wantCounters(t, moved, CounterPunt)

	// Entering the pod, re-injection does not pass tcx again: no token.
	if err := f.Flows.Put(key, FlowVal{Verdict: VerdictAllow, Generation: 3, LastSeenNs: LastSeenReinject}); err != nil {
		t.Fatal(err)
	}
	ret, out, moved = f.run(HookIngress, frame, 0)
	wantPunted(t, HookIngress, ret, frame, out)
	wantCounters(t, moved, CounterPunt)
}

func TestPunt(t *testing.T) {
	requireBPF(t)
	frame, key := tcp4(t)
	tests := []struct {
		name  string
		setup func(fixture)
	}{
		{"miss", func(fixture) {}},
		{"stale allow", func(f fixture) { f.putFlow(key, VerdictAllow, 2) }},
		{"stale deny", func(f fixture) { f.putFlow(key, VerdictDeny, 2) }},
		{"fastpath off", func(f fixture) {
			f.putFlow(key, VerdictAllow, 3)
			f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex, Flags: ConfigFastpathOff})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			tc.setup(f)
			ret, out, moved := f.run(HookEgress, frame, 0)
			wantPunted(t, HookEgress, ret, frame, out)
			wantCounters(t, moved, CounterPunt)
		})
	}
}

// podListed is a pods map entry with no isolation flag (bit 7 means
// nothing to the program).
const podListed = 1 << 7

func TestPassAndDrop(t *testing.T) {
	requireBPF(t)
	arp := serialize(t, eth(HookEgress, layers.EthernetTypeARP), &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: podMAC, SourceProtAddress: podIP.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: peerIP.AsSlice(),
	})
	ns := serialize(t, eth(HookEgress, layers.EthernetTypeIPv6), ip6(podIP6, peerIP6, layers.IPProtocolICMPv6),
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)},
		gopacket.Payload(make([]byte, 20)))
	tcp, _ := tcp4(t)
	const ipOff = 14
	// IPv6 header announcing a hop-by-hop header that is not there.
	ns6ExtCut := patch(ns[:ipOff+40], ipOff+6, 0)
	ns6ExtCut = patch(ns6ExtCut, ipOff+4, 0)
	ns6ExtCut = patch(ns6ExtCut, ipOff+5, 0)

	tests := []struct {
		name    string
		frame   []byte
		pod     uint32 // pods map flags; 0 deletes the entry, podListed is no flag
		want    uint32
		counter Counter
	}{
		{"not isolated", tcp, podListed, actPass, CounterPassNotIsolated},
		// Isolated for ingress only: a flow the pod opens must still be
		// decided (and its reply cached), so a miss is punted.
		{"isolated the other way", tcp, PodIsolatedIngress, actRedirect, CounterPunt},
		{"unknown pod", tcp, 0, actPass, CounterPassNotIsolated},
		{"unknown pod malformed", patch(tcp, ipOff, 0x4f), 0, actPass, CounterPassNotIsolated},
		{"arp", arp, PodIsolatedEgress, actPass, CounterPassNonIP},
		{"ipv6 nd", ns, PodIsolatedEgress, actPass, CounterPassND},
		{"tcp truncated", tcp[:ipOff+20+10], PodIsolatedEgress, actShot, CounterDropMalformed},
		{"ihl too small", patch(tcp, ipOff, 0x44), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"bad version", patch(tcp, ipOff, 0x65), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"ihl past the end", patch(tcp, ipOff, 0x4f), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"tot_len past the end", patch(tcp, ipOff+2, 0x0f), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"tot_len below ihl", patch(patch(tcp, ipOff+2, 0), ipOff+3, 19), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"vlan truncated", serialize(t, eth(HookEgress, layers.EthernetTypeDot1Q))[:16], PodIsolatedEgress, actShot, CounterDropMalformed},
		{"ipv6 payload_len past the end", patch(ns, ipOff+4, 0x0f), PodIsolatedEgress, actShot, CounterDropMalformed},
		{"ipv6 extension header truncated", ns6ExtCut, PodIsolatedEgress, actShot, CounterDropMalformed},
		{"icmp6 truncated", ns[:ipOff+40+2], PodIsolatedEgress, actShot, CounterDropMalformed},
		// A frame whose IPv4 or IPv6 header itself is cut short cannot be
		// tested: BPF_PROG_TEST_RUN rejects it (EINVAL) before the program
		// runs. The program drops it the same way (bpf_skb_load_bytes fails).
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.pod == 0 {
				if err := f.Pods.Delete(uint32(testIfindex)); err != nil {
					t.Fatal(err)
				}
			} else {
				f.setPod(tc.pod)
			}
			ret, _, moved := f.run(HookEgress, tc.frame, 0)
			wantRet(t, ret, tc.want)
			wantCounters(t, moved, tc.counter)
		})
	}
}

// patch returns a copy of b with b[off] set to v.
func patch(b []byte, off int, v byte) []byte {
	b = append([]byte(nil), b...)
	b[off] = v
	return b
}

func TestNoAgentFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.setConfig(Config{Generation: 3})
	frame, _ := tcp4(t)
	ret, _, moved := f.run(HookEgress, frame, 0)
	wantRet(t, ret, actShot)
	wantCounters(t, moved, CounterDropNoAgent)
}

// TestKeys checks the key the program builds for each kind of packet by
// caching an allow for the key we expect: a pass proves the key matched.
func TestKeys(t *testing.T) {
	requireBPF(t)
	src4, dst4 := netip.AddrPortFrom(peerIP, 5000), netip.AddrPortFrom(podIP, 6000)
	src6, dst6 := netip.AddrPortFrom(peerIP6, 5000), netip.AddrPortFrom(podIP6, 6000)
	in := HookIngress
	hopByHop := &layers.IPv6HopByHop{}
	hopByHop.NextHeader = layers.IPProtocolIPv6Destination
	hopByHop.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}
	dstOpts := &layers.IPv6Destination{}
	dstOpts.NextHeader = layers.IPProtocolUDP
	dstOpts.Options = []*layers.IPv6DestinationOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}

	tests := []struct {
		name  string
		frame []byte
		key   FlowKey
	}{
		{"udp4", serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolUDP),
			&layers.UDP{SrcPort: 5000, DstPort: 6000}), NewFlowKey(in, 17, testIfindex, src4, dst4)},
		{"sctp4", serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolSCTP),
			&layers.SCTP{SrcPort: 5000, DstPort: 6000}), NewFlowKey(in, 132, testIfindex, src4, dst4)},
		{"icmp4 echo has ports 0", serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 9, Seq: 1}),
			NewFlowKey(in, 1, testIfindex, netip.AddrPortFrom(peerIP, 0), netip.AddrPortFrom(podIP, 0))},
		{"icmp6 echo has ports 0", serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolICMPv6),
			&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}, gopacket.Payload(make([]byte, 8))),
			NewFlowKey(in, 58, testIfindex, netip.AddrPortFrom(peerIP6, 0), netip.AddrPortFrom(podIP6, 0))},
		{"ipv4 options", serialize(t, eth(in, layers.EthernetTypeIPv4), withOptions(ip4(peerIP, podIP, layers.IPProtocolTCP)),
			&layers.TCP{SrcPort: 5000, DstPort: 6000, SYN: true}), NewFlowKey(in, 6, testIfindex, src4, dst4)},
		{"ipv4 first fragment has ports", serialize(t, eth(in, layers.EthernetTypeIPv4),
			withMoreFragments(ip4(peerIP, podIP, layers.IPProtocolUDP)), &layers.UDP{SrcPort: 5000, DstPort: 6000}, gopacket.Payload(make([]byte, 40))),
			NewFlowKey(in, 17, testIfindex, src4, dst4)},
		{"vlan", serialize(t, eth(in, layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 10, Type: layers.EthernetTypeIPv4},
			ip4(peerIP, podIP, layers.IPProtocolUDP), &layers.UDP{SrcPort: 5000, DstPort: 6000}), NewFlowKey(in, 17, testIfindex, src4, dst4)},
		{"qinq", serialize(t, eth(in, layers.EthernetTypeQinQ), &layers.Dot1Q{VLANIdentifier: 10, Type: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 20, Type: layers.EthernetTypeIPv6}, ip6(peerIP6, podIP6, layers.IPProtocolUDP),
			&layers.UDP{SrcPort: 5000, DstPort: 6000}), NewFlowKey(in, 17, testIfindex, src6, dst6)},
		{"tcp6", serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolTCP),
			&layers.TCP{SrcPort: 5000, DstPort: 6000, SYN: true}), NewFlowKey(in, 6, testIfindex, src6, dst6)},
		{"ipv6 extension headers", serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6HopByHop),
			hopByHop, dstOpts, &layers.UDP{SrcPort: 5000, DstPort: 6000}), NewFlowKey(in, 17, testIfindex, src6, dst6)},
		{"ipv6 first fragment has ports", serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6Fragment),
			gopacket.Payload(ipv6Frag(17, 0, true)), &layers.UDP{SrcPort: 5000, DstPort: 6000}, gopacket.Payload(make([]byte, 16))),
			NewFlowKey(in, 17, testIfindex, src6, dst6)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			// A miss first: punted, so the key is not matched by accident.
			ret, out, _ := f.run(in, tc.frame, 0)
			wantPunted(t, in, ret, tc.frame, out)
			f.putFlow(tc.key, VerdictAllow, 3)
			ret, _, moved := f.run(in, tc.frame, 0)
			wantRet(t, ret, actPass)
			wantCounters(t, moved, CounterPassCached)
		})
	}
}

func withOptions(ip *layers.IPv4) *layers.IPv4 {
	// Router alert, then padding: 8 option bytes, ihl 7.
	ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	return ip
}

func withFragOffset(ip *layers.IPv4, off8 uint16) *layers.IPv4 {
	ip.FragOffset = off8
	return ip
}

func withMoreFragments(ip *layers.IPv4) *layers.IPv4 {
	ip.Flags = layers.IPv4MoreFragments
	return ip
}

// ipv6Frag is an IPv6 fragment header (gopacket cannot serialize one).
func ipv6Frag(next uint8, offset uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = next
	fo := offset &^ 7
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], 0xabcd)
	return b
}

func TestIPv6ExtensionHeaderLimit(t *testing.T) {
	// n destination-options headers, the last one followed by UDP.
	chain := func(n int) []byte {
		var b []byte
		for range n {
			b = append(b, 60, 0, 1, 4, 0, 0, 0, 0)
		}
		b[len(b)-8] = 17
		return b
	}
	tests := []struct {
		n       int
		want    uint32
		counter Counter
	}{
		{8, actRedirect, CounterPunt},
		{9, actShot, CounterDropMalformed},
	}
	for _, tc := range tests {
		f := newFixture(t)
		frame := serialize(t, eth(HookIngress, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6Destination),
			gopacket.Payload(chain(tc.n)), &layers.UDP{SrcPort: 1, DstPort: 2})
		ret, _, moved := f.run(HookIngress, frame, 0)
		wantRet(t, ret, tc.want)
		wantCounters(t, moved, tc.counter)
	}
}

func TestGSOMissRequestsVerdict(t *testing.T) {
	f := newFixture(t)
	rd, err := ringbuf.NewReader(f.Requests)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	frame, key := tcp4(t)

	ret, _, moved := f.run(HookEgress, frame, 4)
	wantRet(t, ret, actShot)
	wantCounters(t, moved, CounterDropGSOMiss)

	rd.SetDeadline(time.Now().Add(time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("no verdict request: %v", err)
	}
	var got FlowKey
	if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(key, got); diff != "" {
		t.Errorf("requested key (-want +got):\n%s", diff)
	}

	// A GSO packet of an allowed flow keeps its fast path.
	f.putFlow(key, VerdictAllow, 3)
	ret, _, moved = f.run(HookEgress, frame, 4)
	wantRet(t, ret, actPass)
	wantCounters(t, moved, CounterPassCached)

	// Oversized for the punt path without GSO: same treatment.
	f.setConfig(Config{Generation: 4, PuntIfindex: testPuntIfindex, MaxPuntLen: uint32(len(frame) - 1)})
	ret, _, moved = f.run(HookEgress, frame, 0)
	wantRet(t, ret, actShot)
	wantCounters(t, moved, CounterDropGSOMiss)
}

func TestPuntXDP(t *testing.T) {
	o := loadObjects(t, Options{})
	frame, _ := tcp4(t)

	ret, err := o.Punt.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatal(err)
	}
	const xdpDrop, xdpRedirect = 1, 4
	if ret != xdpDrop {
		t.Errorf("no socket: return %d, want XDP_DROP", ret)
	}

	fd := boundXSK(t)
	if err := o.XSKs.Put(uint32(0), uint32(fd)); err != nil {
		t.Fatalf("put socket into xsks: %v", err)
	}
	ret, err = o.Punt.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatal(err)
	}
	if ret != xdpRedirect {
		t.Errorf("socket on queue 0: return %d, want XDP_REDIRECT", ret)
	}
	c, err := o.ReadPuntCounters()
	if err != nil {
		t.Fatal(err)
	}
	if want := [NumPuntCounters]uint64{PuntCounterRedirect: 1, PuntCounterNoSocket: 1}; c != want {
		t.Errorf("punt counters = %v, want %v", c, want)
	}
}

// TestDenySampleAndPodDrops checks that a cached deny counts against its
// pod and, with sampling on, reports the flow as a sample (Pad
// RequestSample) in the requests ring buffer.
func TestDenySampleAndPodDrops(t *testing.T) {
	f := newFixture(t)
	rd, err := ringbuf.NewReader(f.Requests)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	frame, key := tcp4(t)
	f.putFlow(key, VerdictDeny, 3)
	f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex, SampleEvery: 1})
	for range 3 {
		ret, _, moved := f.run(HookEgress, frame, 0)
		wantRet(t, ret, actShot)
		wantCounters(t, moved, CounterDropCached)
	}
	if n, err := f.PodDropCount(uint32(testIfindex)); err != nil || n != 3 {
		t.Errorf("pod drops = %d, %v; want 3", n, err)
	}
	rd.SetDeadline(time.Now().Add(time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("no sample: %v", err)
	}
	var got FlowKey
	if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &got); err != nil {
		t.Fatal(err)
	}
	want := key
	want.Pad = RequestSample
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sampled key (-want +got):\n%s", diff)
	}

	// Sampling off: drops still counted, nothing reported.
	f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex})
	for range 2 {
		f.run(HookEgress, frame, 0)
	}
	for range 2 { // drain the other two samples
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := rd.Read(); err != nil {
			t.Fatalf("missing sample: %v", err)
		}
	}
	rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := rd.Read(); err == nil {
		t.Error("a sample was reported with sampling off")
	}
	if n, _ := f.PodDropCount(uint32(testIfindex)); n != 5 {
		t.Errorf("pod drops = %d, want 5", n)
	}
}
