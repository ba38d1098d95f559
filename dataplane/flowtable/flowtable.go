package flowtable

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// FlagReply in FlowVal.Pad[0] marks an entry written for the reply of a
// flow decided at the other hook. The kernel ignores the byte.
const FlagReply = 1

// DenyTTL is how long a cached deny lives.
const DenyTTL = 2 * time.Second

// Mode says what a policy change does to established flows.
type Mode int

const (
	// Revalidate re-decides every cached flow with the new policy: flows
	// now denied are cut at their next packet.
	Revalidate Mode = iota
	// Keep re-stamps every cached allow: established flows stay, new flows
	// get the new policy.
	Keep
)

func (m Mode) String() string {
	if m == Keep {
		return "keep"
	}
	return "revalidate"
}

// ParseMode parses "revalidate" or "keep".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "revalidate", "":
		return Revalidate, nil
	case "keep":
		return Keep, nil
	}
	return 0, fmt.Errorf("--existing-connections=%q: want revalidate or keep", s)
}

// Classifier decides flows. Its node address set is replaced as a whole.
type Classifier struct {
	node atomic.Pointer[[]netip.Addr]
}

// SetNodeAddrs sets the node's own addresses (unmapped).
func (c *Classifier) SetNodeAddrs(addrs []netip.Addr) {
	a := make([]netip.Addr, 0, len(addrs))
	for _, x := range addrs {
		a = append(a, x.Unmap())
	}
	c.node.Store(&a)
}

// IsNode reports whether a is one of the node's addresses.
func (c *Classifier) IsNode(a netip.Addr) bool {
	p := c.node.Load()
	if p == nil {
		return false
	}
	for _, x := range *p {
		if x == a {
			return true
		}
	}
	return false
}

// Decide returns the verdict for a flow from src to dst (port dport) caught
// at hook. A nil ruleset denies.
//
// At the leaving hook the egress table of the source pod decides, except
// for a destination that is a Service ClusterIP: the flow has not been
// DNATed yet (kube-proxy does that in the node's prerouting, after this
// hook), so its real destination, the one egress policy names, is unknown
// here. Such a flow is allowed with Reason Deferred (when the source's
// egress is isolated at all) and cached like any allow; its reply comes back
// un-DNATed, from the ClusterIP, which is exactly the reply key Record
// writes for this hook.
//
// At the entering hook, after DNAT and routing, traffic from the node's own
// addresses is always allowed (Reason HostNetwork); otherwise the verdict is
// ingress(dst pod) ∧ egress(src pod) when the source is a pod of the
// snapshot (peer = the destination pod address, dport = the post-DNAT port).
// Every node knows every pod, so this also checks remote sources, and it is
// where deferred egress is decided; for a direct pod-to-pod flow it repeats
// the leaving hook's check. The verdict explains the side that denied: the
// ingress verdict if ingress denies, else the source's egress verdict (its
// Table.Dir is Egress); an allowed flow reports the ingress verdict.
func (c *Classifier) Decide(rs *ruleset.Ruleset, hook xdpprog.Hook, proto uint8, src, dst netip.Addr, dport uint16) ruleset.Verdict {
	if rs == nil {
		return ruleset.Verdict{Reason: ruleset.NoSnapshot, Clause: -1}
	}
	src, dst = src.Unmap(), dst.Unmap()
	if hook == xdpprog.HookIngress {
		if c.IsNode(src) {
			return ruleset.Verdict{Allowed: true, Reason: ruleset.HostNetwork, Clause: -1}
		}
		pod, ok := rs.PodByIP(dst)
		if !ok {
			return ruleset.Verdict{Reason: ruleset.UnknownPod, Clause: -1}
		}
		v := rs.Verdict(pod, ruleset.Ingress, src, ruleset.Proto(proto), dport)
		if !v.Allowed {
			return v
		}
		if from, ok := rs.PodByIP(src); ok {
			// HostNetwork sources come back allowed from Verdict.
			if e := rs.Verdict(from, ruleset.Egress, dst, ruleset.Proto(proto), dport); !e.Allowed {
				return e
			}
		}
		return v
	}
	pod, ok := rs.PodByIP(src)
	if !ok {
		return ruleset.Verdict{Reason: ruleset.UnknownPod, Clause: -1}
	}
	if rs.IsServiceIP(dst) {
		if p := &rs.Pods[pod]; !p.HostNetwork && p.Tables[ruleset.Egress] != nil {
			return ruleset.Verdict{Allowed: true, Reason: ruleset.Deferred, Clause: -1}
		}
	}
	return rs.Verdict(pod, ruleset.Egress, dst, ruleset.Proto(proto), dport)
}

