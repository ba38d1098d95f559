package asavie

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/punt"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// requirePrivileges skips with one line when the benchmark cannot make
// namespaces, veths, XDP programs and AF_XDP sockets.
func requirePrivileges(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: needs root (netns, veth, XDP, AF_XDP)")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Skipf("skipping: AF_XDP sockets unavailable: %v", err)
	}
	unix.Close(fd)
}

// inNetns runs fn on a locked OS thread switched into ns and switches back;
// if switching back fails the thread dies with its goroutine instead of
// serving others from the wrong namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

var nsSeq atomic.Int64

// frameLen is the size of every generated frame (without FCS).
const frameLen = 100

// dport marks the generator's frames; the receivers check it per frame.
const dport = 9

// env is one benchmark's punt veth in its own network namespace:
//
//	dp0 (generator: AF_PACKET; XDP_DROP for frames sent back) ── dp1 (xdpprog punt program → XSKMAP[0])
type env struct {
	name     string
	ns       netns.NsHandle
	nl       *netlink.Handle
	dp0, dp1 netlink.Link
	xsks     *ebpf.Map
	gen      *generator
}

// newEnv makes the namespace and the veth pair, attaches objs.Punt to dp1
// and an XDP_DROP program to dp0, and removes it all in Cleanup.
func newEnv(tb testing.TB, objs *xdpprog.Objects) *env {
	tb.Helper()
	e := &env{name: fmt.Sprintf("xdpasv-%d-%d", os.Getpid(), nsSeq.Add(1)), xsks: objs.XSKs}
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace: do it
		// on a throwaway locked thread and never unlock it.
		runtime.LockOSThread()
		var err error
		e.ns, err = netns.NewNamed(e.name)
		errc <- err
	}()
	if err := <-errc; err != nil {
		tb.Fatalf("create netns %s: %v", e.name, err)
	}
	tb.Cleanup(e.remove)
	var err error
	if e.nl, err = netlink.NewHandleAt(e.ns); err != nil {
		tb.Fatalf("netlink in %s: %v", e.name, err)
	}
	e.do(tb, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0); err != nil {
				return err
			}
		}
		return nil
	})
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dp0", MTU: punt.MTU}, PeerName: "dp1", PeerMTU: punt.MTU}
	if err := e.nl.LinkAdd(v); err != nil {
		tb.Fatalf("add veth dp0/dp1 in %s: %v", e.name, err)
	}
	for _, name := range []string{"dp0", "dp1"} {
		l, err := e.nl.LinkByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		if err := e.nl.LinkSetUp(l); err != nil {
			tb.Fatalf("up %s: %v", name, err)
		}
		if name == "dp0" {
			e.dp0 = l
		} else {
			e.dp1 = l
		}
	}

	drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1 /* XDP_DROP */), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("load XDP_DROP: %v", err)
	}
	tb.Cleanup(func() { drop.Close() })
	e.do(tb, func() error {
		a, err := xdpprog.AttachXDP(objs.Punt, e.dp1.Attrs().Index, xdpprog.XDPOptions{})
		if err != nil {
			return err
		}
		tb.Cleanup(func() { a.Detach() })
		l, err := link.AttachXDP(link.XDPOptions{Program: drop, Interface: e.dp0.Attrs().Index})
		if err != nil {
			return fmt.Errorf("attach XDP_DROP to dp0: %w", err)
		}
		tb.Cleanup(func() { l.Close() })
		return nil
	})
	e.gen = newGenerator(tb, e)
	return e
}

func (e *env) remove() {
	if e.nl != nil {
		e.nl.Close()
	}
	if e.ns.IsOpen() {
		e.ns.Close()
	}
	if _, err := os.Stat(filepath.Join("/run/netns", e.name)); err == nil {
		netns.DeleteNamed(e.name)
	}
}

// do runs fn inside the namespace.
func (e *env) do(tb testing.TB, fn func() error) {
	tb.Helper()
	if err := inNetns(e.ns, fn); err != nil {
		tb.Fatalf("in netns %s: %v", e.name, err)
	}
}

// register puts a socket into the XSKMAP slot of dp1's only RX queue.
func (e *env) register(tb testing.TB, fd int) {
	tb.Helper()
	if err := e.xsks.Put(uint32(0), uint32(fd)); err != nil {
		tb.Fatalf("XSKMAP update: %v", err)
	}
}

// generator writes pre-built frames into dp0 with sendmmsg on an AF_PACKET
// socket (qdisc bypassed). It is library-neutral and allocates nothing per
// call: every message points at the same frame.
type generator struct {
	fd    int
	frame []byte
	sa    unix.RawSockaddrLinklayer
	iov   unix.Iovec
	msgs  []unix.Mmsghdr
	short uint64 // sendmmsg calls that took fewer frames than offered
}

const genBatch = 64

func newGenerator(tb testing.TB, e *env) *generator {
	tb.Helper()
	g := &generator{frame: udpFrame(e.dp1.Attrs().HardwareAddr, e.dp0.Attrs().HardwareAddr)}
	e.do(tb, func() (err error) {
		g.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	tb.Cleanup(func() { unix.Close(g.fd) })
	if err := unix.SetsockoptInt(g.fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		tb.Fatalf("PACKET_QDISC_BYPASS: %v", err)
	}
	g.sa = unix.RawSockaddrLinklayer{
		Family:   unix.AF_PACKET,
		Protocol: htons(unix.ETH_P_IP),
		Ifindex:  int32(e.dp0.Attrs().Index),
		Halen:    6,
	}
	copy(g.sa.Addr[:], e.dp1.Attrs().HardwareAddr)
	g.iov.Base = &g.frame[0]
	g.iov.SetLen(len(g.frame))
	g.msgs = make([]unix.Mmsghdr, genBatch)
	for i := range g.msgs {
		h := &g.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&g.sa))
		h.Namelen = unix.SizeofSockaddrLinklayer
		h.Iov = &g.iov
		h.SetIovlen(1)
	}
	return g
}

// send writes n frames and returns how many the kernel took.
func (g *generator) send(n int) (int, error) {
	sent := 0
	for sent < n {
		k := min(n-sent, genBatch)
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(g.fd), uintptr(unsafe.Pointer(&g.msgs[0])), uintptr(k), 0, 0, 0)
		switch e {
		case 0:
			if int(r) < k {
				g.short++
			}
			sent += int(r)
		case unix.EINTR, unix.EAGAIN, unix.ENOBUFS:
			g.short++
			runtime.Gosched()
		default:
			return sent, fmt.Errorf("sendmmsg on dp0: %w", e)
		}
	}
	return sent, nil
}

// udpFrame builds a frameLen-byte Ethernet/IPv4/UDP frame to port dport
// (documentation addresses; it never reaches a stack).
func udpFrame(dst, src net.HardwareAddr) []byte {
	b := make([]byte, frameLen)
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], frameLen-14)
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], []byte{192, 0, 2, 2})
	copy(ip[16:20], []byte{192, 0, 2, 1})
	var s uint32
	for i := 0; i < 20; i += 2 {
		s += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(s))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], frameLen-34) // checksum 0: none (IPv4)
	for i := range udp[8:] {
		udp[8+i] = byte(i)
	}
	return b
}

// ours reports whether a received frame is one of the generator's.
func ours(f []byte) bool {
	return len(f) == frameLen && f[23] == unix.IPPROTO_UDP && binary.BigEndian.Uint16(f[36:]) == dport
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
