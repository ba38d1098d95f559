package worker

import (
	"time"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// observe records the decision latency of the frame in w.parsed and, while
// someone listens, its trace record. Without a listener it costs one clock
// reading, one histogram update and one atomic load.
func (w *Worker) observe(rs *ruleset.Ruleset, hook xdpprog.Hook, ifindex uint32, v *ruleset.Verdict, allowed, kept bool) {
	lat := uint64(time.Since(w.t0))
	w.c.Counters.Latency.Observe(lat)
	if !w.c.Trace.Enabled() {
		return
	}
	p := &w.parsed
	e := &w.ev
	*e = trace.Event{
		Time: w.t0.UnixNano() + int64(lat), Generation: rs.Generation,
		Src: p.Src, Dst: p.Dst, Sport: p.SrcPort, Dport: p.DstPort, Proto: p.Proto,
		Hook: uint8(hook), Ifindex: ifindex, Allowed: allowed, Kept: kept,
		Reason: v.Reason, Dir: HookDirection(hook), Clause: v.Clause, LatencyNs: uint32(min(lat, 1<<32-1)),
	}
	if v.Table != nil {
		e.Dir = v.Table.Dir
	}
	w.c.Trace.Record(e)
}

// HookDirection is the direction a hook enforces for its own pod.
func HookDirection(h xdpprog.Hook) ruleset.Direction {
	if h == xdpprog.HookEgress {
		return ruleset.Egress
	}
	return ruleset.Ingress
}
