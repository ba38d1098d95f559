package packet

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers the decoder knows.
const (
	ProtoHopOpts  = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoAH       = 51
	ProtoICMPv6   = 58
	ProtoDstOpts  = 60
	ProtoSCTP     = 132
)

const (
	etherTypeIPv4   = 0x0800
	etherTypeIPv6   = 0x86DD
	etherType8021Q  = 0x8100
	etherType8021AD = 0x88A8

	maxVLAN  = 2
	maxIPv6X = 8
)

// Parsed is one decoded frame. Fill it with Decode; the zero value is "not
// decoded". It holds offsets into the frame, never copies of its bytes.
type Parsed struct {
	OK       bool // an IPv4/IPv6 packet whose headers are all present
	ND       bool // IPv6 neighbour discovery (passed by the kernel, never punted)
	Version  uint8
	Proto    uint8 // L4 protocol after extension headers
	Src, Dst netip.Addr
	// Ports are 0 for protocols without ports and for later fragments,
	// as in the kernel's flow key.
	SrcPort, DstPort uint16
	// LaterFragment: not the first fragment (no L4 header).
	LaterFragment bool
	// Fragmented: any fragment, first included; its L4 checksum cannot be
	// completed from this frame alone.
	Fragmented bool

	L3Off int // start of the IP header
	L4Off int // start of the L4 header (after IPv6 extension headers)
	End   int // end of the IP packet (Ethernet padding excluded)
}

// Decode parses frame into p and reports p.OK.
func (p *Parsed) Decode(frame []byte) bool {
	*p = Parsed{}
	if len(frame) < 14 {
		return false
	}
	et := binary.BigEndian.Uint16(frame[12:14])
	off := 14
	for i := 0; i < maxVLAN && (et == etherType8021Q || et == etherType8021AD); i++ {
		if len(frame) < off+4 {
			return false
		}
		et = binary.BigEndian.Uint16(frame[off+2 : off+4])
		off += 4
	}
	p.L3Off = off
	var next uint8
	switch et {
	case etherTypeIPv4:
		if len(frame) < off+20 {
			return false
		}
		ip := frame[off:]
		ihl := int(ip[0]&0x0f) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[0]>>4 != 4 || ihl < 20 || off+ihl > len(frame) || tot < ihl || off+tot > len(frame) {
			return false
		}
		p.Version = 4
		p.Src = netip.AddrFrom4([4]byte(ip[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
		next = ip[9]
		frag := binary.BigEndian.Uint16(ip[6:8])
		p.LaterFragment = frag&0x1fff != 0
		p.Fragmented = frag&0x3fff != 0
		p.End = off + tot
		off += ihl
	case etherTypeIPv6:
		if len(frame) < off+40 {
			return false
		}
		ip := frame[off:]
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		if ip[0]>>4 != 6 || off+40+plen > len(frame) {
			return false
		}
		p.Version = 6
		p.Src = netip.AddrFrom16([16]byte(ip[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(ip[24:40]))
		next = ip[6]
		p.End = off + 40 + plen
		off += 40
		for i := 0; i < maxIPv6X; i++ {
			switch next {
			case ProtoHopOpts, ProtoRouting, ProtoDstOpts:
				if len(frame) < off+2 {
					return false
				}
				next, off = frame[off], off+(int(frame[off+1])+1)*8
				continue
			case ProtoAH:
				if len(frame) < off+2 {
					return false
				}
				next, off = frame[off], off+(int(frame[off+1])+2)*4
				continue
			case ProtoFragment:
				if len(frame) < off+8 {
					return false
				}
				fo := binary.BigEndian.Uint16(frame[off+2 : off+4])
				next = frame[off]
				off += 8
				p.Fragmented = true
				if fo&0xfff8 != 0 {
					p.LaterFragment = true
				}
			}
			if p.LaterFragment || !isIPv6Ext(next) {
				break
			}
		}
		if !p.LaterFragment && isIPv6Ext(next) {
			return false
		}
	default:
		return false
	}
	if off > p.End {
		// Extension headers claim more than the packet holds. The kernel
		// punts such a packet (it reads no L4 header for unknown
		// protocols); here it is malformed and dropped: fail closed.
		return false
	}
	p.Proto = next
	p.L4Off = off
	if p.LaterFragment {
		p.OK = true
		return true
	}
	switch next {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		min := 12
		if next == ProtoTCP {
			min = 20
		} else if next == ProtoUDP {
			min = 8
		}
		if off+min > len(frame) {
			return false
		}
		p.SrcPort = binary.BigEndian.Uint16(frame[off : off+2])
		p.DstPort = binary.BigEndian.Uint16(frame[off+2 : off+4])
	case ProtoICMP, ProtoICMPv6:
		if off+4 > len(frame) {
			return false
		}
		if next == ProtoICMPv6 && frame[off] >= 133 && frame[off] <= 137 {
			p.ND = true
		}
	}
	p.OK = true
	return true
}

func isIPv6Ext(n uint8) bool {
	switch n {
	case ProtoHopOpts, ProtoRouting, ProtoDstOpts, ProtoAH, ProtoFragment:
		return true
	}
	return false
}
