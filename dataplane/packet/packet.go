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
	// FragID is the IPv4 identification or the IPv6 fragment id of a
	// fragment: with the addresses and protocol it names the datagram.
	FragID uint32
	// ICMPError: an ICMP or ICMPv6 error (destination unreachable, packet
	// too big, time exceeded, parameter problem) whose embedded header was
	// read into Inner.
	ICMPError bool
	// Inner is the flow of the packet an ICMP error answers, as that
	// packet went (from the receiver of the error).
	Inner Flow

	L3Off int // start of the IP header
	L4Off int // start of the L4 header (after IPv6 extension headers)
	End   int // end of the IP packet (Ethernet padding excluded)
}

// Flow is a 5-tuple; ports are 0 for protocols without ports.
type Flow struct {
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
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
		if p.Fragmented {
			p.FragID = uint32(binary.BigEndian.Uint16(ip[4:6]))
		}
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
				p.FragID = binary.BigEndian.Uint32(frame[off+4 : off+8])
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
		// Extension headers claim more than the packet holds: malformed,
		// as the kernel program has it.
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
		typ := frame[off]
		if next == ProtoICMPv6 && typ >= 133 && typ <= 137 {
			p.ND = true
		}
		if next == ProtoICMPv6 && typ >= icmp6DestUnreach && typ <= icmp6ParamProb ||
			next == ProtoICMP && (typ == icmpDestUnreach || typ == icmpTimeExceeded || typ == icmpParamProb) {
			// The family of the embedded header follows the ICMP
			// version, as in the kernel program.
			v := uint8(4)
			if next == ProtoICMPv6 {
				v = 6
			}
			p.ICMPError = p.Inner.decode(frame[min(off+8, p.End):p.End], v)
		}
	}
	p.OK = true
	return true
}

// ICMP error types whose body starts with the header of the packet they
// answer.
const (
	icmpDestUnreach  = 3
	icmpTimeExceeded = 11
	icmpParamProb    = 12
	icmp6DestUnreach = 1 // then 2 packet too big, 3 time exceeded
	icmp6ParamProb   = 4
)

// decode reads the header an ICMP error embeds, as the kernel program does:
// the same family as the error, its ports (or ICMP) right after the IP
// header, not a later fragment. It reports whether it found one.
func (f *Flow) decode(b []byte, version uint8) bool {
	var off int
	switch version {
	case 4:
		if len(b) < 20 || b[0]>>4 != 4 || binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return false
		}
		off = int(b[0]&0x0f) * 4
		if off < 20 {
			return false
		}
		f.Proto = b[9]
		f.Src = netip.AddrFrom4([4]byte(b[12:16]))
		f.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	case 6:
		if len(b) < 40 || b[0]>>4 != 6 {
			return false
		}
		off = 40
		f.Proto = b[6]
		f.Src = netip.AddrFrom16([16]byte(b[8:24]))
		f.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	}
	switch f.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		if len(b) < off+4 {
			return false
		}
		f.SrcPort = binary.BigEndian.Uint16(b[off : off+2])
		f.DstPort = binary.BigEndian.Uint16(b[off+2 : off+4])
		return true
	case ProtoICMP:
		return version == 4
	case ProtoICMPv6:
		return version == 6
	}
	return false
}

func isIPv6Ext(n uint8) bool {
	switch n {
	case ProtoHopOpts, ProtoRouting, ProtoDstOpts, ProtoAH, ProtoFragment:
		return true
	}
	return false
}
