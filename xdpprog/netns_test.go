package xdpprog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var testSeq atomic.Uint32

// uniqueName is unique across concurrent test processes on the machine.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), testSeq.Add(1))
}

// enterTestNetns moves the test's OS thread into a new, uniquely named
// network namespace and returns it and its way back when the test ends.
func enterTestNetns(t *testing.T) {
	t.Helper()
	requireBPF(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	name := uniqueName("xdpprog-test")
	ns, err := netns.NewNamed(name)
	if err != nil {
		restoreNetns(t, orig)
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		restoreNetns(t, orig)
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
}

func restoreNetns(t *testing.T, orig netns.NsHandle) {
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go ends it with the goroutine rather
		// than reuse it in the wrong namespace.
		t.Errorf("return to original netns: %v", err)
		return
	}
	orig.Close()
	runtime.UnlockOSThread()
}

// vethPair creates h0 <-> p0 in the current (test) namespace and returns
// the index of h0 and p0.
func vethPair(t *testing.T) (int, int) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "h0"}, PeerName: "p0"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	var idx [2]int
	for i, name := range []string{"h0", "p0"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		idx[i] = l.Attrs().Index
	}
	return idx[0], idx[1]
}

// testPinDir is a bpffs directory of the test's own, removed at the end.
func testPinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(BPFFSRoot, uniqueName("xdpprog-test"))
	err := PreparePinDir(dir)
	t.Cleanup(func() {
		os.RemoveAll(dir)
		ReleaseBPFFS()
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Skip("kernel does not report program IDs")
	}
	return id
}

