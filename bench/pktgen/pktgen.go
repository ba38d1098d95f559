package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
)

// Proto is what the generator sends.
type Proto uint8

const (
	UDP Proto = iota // 64-byte UDP datagrams (60 bytes on the veth, no FCS)
	TCP              // TCP SYNs (54 bytes)
)

// ParseProto parses "udp" or "tcp".
func ParseProto(s string) (Proto, error) {
	switch s {
	case "udp", "UDP":
		return UDP, nil
	case "tcp", "TCP", "syn":
		return TCP, nil
	}
	return 0, fmt.Errorf("protocol %q: want udp or tcp", s)
}

func (p Proto) String() string {
	if p == TCP {
		return "tcp-syn"
	}
	return "udp"
}

// Mode chooses how 5-tuples vary.
type Mode uint8

const (
	// NewFlows: every packet a 5-tuple no earlier packet of this Gen used.
	NewFlows Mode = iota
	// Established: packets cycle over Spec.Flows fixed 5-tuples.
	Established
)

// Magic marks the payload of a generator datagram.
const Magic = 0x5842 // "XB"

// PayloadLen is the UDP payload: magic (2), sequence (8), send time (8).
const PayloadLen = 18

// Config places the generator.
type Config struct {
	// Netns is the generator's namespace; Iface its veth end there.
	Netns netns.NsHandle
	Iface string
	// DstMAC is the MAC of the peer (the node-side veth).
	DstMAC net.HardwareAddr
	// Src is the prefix source addresses are drawn from (a /16 gives
	// 2^32 distinct (address, port) pairs); Dst the sink's address.
	Src netip.Prefix
	Dst netip.Addr
	// Proto of every frame; Seed permutes the flows.
	Proto Proto
	Seed  uint64
	// Frames in the UMEM (default 4096); TxRing size (default 2048).
	Frames, TxRing int
}

// Gen is one generator: a UMEM and a TX-only socket. Not safe for
// concurrent use.
type Gen struct {
	cfg    Config
	umem   *afxdp.UMEM
	sock   *afxdp.Socket
	free   []uint64
	comp   []uint64
	descs  []afxdp.Desc
	flen   int
	next   uint64 // next unused new-flow index
	srcHi  [2]byte
	mul    uint32
	add    uint32
	pseudo uint32 // constant part of the L4 pseudo-header sum (dst, proto)
}

// New opens the socket in cfg.Netns and writes the template into every
// frame.
func New(cfg Config) (*Gen, error) {
	if cfg.Frames == 0 {
		cfg.Frames = 4096
	}
	if cfg.TxRing == 0 {
		cfg.TxRing = 2048
	}
	if !cfg.Src.Addr().Is4() || cfg.Src.Bits() != 16 || !cfg.Dst.Is4() {
		return nil, errors.New("pktgen: want an IPv4 /16 source prefix and an IPv4 destination")
	}
	h, err := netlink.NewHandleAt(cfg.Netns)
	if err != nil {
		return nil, fmt.Errorf("pktgen: netlink in generator netns: %w", err)
	}
	l, err := h.LinkByName(cfg.Iface)
	h.Close()
	if err != nil {
		return nil, fmt.Errorf("pktgen: %s in generator netns: %w", cfg.Iface, err)
	}
	tmpl, err := template(cfg, l.Attrs().HardwareAddr)
	if err != nil {
		return nil, err
	}
	u, err := afxdp.NewUMEM(afxdp.UMEMConfig{NumFrames: cfg.Frames, BindFlags: unix.XDP_COPY})
	if err != nil {
		return nil, err
	}
	s, err := u.NewSocket(l.Attrs().Index, 0, afxdp.SocketOptions{TX: true, TxSize: cfg.TxRing, CompSize: cfg.TxRing, Netns: cfg.Netns})
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("pktgen: TX socket on %s: %w", cfg.Iface, err)
	}
	g := &Gen{cfg: cfg, umem: u, sock: s, flen: len(tmpl),
		comp: make([]uint64, cfg.TxRing), descs: make([]afxdp.Desc, 64)}
	fs := uint64(u.FrameSize())
	for i := range cfg.Frames {
		a := uint64(i) * fs
		copy(u.Frame(a, len(tmpl)), tmpl)
		g.free = append(g.free, a)
	}
	src := cfg.Src.Addr().As4()
	g.srcHi = [2]byte{src[0], src[1]}
	// An odd multiplier makes i -> i*mul+add a bijection on uint32.
	g.mul = uint32(cfg.Seed*0x9e3779b97f4a7c15>>32) | 1
	g.add = uint32(cfg.Seed)
	d := cfg.Dst.As4()
	proto := uint32(unix.IPPROTO_UDP)
	if cfg.Proto == TCP {
		proto = unix.IPPROTO_TCP
	}
	g.pseudo = (uint32(d[0])<<8 | uint32(d[1])) + (uint32(d[2])<<8 | uint32(d[3])) + proto
	return g, nil
}

