package worker

import (
	"context"
	"errors"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Requests decides the flows the tcx programs could not punt (GSO
// super-packets and packets over the punt MTU that missed the cache): they
// were dropped in the kernel, and the verdict written here lets the
// sender's retransmission through, or keeps dropping it.
type Requests struct {
	Map        *ebpf.Map
	Publisher  *ruleset.Publisher
	Classifier *flowtable.Classifier
	Flows      *flowtable.Table
	Mode       flowtable.Mode
	Counters   *Counters
	// Trace, if set, records every verdict while someone listens.
	Trace *trace.Ring
}

// Run reads the ring buffer until ctx ends.
func (q *Requests) Run(ctx context.Context) error {
	rd, err := ringbuf.NewReader(q.Map)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); rd.Close() }()
	w := q.Flows.NewWriter()
	var rec ringbuf.Record
	var k xdpprog.FlowKey
	var ev trace.Event
	for {
		rd.SetDeadline(time.Now().Add(time.Second))
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if len(rec.RawSample) < int(unsafe.Sizeof(k)) {
			continue
		}
		k = *(*xdpprog.FlowKey)(unsafe.Pointer(&rec.RawSample[0]))
		sample := k.Pad == xdpprog.RequestSample
		k.Pad = 0
		rs := q.Publisher.Load()
		if rs == nil {
			continue
		}
		w.UseSnapshot(rs)
		v := q.Classifier.DecideKey(rs, &k, false)
		allowed, kept := keepAllowed(q.Mode, w, &k, &v)
		if q.Trace.Enabled() {
			verdictEvent(&ev, rs, k.Src(), k.Dst(), k.Proto, xdpprog.Hook(k.Hook), k.Ifindex, &v, allowed, kept)
			ev.Time, ev.Source = time.Now().UnixNano(), trace.SourceRequest
			if sample {
				ev.Source = trace.SourceSample
			}
			q.Trace.Record(&ev)
		}
		if sample {
			// The kernel dropped it on a cached deny: trace it, but
			// rewriting the entry would only prolong the deny.
			continue
		}
		if err := w.Record(&k, allowed); err != nil {
			q.Counters.CacheErrors.Add(1)
		}
		h := k.Hook & 3
		if allowed {
			q.Counters.Allowed[h].Add(1)
		} else {
			q.Counters.Denied[h].Add(1)
		}
	}
}
