package podwire

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// The tests build a node netns N with real pod veths and run the finder
// and the Wirer on the test's OS thread switched into N:
//
//	routed (CNI ptp):    N: xh1 ──veth── eth0 :P1 10.99.1.2/32, N routes 10.99.1.2/32 dev xh1
//	bridged (CNI bridge): N: br0 10.99.2.254/24 with ports
//	                         xh2 ──veth── eth0 :P2 10.99.2.2/24
//	                         xh3 ──veth── eth0 :P3 10.99.2.3/24
//	not a veth:          N: nv0 (ifb), N routes 10.99.7.0/24 dev nv0

// requirePrivileges skips with one line when the test cannot make network
// namespaces and veths, load BPF programs and open AF_XDP sockets.
func requirePrivileges(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (netns, veth, BPF, tcx, AF_XDP)")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: AF_XDP unavailable (CONFIG_XDP_SOCKETS): %v", err)
	}
	unix.Close(fd)
}

var seq atomic.Int32

// uniqueName is unique across tests and concurrent test processes.
func uniqueName(tag string) string {
	return fmt.Sprintf("xdpw%d-%d-%s", os.Getpid()%100000, seq.Add(1), tag)
}

// newNetns makes a uniquely named network namespace (named, so that the
// finder finds it in /run/netns) and deletes it when the test ends.
func newNetns(t *testing.T, tag string) netns.NsHandle {
	t.Helper()
	name := uniqueName(tag)
	errc := make(chan error, 1)
	var h netns.NsHandle
	go func() {
		// NewNamed moves the calling thread into the new namespace: do it
		// on a throwaway locked thread, which ends with the goroutine.
		runtime.LockOSThread()
		var err error
		h, err = netns.NewNamed(name)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return h
}

// enterNetns locks the test's goroutine to its OS thread and moves the
// thread into ns until the test ends (cleanups registered later run there
// too). If it cannot switch back, the thread stays locked and dies with
// the test's goroutine rather than serve others in the wrong namespace.
func enterNetns(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("enter netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("return to the original netns: %v", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	})
}

// node is the topology above; the test's thread is in N.
type node struct {
	h           map[string]int              // host veth (xh1…xh3) → ifindex in N
	hostMAC     map[string]net.HardwareAddr // host veth → its MAC
	podMAC      map[string]net.HardwareAddr // host veth → MAC of eth0 behind it
	routed      netip.Addr                  // behind xh1
	bridged     [2]netip.Addr               // behind xh2, xh3
	notVeth     netip.Addr                  // routed out nv0
	noRoute     netip.Addr                  // routed nowhere
	bridgeIndex int
	otherIndex  int // nv0
}

func newNode(t *testing.T) *node {
	t.Helper()
	requirePrivileges(t)
	nodeNS := newNetns(t, "node")
	n := &node{
		h: map[string]int{}, hostMAC: map[string]net.HardwareAddr{}, podMAC: map[string]net.HardwareAddr{},
		routed:  netip.MustParseAddr("10.99.1.2"),
		bridged: [2]netip.Addr{netip.MustParseAddr("10.99.2.2"), netip.MustParseAddr("10.99.2.3")},
		notVeth: netip.MustParseAddr("10.99.7.4"),
		noRoute: netip.MustParseAddr("10.98.0.5"),
	}
	// The pods' namespaces first, so that N is entered last and left first.
	pods := map[string]netns.NsHandle{"xh1": newNetns(t, "p1"), "xh2": newNetns(t, "p2"), "xh3": newNetns(t, "p3")}
	enterNetns(t, nodeNS)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	lo, err := netlink.LinkByName("lo")
	must("find lo", err)
	must("lo up", netlink.LinkSetUp(lo))

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	must("add br0", netlink.LinkAdd(br))
	must("address br0", netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet("10.99.2.254/24")}))
	must("br0 up", netlink.LinkSetUp(br))
	n.bridgeIndex = br.Attrs().Index

	// An ifb, not a dummy: this kernel, like some, has no dummy driver.
	notVeth := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "nv0"}}
	must("add nv0", netlink.LinkAdd(notVeth))
	must("nv0 up", netlink.LinkSetUp(notVeth))
	n.otherIndex = notVeth.Attrs().Index
	must("route via nv0", netlink.RouteAdd(&netlink.Route{LinkIndex: n.otherIndex, Dst: ipNet("10.99.7.0/24")}))

	for host, podAddr := range map[string]string{"xh1": "10.99.1.2/32", "xh2": "10.99.2.2/24", "xh3": "10.99.2.3/24"} {
		pns := pods[host]
		must("add veth "+host, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pns))}))
		ph, err := netlink.NewHandleAt(pns)
		must("netlink in pod netns", err)
		eth0, err := ph.LinkByName("eth0")
		must("find eth0", err)
		must("address eth0", ph.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(podAddr)}))
		must("eth0 up", ph.LinkSetUp(eth0))
		ph.Close()
		l, err := netlink.LinkByName(host)
		must("find "+host, err)
		if host != "xh1" {
			must(host+" on br0", netlink.LinkSetMaster(l, br))
		}
		must(host+" up", netlink.LinkSetUp(l))
		n.h[host], n.hostMAC[host], n.podMAC[host] = l.Attrs().Index, l.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr
	}
	must("route to the routed pod", netlink.RouteAdd(&netlink.Route{LinkIndex: n.h["xh1"], Dst: ipNet("10.99.1.2/32"), Scope: netlink.SCOPE_LINK}))
	return n
}

