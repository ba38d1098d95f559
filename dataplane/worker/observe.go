package worker

import (
	"net/netip"
	"time"

	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
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
	verdictEvent(e, rs, netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort), p.Proto, hook, ifindex, v, allowed, kept)
	e.Time, e.LatencyNs = w.t0.UnixNano()+int64(lat), uint32(min(lat, 1<<32-1))
	w.c.Trace.Record(e)
}

// verdictEvent fills the parts of a trace record every source of verdicts
// shares; the caller sets Time, LatencyNs and Source.
func verdictEvent(e *trace.Event, rs *ruleset.Ruleset, src, dst netip.AddrPort, proto uint8, hook xdpprog.Hook, ifindex uint32, v *ruleset.Verdict, allowed, kept bool) {
	*e = trace.Event{
		Generation: rs.Generation,
		Src:        src.Addr(), Dst: dst.Addr(), Sport: src.Port(), Dport: dst.Port(), Proto: proto,
		Hook: uint8(hook), Ifindex: ifindex, Allowed: allowed, Kept: kept,
		Reason: v.Reason, Dir: HookDirection(hook), Clause: v.Clause,
	}
	if v.Table != nil {
		e.Dir = v.Table.Dir
	}
}

// keepAllowed applies --existing-connections=keep to a verdict: a flow
// the new snapshot denies stays allowed while its cache entry holds an
// allow of an older generation. kept says the verdict was overridden.
func keepAllowed(mode flowtable.Mode, w *flowtable.Writer, k *xdpprog.FlowKey, v *ruleset.Verdict) (allowed, kept bool) {
	if !v.Allowed && mode == flowtable.Keep && w.CachedAllow(k) {
		return true, true
	}
	return v.Allowed, false
}

// HookDirection is the direction a hook enforces for its own pod.
func HookDirection(h xdpprog.Hook) ruleset.Direction {
	if h == xdpprog.HookEgress {
		return ruleset.Egress
	}
	return ruleset.Ingress
}
