package punt_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/punt"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// requirePrivileges skips with one line when the test cannot make network
// namespaces and veths, load BPF programs and open AF_XDP sockets.
func requirePrivileges(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (netns, veth, BPF, XDP, AF_XDP)")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: AF_XDP unavailable (CONFIG_XDP_SOCKETS): %v", err)
	}
	unix.Close(fd)
}

var seq atomic.Int32

func uniqueName(tag string) string {
	return fmt.Sprintf("xdpp%d-%d-%s", os.Getpid()%100000, seq.Add(1), tag)
}

// enterNewNetns locks the test's goroutine to its OS thread, moves it into
// a new uniquely named network namespace until the test ends (cleanups
// registered later run there too), then deletes the namespace. If it
// cannot switch back, the thread stays locked and dies with the test's
// goroutine rather than serve others in the wrong namespace.
func enterNewNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	name := uniqueName("punt")
	ns, err := netns.NewNamed(name) // moves the thread into it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("return to the original netns: %v", err)
		} else {
			orig.Close()
			runtime.UnlockOSThread()
		}
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
}

// loadObjects loads the programs with their maps pinned in a bpffs
// directory of the test's own.
func loadObjects(t *testing.T) (*xdpprog.Objects, string) {
	t.Helper()
	pinDir := filepath.Join(xdpprog.BPFFSRoot, "xdpolicy-test-"+uniqueName("punt"))
	if err := xdpprog.PreparePinDir(pinDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(pinDir)
		xdpprog.ReleaseBPFFS() // when xdpolicy mounted it and nothing else is pinned
	})
	objs, err := xdpprog.Load(xdpprog.Options{PinDir: pinDir, FlowsMaxEntries: 1024})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return objs, pinDir
}

// open opens the punt port and makes sure it is closed (detaching) when
// the test ends, unless the test closed it itself.
func open(t *testing.T, o punt.Options) (*punt.Port, *bool) {
	t.Helper()
	p, err := punt.Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	closed := new(bool)
	t.Cleanup(func() {
		if !*closed {
			p.Close(false)
		}
	})
	return p, closed
}

// rawSocket returns an AF_PACKET socket of the current netns writing whole
// Ethernet frames out of ifindex.
func rawSocket(t *testing.T, ifindex int) func(frame []byte) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func(frame []byte) {
		t.Helper()
		sa := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}
		copy(sa.Addr[:], frame[:6])
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatalf("send on ifindex %d: %v", ifindex, err)
		}
	}
}

// puntedFrame is what a tcx program redirects into dp0: here a frame
// caught leaving the pod behind H ifindex 42, with a payload unique to the
// test (an experimental EtherType: nothing but the XDP program looks at it).
func puntedFrame(dst []byte, payload string) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst)
	xdpprog.PutPunt(f, xdpprog.HookEgress, 42)
	f[12], f[13] = 0x88, 0xb5
	return append(f, payload...)
}

// receive sends frame into dp0 until one of the RX sockets receives it
// (a frame sent while the fresh veth is still coming up is lost), and
// returns the index of that socket.
func receive(t *testing.T, p *punt.Port, send func([]byte), frame []byte) int {
	t.Helper()
	descs := make([]afxdp.Desc, 16)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		send(frame)
		for i, rx := range p.RX {
			if _, err := rx.Poll(50 * time.Millisecond); err != nil {
				t.Fatalf("poll RX socket %d: %v", i, err)
			}
			n := rx.Receive(descs)
			for _, d := range descs[:n] {
				if bytes.Equal(p.UMEM.Frame(d.Addr, int(d.Len)), frame) {
					return i
				}
			}
		}
	}
	t.Fatalf("the frame written into %s reached no RX socket on %s within 5s", punt.Dev0, punt.Dev1)
	return -1
}

// xdpProg returns the ID of the XDP program attached to name, 0 if none.
func xdpProg(t *testing.T, name string) uint32 {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

func progID(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Skip("skipping: kernel does not report program IDs")
	}
	return uint32(id)
}