func ipNet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

// TestFinder: the finder picks the host veth of a routed pod from the
// route, the right port of a bridge for each bridged pod (twice: the
// second lookup from its cache), and fails with what is wrong when the
// route goes out neither a veth nor a bridge, or nowhere.
func TestFinder(t *testing.T) {
	n := newNode(t)
	var f finder
	for round := range 2 {
		for _, c := range []struct {
			ip   netip.Addr
			want string
		}{{n.routed, "xh1"}, {n.bridged[0], "xh2"}, {n.bridged[1], "xh3"}} {
			got, err := f.hostIndex(c.ip)
			if err != nil || int(got) != n.h[c.want] {
				t.Errorf("round %d: hostIndex(%s) = %d, %v; want %s (%d)", round, c.ip, got, err, c.want, n.h[c.want])
			}
		}
	}
	if p := f.bridged[n.bridged[1]]; p.ifindex != n.h["xh3"] || p.master != n.bridgeIndex {
		t.Errorf("cache for %s = %+v, want port %d of bridge %d", n.bridged[1], p, n.h["xh3"], n.bridgeIndex)
	}
	if _, err := f.hostIndex(n.notVeth); err == nil || !strings.Contains(err.Error(), "goes out nv0 (ifb), neither a pod's veth nor a bridge") {
		t.Errorf("hostIndex(%s) out an ifb: %v, want an error naming nv0", n.notVeth, err)
	}
	if _, err := f.hostIndex(n.noRoute); err == nil || !strings.Contains(err.Error(), n.noRoute.String()) {
		t.Errorf("hostIndex(%s) with no route: %v, want an error naming the address", n.noRoute, err)
	}
	// A bridge whose ports lead to no netns holding the address.
	if _, err := f.hostIndex(netip.MustParseAddr("10.99.2.77")); err == nil || !strings.Contains(err.Error(), "no veth on bridge br0") {
		t.Errorf("hostIndex of an address no bridged pod has: %v", err)
	}
}

// wiring is a loaded program set, a UMEM and a Wirer over a node.
type wiring struct {
	objs   *xdpprog.Objects
	umem   *afxdp.UMEM
	pinDir string
	opts   Options
}

func newWiring(t *testing.T) *wiring {
	t.Helper()
	pinDir := filepath.Join(xdpprog.BPFFSRoot, "xdpolicy-test-"+uniqueName("podwire"))
	if err := xdpprog.PreparePinDir(pinDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(pinDir)
		xdpprog.ReleaseBPFFS() // when xdpolicy mounted it and nothing else is pinned
	})
	objs, err := xdpprog.Load(xdpprog.Options{PinDir: pinDir, FlowsMaxEntries: 1024, PodsMaxEntries: 64})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	umem, err := afxdp.NewUMEM(afxdp.UMEMConfig{FrameSize: 4096, NumFrames: 64, BindFlags: unix.XDP_COPY})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { umem.Close() })
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &wiring{objs: objs, umem: umem, pinDir: pinDir,
		opts: Options{Objects: objs, UMEM: umem, PinDir: pinDir, Node: "n1", Log: log}}
}

