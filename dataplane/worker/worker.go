package worker

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
	"github.com/xdpolicy/xdpolicy/dataplane/packet"
	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Counters are the workers' shared statistics, updated with atomics.
type Counters struct {
	Punted      atomic.Uint64
	Allowed     [3]atomic.Uint64 // by hook
	Denied      [3]atomic.Uint64 // by hook
	Malformed   atomic.Uint64    // not a punt encoding or not decodable
	NoTarget    atomic.Uint64    // the punt names a veth not wired (any more)
	NoSnapshot  atomic.Uint64    // dropped before the first ruleset
	TxDropped   atomic.Uint64    // allowed but the TX ring was full or gone
	CacheErrors atomic.Uint64    // flow map updates that failed
	Reinjected  atomic.Uint64    // allowed frames queued for transmission
	Related     atomic.Uint64    // ICMP errors allowed (also in Allowed) as related to an allowed flow
	FragOrphans atomic.Uint64    // later fragments without a known first fragment: dropped
	// Latency is the time from receiving a batch to each frame's verdict.
	Latency Latency
}

// Config is what a Worker works with. All fields are required.
type Config struct {
	// Trace, if set, records every verdict while someone listens.
	Trace      *trace.Ring
	UMEM       *afxdp.UMEM
	RX         *afxdp.Socket
	Free       *afxdp.FreeList
	Publisher  *ruleset.Publisher
	Classifier *flowtable.Classifier
	Flows      *flowtable.Table
	Targets    *podwire.Registry
	Counters   *Counters
	// Mode keep lets a flow that has an allow entry of an older
	// generation stay allowed.
	Mode flowtable.Mode
	// Fastpath is false when every packet is punted (--fastpath=off).
	Fastpath bool
}

const batch = 64

// Worker is one slow-path loop.
type Worker struct {
	c       Config
	w       *flowtable.Writer
	descs   []afxdp.Desc
	addrs   []uint64
	sent    []*podwire.Port // ports with frames in flight
	pending []pendingTx     // allowed frames of the current batch
	txbuf   []afxdp.Desc    // one port's share of pending
	parsed  packet.Parsed
	key     xdpprog.FlowKey
	rkey    xdpprog.FlowKey // scratch: the reply key an ICMP error relates to
	ev      trace.Event
	t0      time.Time // when the current batch was received
}

// New returns a Worker; Run starts it.
func New(c Config) *Worker {
	return &Worker{
		c:       c,
		w:       c.Flows.NewWriter(),
		descs:   make([]afxdp.Desc, batch),
		addrs:   make([]uint64, 1024),
		sent:    make([]*podwire.Port, 0, 1024),
		pending: make([]pendingTx, 0, batch),
		txbuf:   make([]afxdp.Desc, 0, batch),
	}
}

// Run loops until ctx ends, on an OS thread of its own, named ThreadName.
func (w *Worker) Run(ctx context.Context) {
	defer ownThread()()
	done := ctx.Done()
	for {
		select {
		case <-done:
			return
		default:
		}
		w.refill()
		w.reap()
		timeout := 100 * time.Millisecond
		if len(w.sent) > 0 {
			timeout = time.Millisecond
		}
		if ok, _ := w.c.RX.Poll(timeout); !ok {
			continue
		}
		n := w.c.RX.Receive(w.descs)
		if n == 0 {
			continue
		}
		w.c.Counters.Punted.Add(uint64(n))
		w.t0 = time.Now()
		rs := w.c.Publisher.Load()
		if rs != nil {
			w.w.UseSnapshot(rs)
		}
		for i := range w.descs[:n] {
			w.handle(rs, w.descs[i])
		}
		// One cache write for the batch, before any of its frames goes
		// back: a re-injected frame must find its entry.
		if err := w.w.Flush(); err != nil {
			w.c.Counters.CacheErrors.Add(1)
		}
		w.transmit()
	}
}

// pendingTx is an allowed frame waiting for the batch's cache write.
type pendingTx struct {
	d    afxdp.Desc
	port *podwire.Port
}

// transmit re-injects the batch's allowed frames, all frames for one port
// with one call (one kick), since in copy mode every kick is a system call
// that does the kernel's share of the work.
func (w *Worker) transmit() {
	for len(w.pending) > 0 {
		port := w.pending[0].port
		w.txbuf = w.txbuf[:0]
		rest := w.pending[:0]
		for _, p := range w.pending {
			if p.port == port {
				w.txbuf = append(w.txbuf, p.d)
			} else {
				rest = append(rest, p)
			}
		}
		w.pending = rest
		sent := port.Transmit(w.txbuf)
		if sent < len(w.txbuf) {
			n := port.Complete(w.addrs)
			w.c.Free.PutBatch(w.addrs[:n])
			sent += port.Transmit(w.txbuf[sent:])
		}
		for _, d := range w.txbuf[sent:] {
			w.c.Counters.TxDropped.Add(1)
			w.drop(d)
		}
		w.c.Counters.Reinjected.Add(uint64(sent))
		if sent > 0 {
			w.track(port)
		}
	}
	clear(w.pending[:cap(w.pending)])
}

// refill gives free frames to the kernel.
func (w *Worker) refill() {
	n := w.c.Free.GetBatch(w.addrs)
	k := w.c.RX.Fill(w.addrs[:n])
	w.c.Free.PutBatch(w.addrs[k:n])
}

