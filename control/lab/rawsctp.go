package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw SCTP: on a kernel without an SCTP stack (CONFIG_IP_SCTP not set) the
// lab still sends and answers SCTP packets, through raw IP sockets of
// protocol 132. The kernel hands such packets to raw sockets before it looks
// for a protocol handler, and sends no ICMP protocol-unreachable when a raw
// socket took them. The prober sends an INIT; the pod's server answers every
// INIT with an ABORT whose verification tag is the INIT's initiate tag: to a
// port it serves, the ABORT carries a User-Initiated Abort cause whose reason
// is the pod's "ns/name" (the reply); to any other port, a bare ABORT (what a
// real SCTP stack sends with no listener: "refused"). Both sides check the
// CRC32c, as a real stack would.

// RawSCTPNote is appended to the observation of every SCTP cell probed over
// raw sockets.
const RawSCTPNote = "raw SCTP: this kernel has no SCTP stack"

var sctpKernel = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err == nil {
		unix.Close(fd)
		return true
	}
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		return false
	}
	// Anything else (EMFILE, EACCES…) says nothing about the stack: assume
	// it is there, so real SCTP sockets report the real error.
	return true
})

// sctpAvailable reports whether the kernel has an SCTP stack. It is
// detected once per process.
func sctpAvailable() bool { return sctpKernel() }

const (
	sctpProto = 132

	chunkInit  = 1
	chunkAbort = 6

	causeUserAbort = 12 // RFC 9260 3.3.10.12, User-Initiated Abort
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpChecksum is the CRC32c of an SCTP packet with its checksum field
// taken as zero, in the byte order the field holds it.
func sctpChecksum(pkt []byte) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, pkt[:8])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, pkt[12:])
}

func sctpSeal(pkt []byte) []byte {
	binary.LittleEndian.PutUint32(pkt[8:12], sctpChecksum(pkt))
	return pkt
}

// sctpInit builds an INIT from sport to dport with the given initiate tag.
func sctpInit(sport, dport uint16, tag, tsn uint32) []byte {
	pkt := make([]byte, 12+20)
	binary.BigEndian.PutUint16(pkt[0:], sport)
	binary.BigEndian.PutUint16(pkt[2:], dport)
	// verification tag 0: an INIT's
	c := pkt[12:]
	c[0] = chunkInit
	binary.BigEndian.PutUint16(c[2:], 20)
	binary.BigEndian.PutUint32(c[4:], tag)   // initiate tag
	binary.BigEndian.PutUint32(c[8:], 65535) // a_rwnd
	binary.BigEndian.PutUint16(c[12:], 10)   // outbound streams
	binary.BigEndian.PutUint16(c[14:], 10)   // inbound streams
	binary.BigEndian.PutUint32(c[16:], tsn)  // initial TSN
	return sctpSeal(pkt)
}

// sctpAbort builds the ABORT answering an INIT: ports swapped, the INIT's
// initiate tag as verification tag, and a User-Initiated Abort cause with
// reason when reason is not empty.
func sctpAbort(sport, dport uint16, tag uint32, reason string) []byte {
	clen := 0
	if reason != "" {
		clen = 4 + len(reason)
	}
	pad := (4 - clen%4) % 4
	pkt := make([]byte, 12+4+clen+pad)
	binary.BigEndian.PutUint16(pkt[0:], sport)
	binary.BigEndian.PutUint16(pkt[2:], dport)
	binary.BigEndian.PutUint32(pkt[4:], tag)
	c := pkt[12:]
	c[0] = chunkAbort // flags 0: T bit clear, the tag is the peer's
	binary.BigEndian.PutUint16(c[2:], uint16(4+clen))
	if reason != "" {
		binary.BigEndian.PutUint16(c[4:], causeUserAbort)
		binary.BigEndian.PutUint16(c[6:], uint16(clen))
		copy(c[8:], reason)
	}
	return sctpSeal(pkt)
}

// sctpPacket is a decoded SCTP packet: common header and first chunk.
type sctpPacket struct {
	sport, dport uint16
	vtag         uint32
	chunk        byte
	body         []byte // the first chunk's value (after type, flags, length)
}