// DecideKey decides the flow of a cache key; a reply entry (reply true) is
// decided as the original flow it answers.
func (c *Classifier) DecideKey(rs *ruleset.Ruleset, k *xdpprog.FlowKey, reply bool) ruleset.Verdict {
	hook := xdpprog.Hook(k.Hook)
	src, dst := netip.AddrFrom16(k.Saddr), netip.AddrFrom16(k.Daddr)
	dport := ntoh16(k.Dport)
	if reply {
		hook = Opposite(hook)
		src, dst = dst, src
		dport = ntoh16(k.Sport)
	}
	return c.Decide(rs, hook, k.Proto, src, dst, dport)
}

// Opposite returns the other hook.
func Opposite(h xdpprog.Hook) xdpprog.Hook {
	if h == xdpprog.HookEgress {
		return xdpprog.HookIngress
	}
	return xdpprog.HookEgress
}

// ReplyKey returns the key under which the opposite hook of the same veth
// sees the reply of k.
func ReplyKey(k *xdpprog.FlowKey) xdpprog.FlowKey {
	return xdpprog.FlowKey{
		Hook:    uint8(Opposite(xdpprog.Hook(k.Hook))),
		Proto:   k.Proto,
		Ifindex: k.Ifindex,
		Sport:   k.Dport,
		Dport:   k.Sport,
		Saddr:   k.Daddr,
		Daddr:   k.Saddr,
	}
}

func ntoh16(v uint16) uint16 { return v>>8 | v<<8 }

// Clock converts Go's monotonic clock into bpf_ktime_get_ns time
// (CLOCK_MONOTONIC) without a system call per reading.
type Clock struct {
	t0    time.Time
	mono0 int64
}

// NewClock reads CLOCK_MONOTONIC once.
func NewClock() Clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return Clock{t0: time.Now(), mono0: ts.Nano()}
}

// Now returns the current CLOCK_MONOTONIC time in nanoseconds.
func (c Clock) Now() uint64 { return uint64(c.mono0 + int64(time.Since(c.t0))) }

// Table is the flows map plus the generation the kernel currently expects,
// and the frags map the kernel fills with the ports of first fragments.
type Table struct {
	m     *ebpf.Map
	frags *ebpf.Map
	gen   atomic.Uint32
	base  atomic.Uint32 // kernel generation = base + ruleset generation
	clock Clock
	// denies remembers the deny entries written, oldest first, so that
	// expiring them costs a lookup and a delete each instead of a walk
	// over the whole map.
	denies denyQueue
}

// denyQueue is a fixed-size FIFO of deny entries and their write times.
// When it overflows, the oldest are forgotten and a sweep walks the map
// once to find them.
type denyQueue struct {
	mu       sync.Mutex
	keys     []xdpprog.FlowKey
	at       []uint64
	head, n  int
	overflow bool
}

const denyQueueSize = 1 << 14

func (q *denyQueue) push(k *xdpprog.FlowKey, at uint64) {
	q.mu.Lock()
	if q.keys == nil {
		q.keys, q.at = make([]xdpprog.FlowKey, denyQueueSize), make([]uint64, denyQueueSize)
	}
	if q.n == len(q.keys) {
		q.head, q.n, q.overflow = (q.head+1)%len(q.keys), q.n-1, true
	}
	i := (q.head + q.n) % len(q.keys)
	q.keys[i], q.at[i] = *k, at
	q.n++
	q.mu.Unlock()
}

// expired moves the entries written before cutoff into out.
func (q *denyQueue) expired(cutoff uint64, out []xdpprog.FlowKey) ([]xdpprog.FlowKey, []uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var at []uint64
	for q.n > 0 && q.at[q.head] <= cutoff {
		out = append(out, q.keys[q.head])
		at = append(at, q.at[q.head])
		q.head, q.n = (q.head+1)%len(q.keys), q.n-1
	}
	overflow := q.overflow
	q.overflow = false
	return out, at, overflow
}

// NewTable wraps the flows map and the frags map (nil: later fragments
// have no known first fragment).
func NewTable(flows, frags *ebpf.Map) *Table {
	return &Table{m: flows, frags: frags, clock: NewClock()}
}

// SetGeneration sets the generation stamped on new entries.
func (t *Table) SetGeneration(g uint32) { t.gen.Store(g) }

// Generation returns the generation stamped on new entries.
func (t *Table) Generation() uint32 { return t.gen.Load() }

