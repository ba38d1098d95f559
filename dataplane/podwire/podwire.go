package podwire

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Port is a TX-only AF_XDP socket shared by the workers; the mutex makes
// its single-producer rings safe for several of them.
type Port struct {
	mu          sync.Mutex
	sock        *afxdp.Socket
	closed      bool
	outstanding atomic.Int64
}

// Transmit queues d and returns how many were taken (0 when closed or full).
func (p *Port) Transmit(d []afxdp.Desc) int {
	p.mu.Lock()
	n := 0
	if !p.closed {
		n = p.sock.Transmit(d)
	}
	p.mu.Unlock()
	p.outstanding.Add(int64(n))
	return n
}

// Complete moves completed frame addresses into addrs.
func (p *Port) Complete(addrs []uint64) int {
	if p.outstanding.Load() == 0 {
		return 0
	}
	p.mu.Lock()
	n := 0
	if !p.closed {
		p.sock.Kick()
		n = p.sock.Complete(addrs)
	}
	p.mu.Unlock()
	p.outstanding.Add(-int64(n))
	return n
}

// Outstanding is how many frames were sent and not yet completed.
func (p *Port) Outstanding() int64 { return p.outstanding.Load() }

// Stats returns the socket's statistics.
func (p *Port) Stats() (afxdp.Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return afxdp.Stats{}, afxdp.ErrClosed
	}
	return p.sock.Stats()
}

func (p *Port) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		p.sock.Close()
	}
}

// Target is what a worker needs to re-inject a frame punted from one pod's
// veth. It is immutable apart from the ports' internals.
type Target struct {
	Pod       string // ns/name
	HostIndex uint32
	HostMAC   [6]byte
	PodMAC    [6]byte
	// FromPod transmits on P: traffic leaving the pod (HookEgress).
	FromPod *Port
	// ToPod transmits on H: traffic entering the pod (HookIngress).
	ToPod *Port
}

// Port returns the port re-injecting frames caught at hook, or nil.
func (t *Target) Port(h xdpprog.Hook) *Port {
	if h == xdpprog.HookEgress {
		return t.FromPod
	}
	return t.ToPod
}

// Registry is the worker-facing, lock-free view of the wired pods.
type Registry struct {
	m atomic.Pointer[map[uint32]*Target]
}

// Lookup returns the target for H's ifindex, or nil.
func (r *Registry) Lookup(ifindex uint32) *Target {
	m := r.m.Load()
	if m == nil {
		return nil
	}
	return (*m)[ifindex]
}

// Targets calls fn for every wired pod (control path).
func (r *Registry) Targets(fn func(*Target)) {
	if m := r.m.Load(); m != nil {
		for _, t := range *m {
			fn(t)
		}
	}
}

// Ports calls fn for every port of every wired pod (control path).
func (r *Registry) Ports(fn func(*Port)) {
	m := r.m.Load()
	if m == nil {
		return
	}
	for _, t := range *m {
		if t.FromPod != nil {
			fn(t.FromPod)
		}
		if t.ToPod != nil {
			fn(t.ToPod)
		}
	}
}

// Options configure a Wirer.
type Options struct {
	Objects *xdpprog.Objects
	UMEM    *afxdp.UMEM
	// PinDir holds the pinned tcx links ("tcx-<ifindex>-<hook>").
	PinDir string
	Node   string
	Log    *slog.Logger
}

// Wirer keeps the wiring equal to the local pods of the latest ruleset. Its
// methods are called from one control goroutine.
type Wirer struct {
	opts Options
	reg  Registry
	pods map[uint32]*wired
	find finder

	mu      sync.Mutex
	unwired map[string]Unwired // ns/name → why a pod policy isolates has no programs
}

// Unwired is a local pod that a policy isolates but that has no programs on
// its veth: its traffic is not enforced. The agent reports it loudly (log,
// metric, Event, /readyz), never silently.
type Unwired struct {
	Pod    string // ns/name
	Reason string
	Since  time.Time
}

type wired struct {
	t       *Target
	name    string // ns/name, for logs
	hname   string
	peer    int
	ns      netns.NsHandle
	attach  [2]*xdpprog.TCAttachment
	info    xdpprog.PodInfo
	written bool
	// flagsWritten is what the pods map holds for the pod.
	flagsWritten uint32
}

// New returns a Wirer; nothing is touched until Sync.
func New(opts Options) *Wirer {
	w := &Wirer{opts: opts, pods: map[uint32]*wired{}, unwired: map[string]Unwired{}}
	empty := map[uint32]*Target{}
	w.reg.m.Store(&empty)
	return w
}

// Registry returns the workers' view.
func (w *Wirer) Registry() *Registry { return &w.reg }

// Count returns the number of wired pods.
func (w *Wirer) Count() int { return len(w.pods) }