// attachedTC lists the IDs of the programs on ifindex at hook, as tcx links
// or as clsact filters.
func attachedTC(t *testing.T, mode AttachMode, ifindex int, hook Hook) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	if mode == AttachTCX {
		attach := ebpf.AttachTCXIngress
		if hook == HookIngress {
			attach = ebpf.AttachTCXEgress
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
		if err != nil {
			t.Fatalf("query tcx: %v", err)
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return ids
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if hook == HookIngress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	filters, err := netlink.FilterList(l, parent)
	if err != nil {
		// No clsact qdisc: nothing attached.
		return nil
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			ids = append(ids, ebpf.ProgramID(bf.Id))
		}
	}
	return ids
}

func hasClsact(t *testing.T, ifindex int) bool {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	qdiscs, err := netlink.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

func TestAttachTC(t *testing.T) {
	requireBPF(t)
	for _, mode := range []AttachMode{AttachTCX, AttachClsact} {
		t.Run(mode.String(), func(t *testing.T) {
			o := loadObjects(t, Options{})
			old := loadObjects(t, Options{}) // the "previous agent's" programs
			enterTestNetns(t)
			h, _ := vethPair(t)
			pinDir := testPinDir(t)

			for _, hook := range []Hook{HookEgress, HookIngress} {
				pin := ""
				if mode == AttachTCX {
					pin = filepath.Join(pinDir, "link-"+hook.String())
				}
				opts := TCOptions{Mode: mode, PinPath: pin}

				// Attach the old program, then the new one as a restart
				// would: the same attachment, now running the new program.
				first, err := AttachTC(old.Program(hook), h, hook, opts)
				if errors.Is(err, ebpf.ErrNotSupported) {
					t.Skipf("kernel lacks %s: %v", mode, err)
				}
				if err != nil {
					t.Fatal(err)
				}
				if mode == AttachTCX {
					first.Close() // pinned: stays attached without us
				}
				a, err := AttachTC(o.Program(hook), h, hook, opts)
				if err != nil {
					t.Fatal(err)
				}
				if a.Mode != mode {
					t.Errorf("attached with %v, want %v", a.Mode, mode)
				}
				want := []ebpf.ProgramID{progID(t, o.Program(hook))}
				if got := attachedTC(t, mode, h, hook); !equalIDs(got, want) {
					t.Errorf("%v: attached programs %v, want %v", hook, got, want)
				}

				if err := a.Detach(); err != nil {
					t.Fatalf("detach: %v", err)
				}
				if got := attachedTC(t, mode, h, hook); len(got) != 0 {
					t.Errorf("%v: programs %v still attached after detach", hook, got)
				}
				if pin != "" {
					if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("link pin %s left behind: %v", pin, err)
					}
				}
				if mode == AttachClsact {
					// The qdisc belongs to the first attachment, which
					// created it: only its Detach removes it.
					if !hasClsact(t, h) {
						t.Error("detach removed a clsact qdisc it did not create")
					}
					if err := first.Detach(); err != nil {
						t.Fatalf("detach first: %v", err)
					}
				}
				if hasClsact(t, h) {
					t.Error("clsact qdisc left behind")
				}
			}
		})
	}
}

func TestAttachTCKeepsForeignQdisc(t *testing.T) {
	o := loadObjects(t, Options{})
	enterTestNetns(t)
	h, _ := vethPair(t)
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: h, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil {
		t.Fatal(err)
	}
	a, err := AttachTC(o.FromPod, h, HookEgress, TCOptions{Mode: AttachClsact})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	if !hasClsact(t, h) {
		t.Error("detach removed a clsact qdisc it did not create")
	}
}

func TestAttachAuto(t *testing.T) {
	o := loadObjects(t, Options{})
	enterTestNetns(t)
	h, _ := vethPair(t)
	a, err := AttachTC(o.ToPod, h, HookIngress, TCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto chose %v", a.Mode)
	if got := attachedTC(t, a.Mode, h, HookIngress); len(got) != 1 {
		t.Errorf("attached programs %v, want one", got)
	}
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
}

func equalIDs(a, b []ebpf.ProgramID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAttachXDP(t *testing.T) {
	o := loadObjects(t, Options{})
	enterTestNetns(t)
	_, p := vethPair(t)
	pin := filepath.Join(testPinDir(t), "xdp")

	a, err := AttachXDP(o.Punt, p, XDPOptions{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := xdpProgID(t, p), progID(t, o.Punt); got != want {
		t.Errorf("XDP program on p0 = %d, want %d", got, want)
	}
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	if got := xdpProgID(t, p); got != 0 {
		t.Errorf("XDP program %d still attached", got)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin left behind: %v", err)
	}
}

func xdpProgID(t *testing.T, ifindex int) ebpf.ProgramID {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return ebpf.ProgramID(x.ProgId)
	}
	return 0
}

func TestPinnedMapsSurviveRestart(t *testing.T) {
	requireBPF(t)
	dir := testPinDir(t)
	o := loadObjects(t, Options{PinDir: dir})
	_, key := tcp4(t)
	if err := o.Flows.Put(key, FlowVal{Verdict: VerdictAllow, Generation: 5}); err != nil {
		t.Fatal(err)
	}
	o.Close()

	o2 := loadObjects(t, Options{PinDir: dir})
	var v FlowVal
	if err := o2.Flows.Lookup(key, &v); err != nil {
		t.Fatalf("flow lost across restart: %v", err)
	}
	if v.Generation != 5 {
		t.Errorf("flow generation = %d, want 5", v.Generation)
	}

	if o3, err := Load(Options{PinDir: dir, FlowsMaxEntries: 2048}); !errors.Is(err, ebpf.ErrMapIncompatible) {
		if o3 != nil {
			o3.Close()
		}
		t.Errorf("loading with another flows size over the pins: err = %v, want ErrMapIncompatible", err)
	}

	if err := o2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left behind: %v", err)
	}
}

// boundXSK returns an AF_XDP socket bound to queue 0 of a veth in a test
// namespace: the smallest thing an XSKMAP accepts.
func boundXSK(t *testing.T) int {
	t.Helper()
	enterTestNetns(t)
	_, p := vethPair(t)
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0)
	if err != nil {
		t.Skipf("no AF_XDP sockets: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	const frames, frameSize = 16, 4096
	mem, err := unix.Mmap(-1, 0, frames*frameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(&mem[0]))), Len: uint64(len(mem)), Size: frameSize}
	if _, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_UMEM_REG,
		uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0); errno != 0 {
		t.Fatalf("XDP_UMEM_REG: %v", errno)
	}
	for _, opt := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, opt, frames); err != nil {
			t.Fatalf("ring size option %d: %v", opt, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrXDP{Flags: unix.XDP_COPY, Ifindex: uint32(p), QueueID: 0}); err != nil {
		t.Fatalf("bind AF_XDP socket: %v", err)
	}
	return fd
}