// SetBase sets the kernel generation that ruleset generation 0 maps to (the
// generation a previous agent left in the pinned config).
func (t *Table) SetBase(g uint32) { t.base.Store(g) }

// Writer writes verdicts for one goroutine with its own scratch space, so
// writing allocates nothing.
type Writer struct {
	t   *Table
	old xdpprog.FlowVal
	fk  xdpprog.FragKey
	fv  xdpprog.FragVal
	// gen stamps the entries staged from now on: the generation of the
	// snapshot their verdicts came from (see UseSnapshot), 0 for the
	// table's current one.
	gen uint32
	// The entries staged since the last Flush, written with one batch
	// update: a worker stages a whole receive batch, then flushes, then
	// re-injects.
	keys    []xdpprog.FlowKey
	vals    []xdpprog.FlowVal
	noBatch bool // the kernel refused batch updates: one syscall each
}

// NewWriter returns a Writer for one goroutine.
func (t *Table) NewWriter() *Writer {
	return &Writer{t: t, keys: make([]xdpprog.FlowKey, 0, 256), vals: make([]xdpprog.FlowVal, 0, 256)}
}

// UseSnapshot stamps the entries staged from now on with the generation of
// rs, the snapshot their verdicts are decided with. A worker that loaded rs
// just before a swap thus writes entries the kernel sees as stale, and the
// revalidation walk, which skips entries of the current generation, does
// not take an old verdict for a new one.
func (w *Writer) UseSnapshot(rs *ruleset.Ruleset) {
	w.gen = w.t.base.Load() + uint32(rs.Generation)
}

func (w *Writer) generation() uint32 {
	if w.gen != 0 {
		return w.gen
	}
	return w.t.gen.Load()
}

// MarkReinject stages k's allow entry with the re-injection mark, so that
// the frame about to be re-injected on the pod end passes tcx once although
// the fast path is off (xdpprog.LastSeenReinject). Only the forward entry:
// with the fast path off the kernel reads nothing else.
func (w *Writer) MarkReinject(k *xdpprog.FlowKey) {
	w.stage(k, xdpprog.FlowVal{Verdict: xdpprog.VerdictAllow, Generation: w.generation(), LastSeenNs: w.t.clock.Now() | xdpprog.LastSeenReinject})
}

// Record caches the verdict for k: an allow for k and its reply, a deny for
// k alone.
func (w *Writer) Record(k *xdpprog.FlowKey, allowed bool) error {
	w.Stage(k, allowed)
	return w.Flush()
}

// Stage queues the entries Record would write until the next Flush.
func (w *Writer) Stage(k *xdpprog.FlowKey, allowed bool) {
	now := w.t.clock.Now()
	v := xdpprog.FlowVal{Generation: w.generation(), LastSeenNs: now}
	if !allowed {
		v.Verdict = xdpprog.VerdictDeny
		w.t.denies.push(k, now)
		w.stage(k, v)
		return
	}
	v.Verdict = xdpprog.VerdictAllow
	// Reply first: the forward entry lets the first packet through, and its
	// answer must find its entry already there.
	v.Pad[0] = FlagReply
	rk := ReplyKey(k)
	w.stage(&rk, v)
	v.Pad[0] = 0
	w.stage(k, v)
}

func (w *Writer) stage(k *xdpprog.FlowKey, v xdpprog.FlowVal) {
	w.keys = append(w.keys, *k)
	w.vals = append(w.vals, v)
}

