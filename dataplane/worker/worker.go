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

// Run loops until ctx ends.
func (w *Worker) Run(ctx context.Context) {
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
	port := t.Port(hook)
	if port == nil {
		w.c.Counters.TxDropped.Add(1)
		w.drop(d)
		return
	}
	xdpprog.RestorePodMAC(frame, hook, &t.PodMAC)
	packet.CompleteChecksum(frame, p)
	w.pending = append(w.pending, pendingTx{d, port})
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
