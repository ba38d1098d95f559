package worker

import "sync/atomic"

// LatencyBounds are the upper bounds, in nanoseconds, of the buckets of
// the decision latency histogram (receive to verdict).
var LatencyBounds = [...]uint64{1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 5e6}

// Latency is a histogram of decision latencies updated with atomics (no
// allocation, no lock); the agent exports it as a Prometheus histogram.
type Latency struct {
	// Buckets[i] counts observations ≤ LatencyBounds[i] (not cumulative);
	// the last bucket counts the rest.
	Buckets [len(LatencyBounds) + 1]atomic.Uint64
	SumNs   atomic.Uint64
}

// Observe adds one latency.
func (l *Latency) Observe(ns uint64) {
	i := 0
	for i < len(LatencyBounds) && ns > LatencyBounds[i] {
		i++
	}
	l.Buckets[i].Add(1)
	l.SumNs.Add(ns)
}
