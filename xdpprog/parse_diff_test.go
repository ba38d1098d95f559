package xdpprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/packet"
)

// The tcx program's parser and the workers' decoder (dataplane/packet) must
// agree on every frame: the same flow key, or both refuse it the same way.
// A frame the two read differently would be decided as one flow by a worker
// and cached as another for the kernel.

// parsed is what one side made of a frame.
type parsed struct {
	kind string // "key", "nonip", "nd", "malformed", "later-fragment" ("untestable": see tryRun)
	key  FlowKey
}

func (p parsed) String() string {
	if p.kind != "key" {
		return p.kind
	}
	return fmt.Sprintf("key{hook %d proto %d %v -> %v}", p.key.Hook, p.key.Proto, p.key.Src(), p.key.Dst())
}

// differ runs frames through the kernel program and the Go decoder.
type differ struct {
	f     fixture
	rd    *ringbuf.Reader
	kinds map[string]int // frames compared, by kind ("related": errors checked)
}

func newDiffer(t *testing.T) *differ {
	d, err := loadDiffer(newFixture(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.rd.Close() })
	return d
}

func loadDiffer(f fixture) (*differ, error) {
	// Every miss becomes a verdict request carrying the program's key.
	f.setConfig(Config{Generation: 3, PuntIfindex: testPuntIfindex, MaxPuntLen: 1})
	rd, err := ringbuf.NewReader(f.Requests)
	if err != nil {
		return nil, err
	}
	return &differ{f: f, rd: rd, kinds: map[string]int{}}, nil
}

// kernel runs the program on frame at hook.
func (d *differ) kernel(hook Hook, frame []byte) parsed {
	t := d.f.t
	_, _, moved, err := d.f.tryRun(hook, frame, 0)
	if errors.Is(err, unix.EINVAL) {
		return parsed{kind: "untestable"}
	} else if err != nil {
		t.Fatalf("run: %v", err)
	}
	only := func(c Counter) bool { return len(moved) == 1 && moved[c] == 1 }
	switch {
	case only(CounterPassNonIP):
		return parsed{kind: "nonip"}
	case only(CounterPassND):
		return parsed{kind: "nd"}
	case only(CounterDropMalformed):
		return parsed{kind: "malformed"}
	case only(CounterDropFragOrphan):
		return parsed{kind: "later-fragment"}
	case only(CounterDropGSOMiss):
		d.rd.SetDeadline(time.Now().Add(time.Second))
		rec, err := d.rd.Read()
		if err != nil {
			t.Fatalf("no verdict request: %v", err)
		}
		var k FlowKey
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &k); err != nil {
			t.Fatal(err)
		}
		return parsed{kind: "key", key: k}
	}
	t.Fatalf("frame %x: unexpected counters %v", frame, moved)
	return parsed{}
}

// drain discards requests an earlier, failed comparison left behind.
func (d *differ) drain() {
	d.rd.SetDeadline(time.Now())
	for d.rd.AvailableBytes() > 0 {
		if _, err := d.rd.Read(); err != nil {
			return
		}
	}
}

// clearFrags forgets first fragments, so each frame is judged alone.
func (d *differ) clearFrags() {
	var k FragKey
	var keys []FragKey
	it := d.f.Frags.Iterate()
	var v FragVal
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for i := range keys {
		d.f.Frags.Delete(&keys[i])
	}
}

// userspace decodes frame as a worker does.
func userspace(hook Hook, frame []byte, p *packet.Parsed) parsed {
	// Non-IP frames pass the kernel unparsed; the decoder never sees them.
	et, off := binary.BigEndian.Uint16(frame[12:14]), 14
	for i := 0; i < 2 && (et == 0x8100 || et == 0x88a8); i++ {
		if len(frame) < off+4 {
			return parsed{kind: "malformed"}
		}
		et, off = binary.BigEndian.Uint16(frame[off+2:off+4]), off+4
	}
	if et != 0x0800 && et != 0x86dd {
		return parsed{kind: "nonip"}
	}
	switch {
	case !p.Decode(frame):
		return parsed{kind: "malformed"}
	case p.ND:
		return parsed{kind: "nd"}
	case p.LaterFragment:
		return parsed{kind: "later-fragment"}
	}
	return parsed{kind: "key", key: NewFlowKey(hook, p.Proto, testIfindex,
		netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))}
}

// compare fails the test when the two sides read frame differently. For an
// ICMP error the decoder reads, the program must find the same embedded
// flow: with an allow cached under its reply key, the error passes as
// related.
func (d *differ) compare(t *testing.T, hook Hook, frame []byte) {
	t.Helper()
	if len(frame) < 14 {
		return // BPF_PROG_TEST_RUN refuses frames shorter than Ethernet
	}
	d.drain()
	defer d.clearFrags()
	var p packet.Parsed
	want := userspace(hook, frame, &p)
	got := d.kernel(hook, frame)
	d.kinds[got.kind]++
	if got.kind == "untestable" {
		return
	}
	if got != want {
		t.Fatalf("hook %v, frame %x:\n  tcx:    %v\n  Decode: %v", hook, frame, got, want)
	}
	if want.kind != "key" || !p.ICMPError {
		return
	}
	in := p.Inner
	rk := NewFlowKey(hook, in.Proto, testIfindex, netip.AddrPortFrom(in.Dst, in.DstPort), netip.AddrPortFrom(in.Src, in.SrcPort))
	d.f.putFlow(rk, VerdictAllow, 3)
	defer d.f.Flows.Delete(&rk)
	if _, _, moved := d.f.run(hook, frame, 0); len(moved) != 1 || moved[CounterPassRelated] != 1 {
		t.Fatalf("hook %v, ICMP error %x about %+v: tcx did not relate it (counters %v)", hook, frame, in, moved)
	}
	d.kinds["related"]++
}

