package lab

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/xdpolicy/xdpolicy/dataplane/packet"
)

// TestRawSCTPPackets checks the INIT and ABORT the lab builds: they decode,
// carry what the prober matches on, and their CRC32c is the one the
// dataplane writes when it completes SCTP checksums.
func TestRawSCTPPackets(t *testing.T) {
	init := sctpInit(40000, 80, 0xdeadbeef, 7)
	p, ok := parseSCTP(init)
	if !ok || p.chunk != chunkInit || p.sport != 40000 || p.dport != 80 || p.vtag != 0 || binary.BigEndian.Uint32(p.body) != 0xdeadbeef {
		t.Fatalf("INIT decodes as %+v, %v", p, ok)
	}
	for _, reason := range []string{"x/a", "ns/pod", ""} {
		abort := sctpAbort(80, 40000, 0xdeadbeef, reason)
		if len(abort)%4 != 0 {
			t.Errorf("ABORT %q is %d bytes, not padded to 4", reason, len(abort))
		}
		p, ok := parseSCTP(abort)
		if !ok || p.chunk != chunkAbort || p.sport != 80 || p.dport != 40000 || p.vtag != 0xdeadbeef {
			t.Fatalf("ABORT %q decodes as %+v, %v", reason, p, ok)
		}
		got, ok := abortReason(p.body)
		if ok != (reason != "") || got != reason {
			t.Errorf("ABORT reason = %q, %v; want %q", got, ok, reason)
		}
		// The dataplane's checksum of the same packet in an IPv4 frame.
		frame := append(make([]byte, 14+20), abort...)
		frame[12], frame[13] = 0x08, 0x00
		ip := frame[14:]
		ip[0], ip[8], ip[9] = 0x45, 64, sctpProto
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(abort)))
		copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		want := bytes.Clone(frame)
		var pp packet.Parsed
		if !pp.Decode(frame) || !packet.CompleteChecksum(frame, &pp) || !bytes.Equal(frame, want) {
			t.Errorf("ABORT %q: the dataplane's CRC32c differs: % x, want % x", reason, frame[34+8:34+12], want[34+8:34+12])
		}
	}
	// A flipped bit fails the CRC32c.
	init[len(init)-1] ^= 1
	if _, ok := parseSCTP(init); ok {
		t.Error("a corrupted INIT passed the CRC32c check")
	}
	// The CRC32c of RFC 3720's 32 zero bytes.
	if c := sctpChecksum(make([]byte, 32)); c != 0x8a9136aa {
		t.Errorf("CRC32c of 32 zero bytes = %#x, want 0x8a9136aa", c)
	}
}