// parseSCTP decodes pkt (from the SCTP common header on) and checks its
// CRC32c.
func parseSCTP(pkt []byte) (sctpPacket, bool) {
	if len(pkt) < 16 || binary.LittleEndian.Uint32(pkt[8:12]) != sctpChecksum(pkt) {
		return sctpPacket{}, false
	}
	p := sctpPacket{
		sport: binary.BigEndian.Uint16(pkt[0:]),
		dport: binary.BigEndian.Uint16(pkt[2:]),
		vtag:  binary.BigEndian.Uint32(pkt[4:]),
		chunk: pkt[12],
	}
	n := int(binary.BigEndian.Uint16(pkt[14:]))
	if n < 4 || 12+n > len(pkt) {
		return sctpPacket{}, false
	}
	p.body = pkt[16 : 12+n]
	return p, true
}

// abortReason returns the reason of an ABORT's User-Initiated Abort cause,
// and whether it had one.
func abortReason(body []byte) (string, bool) {
	for len(body) >= 4 {
		code, n := binary.BigEndian.Uint16(body), int(binary.BigEndian.Uint16(body[2:]))
		if n < 4 || n > len(body) {
			return "", false
		}
		if code == causeUserAbort {
			return string(body[4:n]), true
		}
		n = (n + 3) &^ 3
		if n > len(body) {
			break
		}
		body = body[n:]
	}
	return "", false
}

// rawSocket is a non-blocking raw IP socket of protocol 132 behind Go's
// poller, so reads honour deadlines and Close wakes a blocked reader.
type rawSocket struct {
	f  *os.File
	rc syscall.RawConn
	v6 bool
}

// openRaw opens a raw SCTP socket of the family in the calling thread's
// network namespace; with pktinfo, an IPv6 socket also reports the
// destination address of what it receives.
func openRaw(v6, pktinfo bool) (*rawSocket, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, sctpProto)
	if err != nil {
		return nil, fmt.Errorf("raw SCTP socket: %w", err)
	}
	if pktinfo && v6 { // IPv4 raw sockets receive the IP header itself
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("raw SCTP socket: pktinfo: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), "raw-sctp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawSocket{f: f, rc: rc, v6: v6}, nil
}

func (s *rawSocket) Close() error { return s.f.Close() }

// recv reads one packet and returns its SCTP part with its source and
// destination addresses (dst only when pktinfo was asked for, or for IPv4,
// whose raw sockets receive the IP header).
func (s *rawSocket) recv(buf, oob []byte) (pkt []byte, src, dst netip.Addr, err error) {
	var n, oobn int
	var from unix.Sockaddr
	rerr := s.rc.Read(func(fd uintptr) bool {
		n, oobn, _, from, err = unix.Recvmsg(int(fd), buf, oob, 0)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return nil, src, dst, rerr
	}
	if err != nil {
		return nil, src, dst, err
	}
	pkt = buf[:n]
	if !s.v6 {
		if n < 20 || pkt[0]>>4 != 4 {
			return nil, src, dst, nil
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || ihl > n || pkt[9] != sctpProto || binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
			return nil, src, dst, nil // fragments are not reassembled here
		}
		src = netip.AddrFrom4([4]byte(pkt[12:16]))
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		return pkt[ihl:], src, dst, nil
	}
	if sa, ok := from.(*unix.SockaddrInet6); ok {
		src = netip.AddrFrom16(sa.Addr)
	}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo {
				info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&m.Data[0]))
				dst = netip.AddrFrom16(info.Addr)
			}
		}
	}
	return pkt, src, dst, nil
}

// send sends an SCTP packet to dst, from src when src is valid.
func (s *rawSocket) send(pkt []byte, src, dst netip.Addr) error {
	var sa unix.Sockaddr
	var oob []byte
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
		if src.IsValid() {
			oob = make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
			h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			info.Spec_dst = src.As4()
		}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
		if src.IsValid() {
			oob = make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
			h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			info.Addr = src.As16()
		}
	}
	var err error
	werr := s.rc.Write(func(fd uintptr) bool {
		err = unix.Sendmsg(int(fd), pkt, oob, sa, 0)
		return err != unix.EAGAIN
	})
	if werr != nil {
		return werr
	}
	return err
}