// newWirer returns a Wirer that is closed (detaching) when the test ends,
// whatever happened; closing an already closed Wirer does nothing.
func (wr *wiring) newWirer(t *testing.T) *Wirer {
	w := New(wr.opts)
	t.Cleanup(func() { w.Close(false) })
	return w
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// denyAll is a table isolating dir that admits nothing.
func denyAll(dir ruleset.Direction) *ruleset.Table { return ruleset.NewTable(dir, []int32{0}, nil) }

// cluster is a snapshot of the node's pods: p1 (routed) isolated for
// ingress, p2 (bridged) not isolated, p3 (bridged) isolated for egress, p4
// isolated but routed out an ifb, a pod of another node and a hostNetwork
// pod. Without p2 when withP2 is false.
func (n *node) cluster(withP2 bool) *ruleset.Ruleset {
	pod := func(name, node string, ip netip.Addr) ruleset.Pod {
		return ruleset.Pod{Namespace: "default", Name: name, Node: node, IPs: []netip.Addr{ip}}
	}
	p1, p3, p4 := pod("p1", "n1", n.routed), pod("p3", "n1", n.bridged[1]), pod("p4", "n1", n.notVeth)
	p1.Tables[ruleset.Ingress] = denyAll(ruleset.Ingress)
	p3.Tables[ruleset.Egress] = denyAll(ruleset.Egress)
	p4.Tables[ruleset.Ingress] = denyAll(ruleset.Ingress)
	elsewhere := pod("elsewhere", "n2", netip.MustParseAddr("10.99.1.9"))
	elsewhere.Tables[ruleset.Ingress] = denyAll(ruleset.Ingress)
	host := pod("host", "n1", netip.MustParseAddr("10.99.2.254"))
	host.HostNetwork = true
	pods := []ruleset.Pod{p1, p3, p4, elsewhere, host}
	if withP2 {
		pods = append(pods, pod("p2", "n1", n.bridged[0]))
	}
	ident := make([]int32, len(pods))
	for i := range ident {
		ident[i] = ruleset.NoIdentity
	}
	return ruleset.New(pods, []ruleset.Policy{{Namespace: "default", Name: "deny"}}, ident)
}

// hooks are the two tcx attach points of H and the programs they get.
var hooks = []struct {
	hook   xdpprog.Hook
	attach ebpf.AttachType
}{
	{xdpprog.HookEgress, ebpf.AttachTCXIngress}, // leaving the pod: tcx ingress of H
	{xdpprog.HookIngress, ebpf.AttachTCXEgress}, // entering the pod: tcx egress of H
}

// attached returns the IDs of the programs attached with tcx to ifindex
// at attach (asked of the kernel, not of the Wirer).
func attached(t *testing.T, ifindex int, attach ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel has no tcx (Linux 6.6+): %v", err)
	}
	if err != nil {
		t.Fatalf("query tcx %s of ifindex %d: %v", attach, ifindex, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Skip("skipping: kernel does not report program IDs")
	}
	return id
}

// checkWired asserts that H (host) carries exactly the Wirer's programs,
// pinned, and has a pods map entry with flags and both MACs.
func (wr *wiring) checkWired(t *testing.T, n *node, host string, flags uint32) {
	t.Helper()
	idx := n.h[host]
	for _, h := range hooks {
		want := progID(t, wr.objs.Program(h.hook))
		if got := attached(t, idx, h.attach); !slices.Equal(got, []ebpf.ProgramID{want}) {
			t.Errorf("%s %s: programs %v, want [%d] (the %s program)", host, h.attach, got, want, h.hook)
		}
		pin := filepath.Join(wr.pinDir, fmt.Sprintf("tcx-%d-%s", idx, h.hook))
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("%s %s: not pinned: %v", host, h.hook, err)
		}
	}
	var info xdpprog.PodInfo
	if err := wr.objs.Pods.Lookup(uint32(idx), &info); err != nil {
		t.Errorf("%s: pods map entry: %v", host, err)
		return
	}
	if info.Flags != flags || net.HardwareAddr(info.PodMac[:]).String() != n.podMAC[host].String() ||
		net.HardwareAddr(info.HostMac[:]).String() != n.hostMAC[host].String() {
		t.Errorf("%s: pods map entry flags %#x pod MAC %x host MAC %x; want %#x, %s, %s",
			host, info.Flags, info.PodMac, info.HostMac, flags, n.podMAC[host], n.hostMAC[host])
	}
}

// checkUnwired asserts that H carries no programs and no pins; with
// entryGone, that its pods map entry is gone too.
func (wr *wiring) checkUnwired(t *testing.T, n *node, host string, entryGone bool) {
	t.Helper()
	idx := n.h[host]
	for _, h := range hooks {
		if got := attached(t, idx, h.attach); len(got) != 0 {
			t.Errorf("%s %s: programs %v still attached", host, h.attach, got)
		}
		pin := filepath.Join(wr.pinDir, fmt.Sprintf("tcx-%d-%s", idx, h.hook))
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s %s: pin %s left behind (%v)", host, h.hook, pin, err)
		}
	}
	var info xdpprog.PodInfo
	if err := wr.objs.Pods.Lookup(uint32(idx), &info); entryGone && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("%s: pods map entry left behind: %+v, %v", host, info, err)
	}
}

