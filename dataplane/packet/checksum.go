package packet

import (
	"encoding/binary"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CompleteChecksum writes the full L4 checksum of a decoded TCP, UDP or
// SCTP packet into frame, whatever the field held before: frames from a
// veth pod carry CHECKSUM_PARTIAL (only the pseudo-header sum), which a
// receiving stack drops once the frame is re-injected as raw bytes. It
// reports false, leaving frame alone, for fragments (the checksum covers
// the whole datagram, and the kernel computes it before fragmenting), for
// other protocols (ICMP checksums are always computed in software) and for
// truncated L4 headers.
func CompleteChecksum(frame []byte, p *Parsed) bool {
	if !p.OK || p.Fragmented || p.End > len(frame) || p.L4Off > p.End {
		return false
	}
	seg := frame[p.L4Off:p.End]
	var field int
	switch p.Proto {
	case ProtoTCP:
		field = 16
		if len(seg) < 20 {
			return false
		}
	case ProtoUDP:
		field = 6
		if len(seg) < 8 {
			return false
		}
	case ProtoSCTP:
		if len(seg) < 12 {
			return false
		}
		seg[8], seg[9], seg[10], seg[11] = 0, 0, 0, 0
		binary.LittleEndian.PutUint32(seg[8:12], crc32.Checksum(seg, castagnoli))
		return true
	default:
		return false
	}
	seg[field], seg[field+1] = 0, 0
	var acc uint64
	ip := frame[p.L3Off:]
	if p.Version == 4 {
		acc = sum(acc, ip[12:20])
	} else {
		acc = sum(acc, ip[8:40])
	}
	acc += uint64(p.Proto) + uint64(len(seg))
	acc = sum(acc, seg)
	c := ^fold(acc)
	if c == 0 && p.Proto == ProtoUDP {
		c = 0xffff // 0 means "no checksum" for UDP
	}
	binary.BigEndian.PutUint16(seg[field:], c)
	return true
}

// sum adds b as big-endian 16-bit words to acc (one's complement, folded
// later). Eight bytes at a time; the carries fit in the top bits.
func sum(acc uint64, b []byte) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc += v>>48 + (v>>32)&0xffff + (v>>16)&0xffff + v&0xffff
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

func fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}
