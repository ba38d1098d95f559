package agent_test

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SCTP end to end without a kernel SCTP stack (kernels built without
// CONFIG_IP_SCTP, or without the sctp module loaded): packets of protocol
// 132 are sent and answered over raw IP sockets, as control/lab does
// (rawsctp.go there). The kernel hands them to raw sockets before it looks
// for a protocol handler, and sends no ICMP protocol-unreachable when a raw
// socket took them. The dialer sends an INIT; a responder in the
// destination pod answers every INIT with an ABORT whose verification tag
// is the INIT's initiate tag. With a kernel SCTP stack the kernel answers
// the INIT with an ABORT of its own too; either one means the INIT got
// through.

const (
	// sctpTimeout is how long sctpReached waits for the answer to an INIT
	// (the second INIT goes after half of it).
	sctpTimeout = 600 * time.Millisecond

	sctpProto  = 132
	chunkInit  = 1
	chunkAbort = 6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpSeal stores the packet's CRC32c, computed with the field zero, in the
// byte order Linux stores it.
func sctpSeal(pkt []byte) []byte {
	binary.LittleEndian.PutUint32(pkt[8:12], 0)
	binary.LittleEndian.PutUint32(pkt[8:12], crc32.Checksum(pkt, castagnoli))
	return pkt
}

func sctpValid(pkt []byte) bool {
	if len(pkt) < 16 {
		return false
	}
	c := append([]byte(nil), pkt...)
	binary.LittleEndian.PutUint32(c[8:12], 0)
	return binary.LittleEndian.Uint32(pkt[8:12]) == crc32.Checksum(c, castagnoli)
}

// sctpInit is an INIT from sport to dport with initiate tag tag.
func sctpInit(sport, dport uint16, tag uint32) []byte {
	pkt := make([]byte, 12+20)
	binary.BigEndian.PutUint16(pkt[0:], sport)
	binary.BigEndian.PutUint16(pkt[2:], dport)
	c := pkt[12:] // verification tag 0, an INIT's
	c[0] = chunkInit
	binary.BigEndian.PutUint16(c[2:], 20)
	binary.BigEndian.PutUint32(c[4:], tag)
	binary.BigEndian.PutUint32(c[8:], 65535) // a_rwnd
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], tag)  // initial TSN
	return sctpSeal(pkt)
}

// sctpAbort is the bare ABORT answering an INIT of initiate tag tag.
func sctpAbort(sport, dport uint16, tag uint32) []byte {
	pkt := make([]byte, 12+4)
	binary.BigEndian.PutUint16(pkt[0:], sport)
	binary.BigEndian.PutUint16(pkt[2:], dport)
	binary.BigEndian.PutUint32(pkt[4:], tag)
	pkt[12] = chunkAbort
	binary.BigEndian.PutUint16(pkt[14:], 4)
	return sctpSeal(pkt)
}

// openRawSCTP opens a non-blocking raw socket of protocol 132 in the
// calling thread's netns, behind Go's poller (deadlines work, Close wakes a
// reader).
func openRawSCTP(v6 bool) (*os.File, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, sctpProto)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "raw-sctp"), nil
}

// stripIPv4 returns the payload of what an IPv4 raw socket read (the IP
// header included), nil for anything else.
func stripIPv4(b []byte) []byte {
	if len(b) < 20 || b[0]>>4 != 4 || int(b[0]&0x0f)*4 > len(b) {
		return nil
	}
	return b[int(b[0]&0x0f)*4:]
}

// sctpResponder answers, in netns ns and on both families, every SCTP
// INIT with an ABORT until the test ends, and counts the INITs it saw.
func sctpResponder(t *testing.T, ns string) *atomic.Int64 {
	t.Helper()
	var inits atomic.Int64
	for _, v6 := range []bool{false, true} {
		var f *os.File
		inNetns(t, ns, func() (err error) {
			f, err = openRawSCTP(v6)
			return err
		})
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		t.Cleanup(func() { f.Close(); <-done })
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				var n int
				var from unix.Sockaddr
				var rerr error
				if err := rc.Read(func(fd uintptr) bool {
					n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
					return rerr != unix.EAGAIN
				}); err != nil {
					return // closed
				}
				if rerr == unix.EINTR {
					continue
				}
				if rerr != nil {
					return
				}
				pkt := buf[:n]
				if !v6 {
					pkt = stripIPv4(pkt)
				}
				if !sctpValid(pkt) || pkt[12] != chunkInit || binary.BigEndian.Uint32(pkt[4:]) != 0 || len(pkt) < 12+20 {
					continue // only INITs start anything
				}
				inits.Add(1)
				abort := sctpAbort(binary.BigEndian.Uint16(pkt[2:]), binary.BigEndian.Uint16(pkt[0:]), binary.BigEndian.Uint32(pkt[16:]))
				rc.Write(func(fd uintptr) bool {
					return unix.Sendto(int(fd), abort, 0, from) != unix.EAGAIN
				})
			}
		}()
	}
	return &inits
}

// sctpReached sends an SCTP INIT from netns ns to ip:port, twice (the
// second after half of timeout: a raw packet has no retransmission), and
// reports whether the ABORT answering it came back within timeout.
func sctpReached(t *testing.T, ns, ip string, port uint16, timeout time.Duration) bool {
	t.Helper()
	dst := netip.MustParseAddr(ip)
	reached := false
	inNetns(t, ns, func() error {
		f, err := openRawSCTP(dst.Is6())
		if err != nil {
			return err
		}
		defer f.Close()
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		// Connected: the socket gets only packets from dst, and a write
		// goes there.
		var sa unix.Sockaddr
		if dst.Is4() {
			sa = &unix.SockaddrInet4{Addr: dst.As4()}
		} else {
			sa = &unix.SockaddrInet6{Addr: dst.As16()}
		}
		var cerr error
		if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
			return err
		}
		if cerr != nil {
			return cerr
		}
		var rnd [6]byte
		rand.Read(rnd[:])
		sport := 32768 + binary.BigEndian.Uint16(rnd[0:])%28232
		tag := binary.BigEndian.Uint32(rnd[2:]) | 1 // never 0
		init := sctpInit(sport, port, tag)
		buf := make([]byte, 2048)
		start := time.Now()
		for _, until := range []time.Duration{timeout / 2, timeout} {
			if _, err := f.Write(init); err != nil {
				return err
			}
			f.SetReadDeadline(start.Add(until))
			for {
				n, err := f.Read(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil && !errors.Is(err, syscall.EINTR) {
					return err
				}
				pkt := buf[:n]
				if !dst.Is6() {
					pkt = stripIPv4(pkt)
				}
				if sctpValid(pkt) && pkt[12] == chunkAbort && binary.BigEndian.Uint16(pkt[0:]) == port &&
					binary.BigEndian.Uint16(pkt[2:]) == sport && binary.BigEndian.Uint32(pkt[4:]) == tag {
					reached = true
					return nil
				}
			}
		}
		return nil
	})
	return reached
}

// allowASCTP lets p1 reach p2 on SCTP port 7000 only.
const allowASCTP = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a-sctp, namespace: default}
spec:
  podSelector: {matchLabels: {app: p2}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: p1}}}]
    ports: [{protocol: SCTP, port: 7000}]
`
