package agent

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/worker"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Metrics of the slow path, the flow cache, the snapshots and the trace
// ring (the original set is in metrics.go).
var (
	descDecision  = prometheus.NewDesc("xdpolicy_slowpath_decision_seconds", "Time from a worker receiving a batch of punted frames to each frame's verdict.", nil, nil)
	descSnapGen   = prometheus.NewDesc("xdpolicy_snapshot_generation", "Generation of the newest published ruleset snapshot (the gen of trace records).", nil, nil)
	descFlowsN    = prometheus.NewDesc("xdpolicy_flow_cache_entries", "Entries in the kernel flow-verdict cache (counted by a map walk at most every 10 s).", nil, nil)
	descFlowsCap  = prometheus.NewDesc("xdpolicy_flow_cache_capacity", "Capacity of the kernel flow-verdict cache (LRU: at capacity, inserts evict the least recently used entries).", nil, nil)
	descReinject  = prometheus.NewDesc("xdpolicy_reinjected_frames_total", "Allowed frames the workers queued on a re-injection socket.", nil, nil)
	descTxSockets = prometheus.NewDesc("xdpolicy_afxdp_reinject_events_total", "AF_XDP statistics of the TX-only re-injection sockets, summed over the local pods.", []string{"stat"}, nil)
	descRxExtra   = prometheus.NewDesc("xdpolicy_afxdp_rx_socket_events_total", "AF_XDP statistics of the punt port's RX sockets not in xdpolicy_afxdp_ring_events_total.", []string{"queue", "stat"}, nil)
	descSockets   = prometheus.NewDesc("xdpolicy_afxdp_sockets", "Open AF_XDP sockets by role.", []string{"role"}, nil)
	descTraceRecs = prometheus.NewDesc("xdpolicy_trace_records_total", "Verdict records written to the trace ring (only while someone follows, or with --trace-always).", nil, nil)
	descTraceBusy = prometheus.NewDesc("xdpolicy_trace_records_dropped_total", "Trace records a writer dropped because a slower writer held its slot.", nil, nil)
	descTraceOn   = prometheus.NewDesc("xdpolicy_trace_enabled", "1 while the workers record verdicts.", nil, nil)
)

type compileMetrics struct{ h prometheus.Histogram }

func newCompileMetrics() *compileMetrics {
	return &compileMetrics{h: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "xdpolicy_compile_duration_seconds",
		Help:    "Time to compile a cluster snapshot into a ruleset and publish it.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms … 4 s
	})}
}

func (m *compileMetrics) observe(d time.Duration) { m.h.Observe(d.Seconds()) }

// opsCollector exports what ops and the workers count.
type opsCollector struct {
	x     *ops
	objs  *xdpprog.Objects
	reg   *podwire.Registry
	rx    []*afxdp.Socket
	mu    sync.Mutex
	n     int
	nWhen time.Time
}

func (x *ops) collectors(objs *xdpprog.Objects, reg *podwire.Registry, rx []*afxdp.Socket) []prometheus.Collector {
	return []prometheus.Collector{x.compile.h, &opsCollector{x: x, objs: objs, reg: reg, rx: rx}}
}

func (k *opsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDecision, descSnapGen, descFlowsN, descFlowsCap, descReinject, descTxSockets, descRxExtra, descSockets, descTraceRecs, descTraceBusy, descTraceOn} {
		ch <- d
	}
}

func (k *opsCollector) Collect(ch chan<- prometheus.Metric) {
	x := k.x
	cnt := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}

	lat := &x.counters.Latency
	buckets := make(map[float64]uint64, len(worker.LatencyBounds))
	var cum uint64
	for i, b := range worker.LatencyBounds {
		cum += lat.Buckets[i].Load()
		buckets[float64(b)/1e9] = cum
	}
	cum += lat.Buckets[len(worker.LatencyBounds)].Load()
	ch <- prometheus.MustNewConstHistogram(descDecision, cum, float64(lat.SumNs.Load())/1e9, buckets)

	if s := x.live.Load(); s != nil {
		gauge(descSnapGen, float64(s.rs.Generation))
	}
	k.mu.Lock()
	if k.nWhen.IsZero() || time.Since(k.nWhen) > 10*time.Second {
		k.n, k.nWhen = x.flows.Len(), time.Now()
	}
	gauge(descFlowsN, float64(k.n))
	k.mu.Unlock()
	if k.objs != nil {
		gauge(descFlowsCap, float64(k.objs.Flows.MaxEntries()))
	}
	cnt(descReinject, x.counters.Reinjected.Load())

	var tx afxdp.Stats
	txN := 0
	k.reg.Ports(func(p *podwire.Port) {
		st, err := p.Stats()
		if err != nil {
			return
		}
		txN++
		tx.TxInvalidDescs += st.TxInvalidDescs
		tx.TxRingEmptyDescs += st.TxRingEmptyDescs
		tx.CompletionEmpty += st.CompletionEmpty
		tx.TxRingFull += st.TxRingFull
		tx.KickRetries += st.KickRetries
		tx.KickErrors += st.KickErrors
	})
	for _, e := range []struct {
		n string
		v uint64
	}{
		{"tx_invalid_descs", tx.TxInvalidDescs}, {"tx_ring_empty_descs", tx.TxRingEmptyDescs},
		{"completion_empty", tx.CompletionEmpty}, {"tx_ring_full", tx.TxRingFull},
		{"kick_retries", tx.KickRetries}, {"kick_errors", tx.KickErrors},
	} {
		cnt(descTxSockets, e.v, e.n)
	}
	gauge(descSockets, float64(txN), "reinject")
	gauge(descSockets, float64(len(k.rx)), "punt_rx")
	for q, s := range k.rx {
		st, err := s.Stats()
		if err != nil {
			continue
		}
		cnt(descRxExtra, st.TxInvalidDescs, strconv.Itoa(q), "tx_invalid_descs")
		cnt(descRxExtra, st.KickErrors, strconv.Itoa(q), "kick_errors")
	}

	cnt(descTraceRecs, x.ring.Written())
	cnt(descTraceBusy, x.ring.Busy())
	on := 0.0
	if x.ring.Enabled() {
		on = 1
	}
	gauge(descTraceOn, on)
}