// serveRawSCTP answers SCTP INITs on both families until ctx is done: with
// the pod's name on the ports in served, with a bare ABORT elsewhere. It
// returns once its sockets are open; wg tracks the readers.
func serveRawSCTP(ctx context.Context, pod string, served map[uint16]bool, wg *sync.WaitGroup, log io.Writer) ([]io.Closer, error) {
	var closers []io.Closer
	for _, v6 := range []bool{false, true} {
		s, err := openRaw(v6, true)
		if err != nil {
			if v6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			for _, c := range closers {
				c.Close()
			}
			return nil, err
		}
		closers = append(closers, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			oob := make([]byte, 256)
			for {
				pkt, src, dst, err := s.recv(buf, oob)
				if err != nil {
					if !errors.Is(err, os.ErrClosed) && ctx.Err() == nil {
						fmt.Fprintf(log, "raw SCTP: read: %v\n", err)
					}
					return
				}
				p, ok := parseSCTP(pkt)
				if !ok || p.chunk != chunkInit || p.vtag != 0 || len(p.body) < 16 || !src.IsValid() {
					continue // only INITs start anything; the rest is ours or noise
				}
				tag := binary.BigEndian.Uint32(p.body[0:])
				if tag == 0 {
					continue // an INIT with initiate tag 0 is silently discarded
				}
				reason := ""
				if served[p.dport] {
					reason = pod
				}
				if err := s.send(sctpAbort(p.dport, p.sport, tag, reason), dst, src); err != nil {
					fmt.Fprintf(log, "raw SCTP: answer to %s: %v\n", src, err)
				}
			}
		}()
	}
	return closers, nil
}

// errSCTPRefused is a bare ABORT in answer to the INIT: the pod was reached
// but serves nothing on the port.
var errSCTPRefused = fmt.Errorf("ABORT without reason: %w", syscall.ECONNREFUSED)

// dialRawSCTP sends an INIT to ip:port from a random port with a random
// initiate tag, twice (the second after half the timeout; a raw packet has
// no retransmission), and waits for the answer: from ip, ports swapped,
// verification tag our initiate tag. It returns the answer's reason (the
// pod's name). It must run on a thread inside the source namespace.
func dialRawSCTP(ip string, port int, timeout time.Duration) (string, error) {
	dst, err := netip.ParseAddr(ip)
	if err != nil {
		return "", err
	}
	s, err := openRaw(dst.Is6(), false)
	if err != nil {
		return "", err
	}
	defer s.Close()
	// Connected: the kernel gives this socket only packets from dst.
	var sa unix.Sockaddr
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	var cerr error
	if err := s.rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return "", err
	}
	if cerr != nil {
		return "", cerr
	}
	var rnd [10]byte
	rand.Read(rnd[:])
	sport := 32768 + binary.BigEndian.Uint16(rnd[0:])%28232
	tag := binary.BigEndian.Uint32(rnd[2:]) | 1 // never 0
	init := sctpInit(sport, uint16(port), tag, binary.BigEndian.Uint32(rnd[6:]))

	buf := make([]byte, 65536)
	start := time.Now()
	for _, until := range []time.Duration{timeout / 2, timeout} {
		if err := s.send(init, netip.Addr{}, dst); err != nil {
			return "", err
		}
		s.f.SetReadDeadline(start.Add(until))
		for {
			pkt, src, _, err := s.recv(buf, nil)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return "", err
			}
			p, ok := parseSCTP(pkt)
			if !ok || src != dst || p.sport != uint16(port) || p.dport != sport || p.vtag != tag || p.chunk != chunkAbort {
				continue
			}
			if reason, ok := abortReason(p.body); ok {
				return reason, nil
			}
			return "", errSCTPRefused
		}
	}
	return "", os.ErrDeadlineExceeded
}