// Sync wires every local pod of rs that has a route, unwires pods that are
// gone, and rewrites the pods map. Problems with single pods are logged and
// retried on the next Sync; the error reports only map failures.
func (w *Wirer) Sync(rs *ruleset.Ruleset) error {
	want := map[uint32]uint32{} // H ifindex -> flags
	names := map[uint32]string{}
	failed := map[string]string{} // isolated pods that cannot be wired → why
	// Egress to a Service is decided at the backend's entering hook, so
	// that hook must punt even for backends no policy isolates.
	deferred := rs.DefersEgress()
	for i := range rs.Pods {
		p := &rs.Pods[i]
		if p.Node != w.opts.Node || p.HostNetwork || len(p.IPs) == 0 {
			continue
		}
		var flags uint32
		if p.Tables[ruleset.Egress] != nil {
			flags |= xdpprog.PodIsolatedEgress
		}
		if p.Tables[ruleset.Ingress] != nil || deferred {
			flags |= xdpprog.PodIsolatedIngress
		}
		name := p.Namespace + "/" + p.Name
		for _, ip := range p.IPs {
			idx, err := w.find.hostIndex(ip)
			if err != nil {
				if flags != 0 {
					failed[name] = err.Error()
				} else {
					w.opts.Log.Debug("pod not wired yet", "pod", name, "ip", ip, "err", err)
				}
				continue
			}
			want[idx] |= flags
			names[idx] = name
		}
	}

	changed := false
	for idx, flags := range want {
		wp := w.pods[idx]
		if wp == nil {
			var err error
			wp, err = w.wire(idx, names[idx])
			if err != nil {
				if flags != 0 { // a policy isolates the pod
					failed[names[idx]] = err.Error()
				} else {
					w.opts.Log.Warn("cannot wire pod", "pod", names[idx], "ifindex", idx, "err", err)
				}
				continue
			}
			w.pods[idx] = wp
			changed = true
		}
		if err := w.ensurePorts(wp, flags); err != nil {
			// The hook stays isolated: without a socket its new flows are
			// dropped (fail closed) until a later Sync opens one.
			w.opts.Log.Warn("cannot open re-injection socket; new flows of the pod fail closed", "pod", wp.name, "err", err)
		}
		changed = changed || wp.t.FromPod != nil || wp.t.ToPod != nil
		wp.info.Flags = flags
	}
	if changed || len(want) != len(w.pods) {
		w.publish()
	}
	w.setUnwired(failed)
	var errs []error
	for idx, wp := range w.pods {
		if _, ok := want[idx]; ok {
			if !wp.written || wp.info.Flags != wp.flagsWritten {
				if err := w.opts.Objects.Pods.Put(idx, wp.info); err != nil {
					errs = append(errs, fmt.Errorf("pods map entry %d: %w", idx, err))
					continue
				}
				wp.written, wp.flagsWritten = true, wp.info.Flags
			}
			continue
		}
		w.unwire(idx, wp, false)
	}
	// Entries of earlier runs for veths no longer ours.
	var k uint32
	var v xdpprog.PodInfo
	var stale []uint32
	it := w.opts.Objects.Pods.Iterate()
	for it.Next(&k, &v) {
		if _, ok := w.pods[k]; !ok {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		_ = w.opts.Objects.Pods.Delete(k)
		_ = w.opts.Objects.PodDrops.Delete(k)
	}
	return errors.Join(errs...)
}

// setUnwired records the isolated pods this Sync could not wire, logging
// each once when it starts failing (or fails differently) and when it is
// wired at last.
func (w *Wirer) setUnwired(failed map[string]string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for pod, reason := range failed {
		old, ok := w.unwired[pod]
		if ok && old.Reason == reason {
			continue
		}
		if !ok {
			old.Since = now
		}
		w.unwired[pod] = Unwired{Pod: pod, Reason: reason, Since: old.Since}
		w.opts.Log.Error("pod isolated by a policy cannot be wired: its traffic is NOT enforced", "pod", pod, "reason", reason)
	}
	for pod := range w.unwired {
		if _, ok := failed[pod]; !ok {
			delete(w.unwired, pod)
			w.opts.Log.Info("pod no longer unwired", "pod", pod)
		}
	}
}

// Unwired lists the local pods a policy isolates that have no programs on
// their veth, sorted by name. Safe to call from any goroutine.
func (w *Wirer) Unwired() []Unwired {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Unwired, 0, len(w.unwired))
	for _, u := range w.unwired {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	return out
}

func (w *Wirer) publish() {
	m := make(map[uint32]*Target, len(w.pods))
	for idx, wp := range w.pods {
		m[idx] = wp.t
	}
	w.reg.m.Store(&m)
}

func (w *Wirer) wire(idx uint32, name string) (*wired, error) {
	l, err := netlink.LinkByIndex(int(idx))
	if err != nil {
		return nil, err
	}
	a := l.Attrs()
	if a.NetNsID < 0 || a.ParentIndex == 0 {
		return nil, fmt.Errorf("veth %s: peer is not in another netns (link-netnsid %d)", a.Name, a.NetNsID)
	}
	ns, err := findNetns(a.NetNsID)
	if err != nil {
		return nil, fmt.Errorf("veth %s: %w", a.Name, err)
	}
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, err
	}
	pl, err := nh.LinkByIndex(a.ParentIndex)
	nh.Close()
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("peer of %s in pod netns: %w", a.Name, err)
	}
	wp := &wired{name: name, hname: a.Name, peer: a.ParentIndex, ns: ns, t: &Target{Pod: name, HostIndex: idx}}
	copy(wp.t.HostMAC[:], a.HardwareAddr)
	copy(wp.t.PodMAC[:], pl.Attrs().HardwareAddr)
	wp.info.PodMac, wp.info.HostMac = wp.t.PodMAC, wp.t.HostMAC
	for i, h := range []xdpprog.Hook{xdpprog.HookEgress, xdpprog.HookIngress} {
		att, err := xdpprog.AttachTC(w.opts.Objects.Program(h), int(idx), h, xdpprog.TCOptions{PinPath: w.pinPath(idx, h)})
		if err != nil {
			w.unwire(idx, wp, false)
			return nil, err
		}
		wp.attach[i] = att
	}
	w.opts.Log.Info("wired pod", "pod", name, "host_veth", a.Name, "ifindex", idx, "peer_ifindex", a.ParentIndex)
	return wp, nil
}