// Flush writes the staged entries, in order, with one system call where the
// kernel supports batch updates.
func (w *Writer) Flush() error {
	if len(w.keys) == 0 {
		return nil
	}
	defer func() { w.keys, w.vals = w.keys[:0], w.vals[:0] }()
	if !w.noBatch {
		_, err := w.t.m.BatchUpdate(w.keys, w.vals, nil)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		w.noBatch = true
	}
	var errs []error
	for i := range w.keys {
		if err := w.t.m.Update(&w.keys[i], &w.vals[i], ebpf.UpdateAny); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CachedAllow reports whether k has an allow entry of any generation (used
// by --existing-connections=keep to keep a flow that was already allowed).
func (w *Writer) CachedAllow(k *xdpprog.FlowKey) bool {
	if err := w.t.m.Lookup(k, &w.old); err != nil {
		return false
	}
	return w.old.Verdict == xdpprog.VerdictAllow
}

// FragmentPorts gives k, the key of a later fragment, the ports of its
// datagram's first fragment, which the kernel program recorded when it saw
// it, and reports whether there was one (seen within fragTTL).
func (w *Writer) FragmentPorts(k *xdpprog.FlowKey, id uint32) bool {
	if w.t.frags == nil {
		return false
	}
	w.fk = xdpprog.FragKey{Hook: k.Hook, Proto: k.Proto, Ifindex: k.Ifindex, Id: id, Saddr: k.Saddr, Daddr: k.Daddr}
	if err := w.t.frags.Lookup(&w.fk, &w.fv); err != nil || w.t.clock.Now()-w.fv.SeenNs > uint64(fragTTL) {
		return false
	}
	k.Sport, k.Dport = w.fv.Sport, w.fv.Dport
	return true
}

// fragTTL is FRAG_TTL_NS of tcx.c.
const fragTTL = 60 * time.Second

// CachedReply looks up the key of a flow's replies for an ICMP error about
// that flow, caught at the same hook and veth: allowed says it holds an
// allow, current that it is of the generation this writer stamps. The
// kernel passes errors of current allows itself; one reaches a worker when
// it raced the entry's write, the entry predates a policy change, or the
// fast path is off.
func (w *Writer) CachedReply(reply *xdpprog.FlowKey) (allowed, current bool) {
	if err := w.t.m.Lookup(reply, &w.old); err != nil || w.old.Verdict != xdpprog.VerdictAllow {
		return false, false
	}
	return true, w.old.Generation == w.generation()
}

// RevalidateStats counts what a walk did.
type RevalidateStats struct {
	Seen, Kept, Denied, Deleted int
}

type entry struct {
	k xdpprog.FlowKey
	v xdpprog.FlowVal
}

// Revalidate walks the whole cache after the ruleset changed to rs (whose
// generation is already set with SetGeneration): in Revalidate mode every
// allow is re-decided and re-stamped or turned into a deny, in Keep mode
// every allow is re-stamped; old denies are deleted so the next packet is
// decided afresh.
func (t *Table) Revalidate(c *Classifier, rs *ruleset.Ruleset, mode Mode) (RevalidateStats, error) {
	var st RevalidateStats
	var all []entry
	var e entry
	it := t.m.Iterate()
	for it.Next(&e.k, &e.v) {
		all = append(all, e)
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("walk flows: %w", err)
	}
	gen := t.gen.Load()
	now := t.clock.Now()
	var errs []error
	for i := range all {
		e := &all[i]
		st.Seen++
		if e.v.Verdict != xdpprog.VerdictAllow {
			if e.v.Generation != gen {
				if err := t.m.Delete(&e.k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, err)
				}
				st.Deleted++
			}
			continue
		}
		if e.v.Generation == gen {
			continue // written by a worker with this snapshot already
		}
		allowed := mode == Keep || c.DecideKey(rs, &e.k, e.v.Pad[0] == FlagReply).Allowed
		e.v.Generation = gen
		if allowed {
			st.Kept++
		} else {
			st.Denied++
			e.v = xdpprog.FlowVal{Verdict: xdpprog.VerdictDeny, Generation: gen, LastSeenNs: now}
			t.denies.push(&e.k, now)
		}
		if err := t.m.Update(&e.k, &e.v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// SweepDenies deletes deny entries older than ttl and returns how many.
// It visits only the denies written (see denyQueue): an entry that has
// since been overwritten, by an allow or a newer deny, is left alone. Only
// after the queue overflowed does it walk the whole map once.
func (t *Table) SweepDenies(ttl time.Duration) (int, error) {
	now := t.clock.Now()
	if now < uint64(ttl) {
		return 0, nil
	}
	keys, at, overflow := t.denies.expired(now-uint64(ttl), nil)
	deleted := 0
	var v xdpprog.FlowVal
	for i := range keys {
		if err := t.m.Lookup(&keys[i], &v); err != nil || v.Verdict != xdpprog.VerdictDeny || v.LastSeenNs != at[i] {
			continue
		}
		if err := t.m.Delete(&keys[i]); err == nil {
			deleted++
		}
	}
	if !overflow {
		return deleted, nil
	}
	var k xdpprog.FlowKey
	var old []xdpprog.FlowKey
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		if v.Verdict == xdpprog.VerdictDeny && (now-v.LastSeenNs > uint64(ttl) || v.LastSeenNs > now) {
			old = append(old, k)
		}
	}
	if err := it.Err(); err != nil {
		return deleted, err
	}
	for i := range old {
		if t.m.Delete(&old[i]) == nil {
			deleted++
		}
	}
	return deleted, nil
}

// Len counts the entries (for tests and metrics; walks the map).
func (t *Table) Len() int {
	var k xdpprog.FlowKey
	var v xdpprog.FlowVal
	n := 0
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}