// TestWirerSync wires a routed and two bridged pods from a snapshot,
// unwires the one that leaves it, leaves everything attached and pinned
// on Close(true), lets a second Wirer take the pins over in place (as a
// restarted agent does) and detaches everything on Close(false).
func TestWirerSync(t *testing.T) {
	n := newNode(t)
	wr := newWiring(t)
	w := wr.newWirer(t)

	if err := w.Sync(n.cluster(true)); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	want := []uint32{uint32(n.h["xh1"]), uint32(n.h["xh2"]), uint32(n.h["xh3"])}
	slices.Sort(want)
	if got := w.Wired(); !slices.Equal(got, want) {
		t.Fatalf("Wired() = %v, want %v (xh1, xh2, xh3)", got, want)
	}
	wr.checkWired(t, n, "xh1", xdpprog.PodIsolatedIngress)
	wr.checkWired(t, n, "xh2", 0)
	wr.checkWired(t, n, "xh3", xdpprog.PodIsolatedEgress)

	// The workers' view: isolated pods have both re-injection ports.
	reg := w.Registry()
	for host, c := range map[string]struct {
		pod   string
		ports bool
	}{"xh1": {"default/p1", true}, "xh2": {"default/p2", false}, "xh3": {"default/p3", true}} {
		tg := reg.Lookup(uint32(n.h[host]))
		if tg == nil {
			t.Errorf("%s: no target in the registry", host)
			continue
		}
		if tg.Pod != c.pod || tg.HostIndex != uint32(n.h[host]) || net.HardwareAddr(tg.PodMAC[:]).String() != n.podMAC[host].String() {
			t.Errorf("%s: target %s index %d pod MAC %x; want %s, %d, %s", host, tg.Pod, tg.HostIndex, tg.PodMAC, c.pod, n.h[host], n.podMAC[host])
		}
		if (tg.FromPod != nil) != c.ports || (tg.ToPod != nil) != c.ports {
			t.Errorf("%s: ports from pod %v, to pod %v; want both present=%v", host, tg.FromPod != nil, tg.ToPod != nil, c.ports)
		}
	}
	if reg.Lookup(uint32(n.otherIndex)) != nil {
		t.Errorf("nv0 is in the registry")
	}
	// p4 is isolated and cannot be wired: listed, with why.
	if u := w.Unwired(); len(u) != 1 || u[0].Pod != "default/p4" || !strings.Contains(u[0].Reason, "goes out nv0") {
		t.Errorf("Unwired() = %+v, want default/p4 routed out nv0", u)
	}

	// p2 leaves the snapshot: unwired, the others stay.
	p1 := reg.Lookup(uint32(n.h["xh1"]))
	if err := w.Sync(n.cluster(false)); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	wr.checkUnwired(t, n, "xh2", true)
	if reg.Lookup(uint32(n.h["xh2"])) != nil {
		t.Errorf("xh2 still in the registry")
	}
	wr.checkWired(t, n, "xh1", xdpprog.PodIsolatedIngress)
	wr.checkWired(t, n, "xh3", xdpprog.PodIsolatedEgress)
	if reg.Lookup(uint32(n.h["xh1"])) != p1 {
		t.Errorf("xh1 was rewired by a Sync that did not change it")
	}

	// Close(true): nothing in the registry, but the programs, pins and
	// pods map entries stay for the next agent; the sockets are closed.
	w.Close(true)
	if len(w.Wired()) != 0 || reg.Lookup(uint32(n.h["xh1"])) != nil {
		t.Errorf("after Close(true): Wired() = %v, registry still has xh1", w.Wired())
	}
	if !p1.FromPod.closed || !p1.ToPod.closed {
		t.Errorf("after Close(true): p1's re-injection sockets are open")
	}
	wr.checkWired(t, n, "xh1", xdpprog.PodIsolatedIngress)
	wr.checkWired(t, n, "xh3", xdpprog.PodIsolatedEgress)

	// A second Wirer takes the pinned attachments over in place: still
	// exactly one program per hook.
	w2 := wr.newWirer(t)
	if err := w2.Sync(n.cluster(false)); err != nil {
		t.Fatalf("Sync after the takeover: %v", err)
	}
	wr.checkWired(t, n, "xh1", xdpprog.PodIsolatedIngress)
	wr.checkWired(t, n, "xh3", xdpprog.PodIsolatedEgress)

	// Close(false): everything detached, unpinned and out of the pods map.
	w2.Close(false)
	for _, host := range []string{"xh1", "xh2", "xh3"} {
		wr.checkUnwired(t, n, host, true)
	}
	if ents, _ := filepath.Glob(filepath.Join(wr.pinDir, "tcx-*")); len(ents) != 0 {
		t.Errorf("pins left after Close(false): %v", ents)
	}
}
