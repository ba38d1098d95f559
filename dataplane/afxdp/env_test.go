package afxdp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
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
)

// requirePrivileges skips with one line when the test cannot make
// namespaces, veths, XDP programs and AF_XDP sockets.
func requirePrivileges(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (netns, veth, XDP, AF_XDP)")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: AF_XDP unavailable: %v", explain("socket", err))
	}
	unix.Close(fd)
}

var nsSeq atomic.Int64

// namespace is a named network namespace owned by one test.
type namespace struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

// newNamespace makes a uniquely named netns and removes it in t.Cleanup.
func newNamespace(t testing.TB, tag string) *namespace {
	t.Helper()
	name := fmt.Sprintf("xdpt-%d-%d-%s", os.Getpid(), nsSeq.Add(1), tag)
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace: do it
		// on a throwaway locked thread and never unlock it.
		runtime.LockOSThread()
		var err error
		h, err = netns.NewNamed(name)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	ns := &namespace{name: name, h: h}
	t.Cleanup(ns.remove)
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	ns.nl = nl
	// Quieten the links: no IPv6 DAD/MLD/RS frames to filter out.
	ns.do(t, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0); err != nil {
				return err
			}
		}
		return nil
	})
	return ns
}

func (ns *namespace) remove() {
	if ns.nl != nil {
		ns.nl.Close()
		ns.nl = nil
	}
	if ns.h.IsOpen() {
		ns.h.Close()
	}
	if _, err := os.Stat(filepath.Join("/run/netns", ns.name)); err == nil {
		netns.DeleteNamed(ns.name)
	}
}

// do runs fn inside the namespace.
func (ns *namespace) do(t testing.TB, fn func() error) {
	t.Helper()
	if err := inNetns(ns.h, fn); err != nil {
		t.Fatalf("in netns %s: %v", ns.name, err)
	}
}

type iface struct {
	name  string
	index int
	mac   net.HardwareAddr
	ns    *namespace
}

// addVeth creates a veth pair with one end in each namespace, brings both
// up and optionally gives addresses (a prefix in CIDR form, or "").
func addVeth(t testing.TB, aNs *namespace, a, aAddr string, bNs *namespace, b, bAddr string) (iface, iface) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b, PeerNamespace: netlink.NsFd(int(bNs.h))}
	if err := aNs.nl.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s/%s: %v", a, b, err)
	}
	up := func(ns *namespace, name, addr string) iface {
		l, err := ns.nl.LinkByName(name)
		if err != nil {
			t.Fatalf("find %s: %v", name, err)
		}
		if addr != "" {
			pfx, err := netlink.ParseAddr(addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := ns.nl.AddrAdd(l, pfx); err != nil {
				t.Fatalf("address %s on %s: %v", addr, name, err)
			}
		}
		if err := ns.nl.LinkSetUp(l); err != nil {
			t.Fatalf("up %s: %v", name, err)
		}
		return iface{name: name, index: l.Attrs().Index, mac: l.Attrs().HardwareAddr, ns: ns}
	}
	return up(aNs, a, aAddr), up(bNs, b, bAddr)
}

// attachRedirect attaches, to ifc, the XDP program the dataplane puts on
// its punt veth: bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS),
// written with asm so the test needs no clang.
func attachRedirect(t testing.TB, ifc iface) *ebpf.Map {
	t.Helper()
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 64})
	if err != nil {
		t.Fatalf("create XSKMAP: %v", err)
	}
	t.Cleanup(func() { xsks.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word), // r2 = ctx->rx_queue_index
			asm.LoadMapPtr(asm.R1, xsks.FD()),
			asm.Mov.Imm(asm.R3, 2), // XDP_PASS when no socket is in the map
			asm.FnRedirectMap.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load XDP program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	ifc.ns.do(t, func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.index})
		return err
	})
	t.Cleanup(func() { l.Close() })
	return xsks
}

// rawSender returns a function that writes whole Ethernet frames out of ifc
// with an AF_PACKET socket made inside ifc's namespace.
func rawSender(t testing.TB, ifc iface) func(frame []byte) {
	t.Helper()
	var fd int
	ifc.ns.do(t, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrLinklayer{Ifindex: ifc.index, Halen: 6}
	return func(frame []byte) {
		t.Helper()
		copy(sa.Addr[:], frame[:6])
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatalf("AF_PACKET send on %s: %v", ifc.name, err)
		}
	}
}

// udpFrame builds an Ethernet/IPv4/UDP frame with valid IP and full UDP
// checksums, as a receiving stack demands of a frame that arrives without
// checksum offload metadata.
func udpFrame(dst, src net.HardwareAddr, srcIP, dstIP netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 14+20+8+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := srcIP.As4(), dstIP.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(0, ip)))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	ps := sum(0, s4[:])
	ps = sum(ps, d4[:])
	ps += unix.IPPROTO_UDP + uint32(len(udp))
	c := ^fold(sum(ps, udp))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

func sum(acc uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}

// listenUDP opens a UDP socket inside ns.
func listenUDP(t testing.TB, ns *namespace, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	ns.do(t, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// lab is the dataplane's shape in miniature:
//
//	ns S: s0 ──veth── dp1 :ns N   (XDP redirect → RX socket, the punt veth)
//	ns P: pod0 ─veth── host0 :ns H (TX-only socket on pod0; UDP server on host0)
//
// Frames written on s0 are received on dp1's AF_XDP socket and re-sent,
// from the same UMEM frame, out of pod0 to host0's stack.
type lab struct {
	s, n, p, h    *namespace
	s0, dp1       iface
	pod0, host0   iface
	podIP, hostIP netip.Addr
	xsks          *ebpf.Map
	send          func([]byte)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requirePrivileges(t)
	l := &lab{
		s: newNamespace(t, "s"), n: newNamespace(t, "n"),
		p: newNamespace(t, "p"), h: newNamespace(t, "h"),
		podIP: netip.MustParseAddr("192.0.2.2"), hostIP: netip.MustParseAddr("192.0.2.1"),
	}
	l.s0, l.dp1 = addVeth(t, l.s, "s0", "", l.n, "dp1", "")
	l.pod0, l.host0 = addVeth(t, l.p, "pod0", "192.0.2.2/24", l.h, "host0", "192.0.2.1/24")
	l.xsks = attachRedirect(t, l.dp1)
	l.send = rawSender(t, l.s0)
	return l
}

// frameToHost is a datagram from the pod to host0's UDP server, the shape
// of a punted frame of the "leaving the pod" direction.
func (l *lab) frameToHost(port uint16, payload []byte) []byte {
	return udpFrame(l.host0.mac, l.pod0.mac, l.podIP, l.hostIP, 40000, port, payload)
}

func unsafeAddrs(b []byte, n int) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n)
}