// TestOpenReceiveClose: Open makes the dp0/dp1 veth with an RX socket per
// queue of dp1 behind the XDP punt program; a frame written into dp0
// arrives at one of them byte for byte. Close(true) leaves the veth and the
// pinned program (frames now find no socket and are dropped), a second
// Open takes them over, and Close(false) removes them.
func TestOpenReceiveClose(t *testing.T) {
	requirePrivileges(t)
	enterNewNetns(t)
	objs, pinDir := loadObjects(t)
	opts := punt.Options{Objects: objs, PinDir: pinDir, Queues: 2, NumFrames: 256}
	p, closed := open(t, opts)

	puntID := progID(t, objs.Punt)
	for _, name := range []string{punt.Dev0, punt.Dev1} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatalf("after Open: %v", err)
		}
		if _, ok := l.(*netlink.Veth); !ok || l.Attrs().MTU != punt.MTU || l.Attrs().Flags&unix.IFF_UP == 0 {
			t.Errorf("%s: %s, MTU %d, flags %v; want an up veth with MTU %d", name, l.Type(), l.Attrs().MTU, l.Attrs().Flags, punt.MTU)
		}
		if want := map[string]int{punt.Dev0: p.Index0, punt.Dev1: p.Index1}[name]; l.Attrs().Index != want {
			t.Errorf("%s has index %d, Port says %d", name, l.Attrs().Index, want)
		}
	}
	if got := xdpProg(t, punt.Dev1); got != puntID {
		t.Errorf("XDP program on %s: %d, want the punt program %d", punt.Dev1, got, puntID)
	}
	if got := xdpProg(t, punt.Dev0); got != 0 {
		t.Errorf("XDP program %d on %s, want none", got, punt.Dev0)
	}
	pin := filepath.Join(pinDir, "xdp-"+punt.Dev1)
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("XDP link not pinned: %v", err)
	}
	if len(p.RX) != 2 {
		t.Fatalf("%d RX sockets, want one per queue of %s (2)", len(p.RX), punt.Dev1)
	}

	// Give each socket frames to receive into, then write into dp0.
	free := p.UMEM.NewFreeList(0, p.UMEM.NumFrames())
	for i, rx := range p.RX {
		addrs := make([]uint64, 64)
		n := free.GetBatch(addrs)
		if got := rx.Fill(addrs[:n]); got != n {
			t.Fatalf("RX socket %d: Fill took %d of %d", i, got, n)
		}
	}
	l1, err := netlink.LinkByName(punt.Dev1)
	if err != nil {
		t.Fatal(err)
	}
	send := rawSocket(t, p.Index0)
	frame := puntedFrame(l1.Attrs().HardwareAddr, "punted "+uniqueName("frame"))
	q := receive(t, p, send, frame)
	t.Logf("received on RX socket %d", q)
	c, err := objs.ReadPuntCounters()
	if err != nil || c[xdpprog.PuntCounterRedirect] == 0 {
		t.Errorf("punt counters %v, %v: want redirects counted", c, err)
	}

	// Close(true): the veth and the pinned program stay; the sockets are
	// gone, so a frame is dropped for want of one (fail closed).
	if err := p.Close(true); err != nil {
		t.Errorf("Close(true): %v", err)
	}
	*closed = true
	if got := xdpProg(t, punt.Dev1); got != puntID {
		t.Errorf("after Close(true): XDP program on %s is %d, want %d still", punt.Dev1, got, puntID)
	}
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("after Close(true): pin gone: %v", err)
	}
	before := c[xdpprog.PuntCounterNoSocket]
	deadline := time.Now().Add(5 * time.Second)
	for c[xdpprog.PuntCounterNoSocket] == before && time.Now().Before(deadline) {
		send(frame)
		time.Sleep(20 * time.Millisecond)
		if c, err = objs.ReadPuntCounters(); err != nil {
			t.Fatal(err)
		}
	}
	if c[xdpprog.PuntCounterNoSocket] == before {
		t.Errorf("after Close(true): frames into %s are not counted as finding no socket: %v", punt.Dev0, c)
	}

	// A second Open reuses dp0/dp1 and the pinned program.
	p2, closed2 := open(t, opts)
	if p2.Index0 != p.Index0 || p2.Index1 != p.Index1 || xdpProg(t, punt.Dev1) != puntID {
		t.Errorf("reopen: indexes %d/%d (were %d/%d), XDP program %d; want the same veth and program %d",
			p2.Index0, p2.Index1, p.Index0, p.Index1, xdpProg(t, punt.Dev1), puntID)
	}

	// Close(false): veth, program and pin are gone.
	if err := p2.Close(false); err != nil {
		t.Errorf("Close(false): %v", err)
	}
	*closed2 = true
	for _, name := range []string{punt.Dev0, punt.Dev1} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("after Close(false): %s still exists", name)
		}
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close(false): pin %s left behind (%v)", pin, err)
	}
}

// TestOpenRefusesForeignDev0: a dp0 that is not a veth is not ours; Open
// fails naming it and leaves it alone.
func TestOpenRefusesForeignDev0(t *testing.T) {
	requirePrivileges(t)
	enterNewNetns(t)
	objs, pinDir := loadObjects(t)
	if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: punt.Dev0}}); err != nil {
		t.Fatalf("add ifb %s: %v", punt.Dev0, err)
	}
	p, err := punt.Open(punt.Options{Objects: objs, PinDir: pinDir, Queues: 1, NumFrames: 64})
	if err == nil {
		p.Close(false)
		t.Fatal("Open over an ifb named dp0 succeeded")
	}
	if want := punt.Dev0 + " exists and is not a veth (ifb)"; !strings.Contains(err.Error(), want) {
		t.Errorf("Open: %v, want it to say %q", err, want)
	}
	if l, err := netlink.LinkByName(punt.Dev0); err != nil || l.Type() != "ifb" {
		t.Errorf("the foreign %s was touched: %v", punt.Dev0, err)
	}
}