// Close releases the socket and the UMEM.
func (g *Gen) Close() error { return g.umem.Close() }

// FrameLen is the length of every frame sent (without FCS).
func (g *Gen) FrameLen() int { return g.flen }

// template builds the frame every packet starts from, with gopacket.
func template(cfg Config, srcMAC net.HardwareAddr) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: cfg.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: cfg.Src.Addr().Next().AsSlice(), DstIP: cfg.Dst.AsSlice(), Flags: layers.IPv4DontFragment}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	buf := gopacket.NewSerializeBuffer()
	var err error
	if cfg.Proto == TCP {
		ip.Protocol = layers.IPProtocolTCP
		tcp := &layers.TCP{SrcPort: 1024, DstPort: 5000, SYN: true, Window: 64240, Seq: 1}
		tcp.SetNetworkLayerForChecksum(ip)
		err = gopacket.SerializeLayers(buf, opts, eth, ip, tcp)
	} else {
		ip.Protocol = layers.IPProtocolUDP
		udp := &layers.UDP{SrcPort: 1024, DstPort: 5000}
		udp.SetNetworkLayerForChecksum(ip)
		payload := make([]byte, PayloadLen)
		binary.BigEndian.PutUint16(payload, Magic)
		err = gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(payload))
	}
	if err != nil {
		return nil, fmt.Errorf("pktgen: template: %w", err)
	}
	return append([]byte(nil), buf.Bytes()...), nil
}

// Spec is one run of the generator.
type Spec struct {
	Mode Mode
	// Flows is the number of fixed flows (Established); FlowBase their
	// first flow index (Established flows are indices FlowBase..+Flows-1;
	// keep them apart from new-flow indices, which count up from 0).
	Flows    int
	FlowBase uint64
	DstPort  uint16
	// Rate in packets per second; 0 sends as fast as the socket takes.
	Rate float64
	// The run ends after Duration or Count packets, whichever comes first
	// (zero: no limit on that side), or when ctx ends.
	Duration time.Duration
	Count    uint64
}

// Stats of a run.
type Stats struct {
	Sent    uint64
	Elapsed time.Duration
	// RingFull counts batches the TX ring did not take whole.
	RingFull uint64
}