// parseSeeds are frames of every kind both sides know.
func parseSeeds(t testing.TB) [][]byte {
	in := HookIngress
	udp := func() *layers.UDP { return &layers.UDP{SrcPort: 6000, DstPort: 5000} }
	hop := &layers.IPv6HopByHop{}
	hop.NextHeader = layers.IPProtocolTCP
	hop.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}
	first4, later4 := fragments(t, false, 9)
	first6, later6 := fragments(t, true, 9)
	return [][]byte{
		serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 80, SYN: true}),
		serialize(t, eth(in, layers.EthernetTypeIPv4), withOptions(ip4(peerIP, podIP, layers.IPProtocolUDP)), udp(), gopacket.Payload("x")),
		serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolSCTP), &layers.SCTP{SrcPort: 7, DstPort: 9}),
		serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}, gopacket.Payload(make([]byte, 8))),
		serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(peerIP, podIP, 47), gopacket.Payload(make([]byte, 8))), // GRE: no ports
		serialize(t, eth(in, layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 3, Type: layers.EthernetTypeIPv4},
			ip4(peerIP, podIP, layers.IPProtocolUDP), udp()),
		serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 443}),
		serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolIPv6HopByHop), hop, &layers.TCP{SrcPort: 3, DstPort: 4}),
		serialize(t, eth(in, layers.EthernetTypeIPv6), ip6(peerIP6, podIP6, layers.IPProtocolICMPv6),
			&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(135, 0)}, gopacket.Payload(make([]byte, 20))),
		serialize(t, eth(in, layers.EthernetTypeARP), gopacket.Payload(make([]byte, 28))),
		first4, later4, first6, later6,
		icmpError(t, peerIP, 3, 3, udp()),
		icmpError(t, netip.MustParseAddr("192.168.9.1"), 11, 0, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1}),
		icmpError(t, peerIP6, 1, 4, &layers.TCP{SrcPort: 6000, DstPort: 5000}),
		icmpError(t, peerIP6, 2, 0, udp()),
	}
}

// mutate changes a copy of frame: flipped bytes (mostly in the headers), a
// cut, or bytes added.
func mutate(r *rand.Rand, frame []byte) []byte {
	b := append([]byte(nil), frame...)
	switch r.IntN(8) {
	case 0:
		return b[:14+r.IntN(max(len(b)-13, 1))]
	case 1:
		return append(b, make([]byte, r.IntN(32))...)
	}
	for n := 1 + r.IntN(3); n > 0; n-- {
		i := 12 + r.IntN(min(len(b)-12, 100))
		if r.IntN(2) == 0 {
			b[i] = byte(r.Uint32())
		} else {
			b[i] ^= 1 << r.IntN(8)
		}
	}
	return b
}

// TestParseDifferential compares the two parsers on the seeds and on 20,000
// mutations of them (fixed seed); `go test -fuzz FuzzParseDifferential`
// searches further.
func TestParseDifferential(t *testing.T) {
	requireBPF(t)
	d := newDiffer(t)
	seeds := parseSeeds(t)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 + len(seeds) {
		frame := seeds[i%len(seeds)]
		if i >= len(seeds) {
			frame = mutate(r, frame)
		}
		d.compare(t, Hook(1+i%2), frame)
	}
	t.Logf("frames by outcome: %v", d.kinds)
	for _, k := range []string{"key", "nonip", "nd", "malformed", "later-fragment", "related"} {
		if d.kinds[k] < 10 {
			t.Errorf("only %d frames came out %q: the mutations miss a branch", d.kinds[k], k)
		}
	}
}

func FuzzParseDifferential(f *testing.F) {
	for _, s := range parseSeeds(f) {
		f.Add(s, true)
	}
	// One program set for the whole run (loading one per input would
	// make the fuzzer crawl); it lives as long as the process.
	var d *differ
	f.Fuzz(func(t *testing.T, frame []byte, ingress bool) {
		requireBPF(t)
		if d == nil {
			o, err := Load(Options{})
			if err != nil {
				t.Fatal(err)
			}
			fx := fixture{o, t}
			fx.setPod(PodIsolatedIngress | PodIsolatedEgress)
			if d, err = loadDiffer(fx); err != nil {
				t.Fatal(err)
			}
		}
		d.f.t = t
		hook := HookEgress
		if ingress {
			hook = HookIngress
		}
		d.compare(t, hook, frame)
	})
}