// reap collects completed TX frames of the ports this worker sent on.
func (w *Worker) reap() {
	j := 0
	for _, p := range w.sent {
		n := p.Complete(w.addrs)
		w.c.Free.PutBatch(w.addrs[:n])
		if p.Outstanding() > 0 {
			w.sent[j] = p
			j++
		}
	}
	clear(w.sent[j:])
	w.sent = w.sent[:j]
}

func (w *Worker) drop(d afxdp.Desc) { w.c.Free.Put(d.Addr) }

// handle decides one punted frame and re-injects or drops it.
func (w *Worker) handle(rs *ruleset.Ruleset, d afxdp.Desc) {
	frame := w.c.UMEM.Frame(d.Addr, int(d.Len))
	hook, ifindex, ok := xdpprog.DecodePunt(frame)
	if !ok || !w.parsed.Decode(frame) {
		w.c.Counters.Malformed.Add(1)
		w.drop(d)
		return
	}
	if rs == nil {
		w.c.Counters.NoSnapshot.Add(1)
		w.drop(d)
		return
	}
	t := w.c.Targets.Lookup(ifindex)
	if t == nil {
		w.c.Counters.NoTarget.Add(1)
		w.drop(d)
		return
	}
	p := &w.parsed
	w.key = xdpprog.NewFlowKey(hook, p.Proto, ifindex,
		netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	// A later fragment is its datagram: the ports of the first fragment,
	// which the kernel program recorded, or nothing says what it is.
	if p.LaterFragment {
		if !w.w.FragmentPorts(&w.key, p.FragID) {
			w.c.Counters.FragOrphans.Add(1)
			v := ruleset.Verdict{Reason: ruleset.NoFirstFragment, Clause: -1}
			w.observe(rs, hook, ifindex, &v, false, false)
			w.drop(d)
			return
		}
		p.SrcPort, p.DstPort = w.key.Src().Port(), w.key.Dst().Port()
	}
	if p.ICMPError && w.related(rs, hook, ifindex) {
		// Delivered like the flow's replies; nothing is cached for it.
		w.c.Counters.Related.Add(1)
		w.c.Counters.Allowed[hook&3].Add(1)
		v := ruleset.Verdict{Allowed: true, Reason: ruleset.Related, Clause: -1}
		w.observe(rs, hook, ifindex, &v, true, false)
		if !w.c.Fastpath && hook == xdpprog.HookEgress {
			w.w.MarkReinject(&w.key) // see below
		}
		w.reinject(hook, t, d)
		return
	}
	v := w.c.Classifier.Decide(rs, hook, p.Proto, p.Src, p.Dst, p.DstPort)
	allowed, kept := keepAllowed(w.c.Mode, w.w, &w.key, &v)
	w.observe(rs, hook, ifindex, &v, allowed, kept)
	switch {
	case w.c.Fastpath:
		w.w.Stage(&w.key, allowed)
	case allowed && hook == xdpprog.HookEgress:
		// With the fast path off tcx ignores the cache, but the frame
		// re-enters tcx ingress on H and must not be punted again: the
		// mark lets it pass once. Nothing else is worth writing.
		w.w.MarkReinject(&w.key)
	}
	if !allowed {
		w.c.Counters.Denied[hook&3].Add(1)
		w.drop(d)
		return
	}
	w.c.Counters.Allowed[hook&3].Add(1)
	w.reinject(hook, t, d)
}

// reinject queues an allowed frame, restored, for transmission back on the
// veth it was caught on.
func (w *Worker) reinject(hook xdpprog.Hook, t *podwire.Target, d afxdp.Desc) {
	port := t.Port(hook)
	if port == nil {
		w.c.Counters.TxDropped.Add(1)
		w.drop(d)
		return
	}
	frame := w.c.UMEM.Frame(d.Addr, int(d.Len))
	xdpprog.RestorePodMAC(frame, hook, &t.PodMAC)
	packet.CompleteChecksum(frame, &w.parsed)
	w.pending = append(w.pending, pendingTx{d, port})
}

// related reports whether the ICMP error in w.parsed is about a flow allowed
// at this hook and veth, as tcx.c decides it: the key of that flow's replies
// holds a current allow. An allow of an older generation (a policy change
// is being revalidated) or, with the fast path off, no entry at all (no
// entries are written then) counts when the current policy still allows
// the flow.
func (w *Worker) related(rs *ruleset.Ruleset, hook xdpprog.Hook, ifindex uint32) bool {
	in := &w.parsed.Inner
	w.rkey = xdpprog.NewFlowKey(hook, in.Proto, ifindex,
		netip.AddrPortFrom(in.Dst, in.DstPort), netip.AddrPortFrom(in.Src, in.SrcPort))
	allowed, current := w.w.CachedReply(&w.rkey)
	if current {
		return true
	}
	if allowed || !w.c.Fastpath {
		return w.c.Classifier.DecideKey(rs, &w.rkey, true).Allowed
	}
	return false
}

func (w *Worker) track(p *podwire.Port) {
	for _, q := range w.sent {
		if q == p {
			return
		}
	}
	if len(w.sent) < cap(w.sent) {
		w.sent = append(w.sent, p)
	}
}

// Drain completes what is still in flight, for a clean shutdown.
func (w *Worker) Drain(wait time.Duration) {
	deadline := time.Now().Add(wait)
	for len(w.sent) > 0 && time.Now().Before(deadline) {
		w.reap()
		time.Sleep(time.Millisecond)
	}
}