func (w *Wirer) pinPath(idx uint32, h xdpprog.Hook) string {
	return filepath.Join(w.opts.PinDir, fmt.Sprintf("tcx-%d-%s", idx, h))
}

// ensurePorts opens the re-injection sockets of a pod isolated in any
// direction: tcx punts the misses of both its hooks (see tcx.c), so both
// need a way back.
func (w *Wirer) ensurePorts(wp *wired, flags uint32) error {
	if flags == 0 {
		return nil
	}
	var errs []error
	if wp.t.FromPod == nil {
		s, err := w.opts.UMEM.NewSocket(wp.peer, 0, afxdp.SocketOptions{TX: true, Netns: wp.ns})
		if err != nil {
			errs = append(errs, fmt.Errorf("TX socket on pod end: %w", err))
		} else {
			wp.t.FromPod = &Port{sock: s}
		}
	}
	if wp.t.ToPod == nil {
		s, err := w.opts.UMEM.NewSocket(int(wp.t.HostIndex), 0, afxdp.SocketOptions{TX: true})
		if err != nil {
			errs = append(errs, fmt.Errorf("TX socket on host end: %w", err))
		} else {
			wp.t.ToPod = &Port{sock: s}
		}
	}
	return errors.Join(errs...)
}

// unwire removes the pod's pods-map entry, detaches (keep=false) or leaves
// (keep=true) its programs, and closes its sockets.
func (w *Wirer) unwire(idx uint32, wp *wired, keep bool) {
	if !keep {
		_ = w.opts.Objects.Pods.Delete(idx)
		_ = w.opts.Objects.PodDrops.Delete(idx)
	}
	for _, a := range wp.attach {
		if a == nil {
			continue
		}
		var err error
		if keep {
			err = a.Close()
		} else {
			err = a.Detach()
		}
		if err != nil {
			w.opts.Log.Debug("detach", "pod", wp.name, "err", err)
		}
	}
	wp.t.FromPod.close()
	wp.t.ToPod.close()
	if wp.ns.IsOpen() {
		wp.ns.Close()
	}
	if _, ok := w.pods[idx]; ok {
		delete(w.pods, idx)
		w.publish()
		w.opts.Log.Info("unwired pod", "pod", wp.name, "host_veth", wp.hname, "kept", keep)
	}
}

// Close unwires every pod: detaching its programs, or with keep leaving
// them attached and pinned for the next agent.
func (w *Wirer) Close(keep bool) {
	for idx, wp := range w.pods {
		w.unwire(idx, wp, keep)
	}
	if !keep {
		RemoveStalePins(w.opts.PinDir, nil, w.opts.Log)
	}
}

// RemoveStalePins detaches and unpins the tcx links pinned in dir whose
// ifindex is not in keep, and returns the pins it removed.
func RemoveStalePins(dir string, keep map[uint32]bool, log *slog.Logger) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		var idx uint32
		var hook string
		if !strings.HasPrefix(e.Name(), "tcx-") {
			continue
		}
		if _, err := fmt.Sscanf(strings.Replace(e.Name(), "-", " ", -1), "tcx %d %s", &idx, &hook); err != nil || keep[idx] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if _, err := xdpprog.RemovePinnedLink(p); err != nil {
			log.Debug("detach stale link", "pin", p, "err", err)
		}
		log.Info("removed stale attachment", "pin", p)
		removed = append(removed, p)
	}
	return removed
}

// Wired returns the sorted H ifindexes currently wired.
func (w *Wirer) Wired() []uint32 {
	out := make([]uint32, 0, len(w.pods))
	for idx := range w.pods {
		out = append(out, idx)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