// PPS is the offered rate.
func (s Stats) PPS() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// Run sends until the spec's limits. New-flow indices keep counting across
// runs of one Gen, so no two runs of a benchmark share a 5-tuple.
func (g *Gen) Run(ctx context.Context, sp Spec) Stats {
	var st Stats
	start := time.Now()
	var deadline time.Time
	if sp.Duration > 0 {
		deadline = start.Add(sp.Duration)
	}
	if sp.Mode == Established && sp.Flows <= 0 {
		sp.Flows = 1
	}
	var cyc uint64
	done := ctx.Done()
	for iter := 0; ; iter++ {
		if iter&63 == 0 {
			select {
			case <-done:
				st.Elapsed = time.Since(start)
				g.drain()
				return st
			default:
			}
		}
		now := time.Now()
		if !deadline.IsZero() && now.After(deadline) || sp.Count > 0 && st.Sent >= sp.Count {
			break
		}
		if n := g.sock.Complete(g.comp); n > 0 {
			g.free = append(g.free, g.comp[:n]...)
		}
		want := len(g.descs)
		if sp.Rate > 0 {
			due := int64(now.Sub(start).Seconds()*sp.Rate) + 1 - int64(st.Sent)
			if due <= 0 {
				wait := time.Duration(float64(-due+1) / sp.Rate * float64(time.Second))
				if wait > 200*time.Microsecond {
					time.Sleep(wait - 100*time.Microsecond)
				}
				continue
			}
			want = int(min(due, int64(want)))
		}
		if sp.Count > 0 {
			want = int(min(uint64(want), sp.Count-st.Sent))
		}
		k := min(want, len(g.free))
		if k == 0 {
			_ = g.sock.Kick()
			continue
		}
		ts := uint64(now.UnixNano())
		for j := range k {
			a := g.free[len(g.free)-1-j]
			var idx uint64
			if sp.Mode == NewFlows {
				idx = g.next
				g.next++
			} else {
				idx = sp.FlowBase + cyc
				if cyc++; cyc == uint64(sp.Flows) {
					cyc = 0
				}
			}
			g.fill(g.umem.Frame(a, g.flen), idx, sp.DstPort, st.Sent+uint64(j), ts)
			g.descs[j] = afxdp.Desc{Addr: a, Len: uint32(g.flen)}
		}
		m := g.sock.Transmit(g.descs[:k])
		if m < k {
			st.RingFull++
		}
		g.free = g.free[:len(g.free)-m]
		st.Sent += uint64(m)
	}
	st.Elapsed = time.Since(start)
	g.drain()
	return st
}

// drain kicks until the kernel has taken every queued frame (or 100 ms).
func (g *Gen) drain() {
	for end := time.Now().Add(100 * time.Millisecond); g.sock.TxPending() > 0 && time.Now().Before(end); {
		_ = g.sock.Kick()
		if n := g.sock.Complete(g.comp); n > 0 {
			g.free = append(g.free, g.comp[:n]...)
		}
	}
	if n := g.sock.Complete(g.comp); n > 0 {
		g.free = append(g.free, g.comp[:n]...)
	}
}

// Tuple returns the source address and port of flow index i.
func (g *Gen) Tuple(i uint64) (netip.Addr, uint16) {
	x := uint32(i)*g.mul + g.add
	return netip.AddrFrom4([4]byte{g.srcHi[0], g.srcHi[1], byte(x >> 24), byte(x >> 16)}), uint16(x)
}

// fill patches a frame holding the template for flow index i.
func (g *Gen) fill(f []byte, i uint64, dport uint16, seq, ts uint64) {
	x := uint32(i)*g.mul + g.add
	ip := f[14:34]
	ip[14], ip[15] = byte(x>>24), byte(x>>16)
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(0, ip)))
	l4 := f[34:]
	binary.BigEndian.PutUint16(l4[0:], uint16(x))
	binary.BigEndian.PutUint16(l4[2:], dport)
	var csum []byte
	if g.cfg.Proto == TCP {
		binary.BigEndian.PutUint32(l4[4:], uint32(seq))
		csum = l4[16:18]
	} else {
		binary.BigEndian.PutUint64(l4[10:], seq)
		binary.BigEndian.PutUint64(l4[18:], ts)
		csum = l4[6:8]
	}
	csum[0], csum[1] = 0, 0
	acc := uint64(g.pseudo) + (uint64(ip[12])<<8 | uint64(ip[13]))
	acc += uint64(ip[14])<<8 | uint64(ip[15])
	acc += uint64(len(l4))
	c := ^fold(sum(acc, l4))
	if c == 0 && g.cfg.Proto == UDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(csum, c)
}

func sum(acc uint64, b []byte) uint64 {
	for len(b) >= 2 {
		acc += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// ParsePayload returns the sequence number and send time of a generator
// UDP payload.
func ParsePayload(b []byte) (seq uint64, sent time.Time, ok bool) {
	if len(b) < PayloadLen || binary.BigEndian.Uint16(b) != Magic {
		return 0, time.Time{}, false
	}
	return binary.BigEndian.Uint64(b[2:]), time.Unix(0, int64(binary.BigEndian.Uint64(b[10:]))), true
}
