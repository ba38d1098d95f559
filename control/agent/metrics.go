package agent

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/punt"
	"github.com/xdpolicy/xdpolicy/dataplane/worker"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

var (
	descVerdicts = prometheus.NewDesc("xdpolicy_slowpath_verdicts_total", "Verdicts taken by the Go workers.", []string{"action", "hook"}, nil)
	descPunted   = prometheus.NewDesc("xdpolicy_punted_frames_total", "Frames received from the punt port.", nil, nil)
	descDrops    = prometheus.NewDesc("xdpolicy_slowpath_drops_total", "Frames the workers dropped for reasons other than policy.", []string{"reason"}, nil)
	descKernel   = prometheus.NewDesc("xdpolicy_tcx_packets_total", "Packets by outcome in the tcx programs.", []string{"outcome"}, nil)
	descPuntXDP  = prometheus.NewDesc("xdpolicy_punt_xdp_packets_total", "Packets by outcome in the punt XDP program.", []string{"outcome"}, nil)
	descRing     = prometheus.NewDesc("xdpolicy_afxdp_ring_events_total", "AF_XDP RX socket statistics of the punt port.", []string{"queue", "stat"}, nil)
	descGen      = prometheus.NewDesc("xdpolicy_generation", "Ruleset generation the kernel enforces.", nil, nil)
	descPods     = prometheus.NewDesc("xdpolicy_wired_pods", "Local pods whose veths carry the programs.", nil, nil)
	descUnwired  = prometheus.NewDesc("xdpolicy_unenforced_pods", "1 for each local pod a policy isolates whose veth could not be wired: its traffic is not enforced (sum for the count).", []string{"pod", "reason"}, nil)
	descRelated  = prometheus.NewDesc("xdpolicy_slowpath_related_total", "ICMP errors the workers allowed as related to an allowed flow (also counted as allow verdicts).", nil, nil)
	descPodDrops = prometheus.NewDesc("xdpolicy_fastpath_drops_total", "Packets the tcx programs dropped on a cached deny, per local pod.", []string{"pod"}, nil)
)

type collector struct {
	objs  *xdpprog.Objects
	c     *worker.Counters
	wirer *podwire.Wirer
	pp    *punt.Port
	gen   *atomic.Uint32
}

func (k *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVerdicts, descPunted, descDrops, descKernel, descPuntXDP, descRing, descGen, descPods, descUnwired, descPodDrops, descRelated} {
		ch <- d
	}
}

func (k *collector) Collect(ch chan<- prometheus.Metric) {
	cnt := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	for _, h := range []xdpprog.Hook{xdpprog.HookEgress, xdpprog.HookIngress} {
		cnt(descVerdicts, k.c.Allowed[h].Load(), "allow", h.String())
		cnt(descVerdicts, k.c.Denied[h].Load(), "deny", h.String())
	}
	cnt(descPunted, k.c.Punted.Load())
	cnt(descDrops, k.c.Malformed.Load(), "malformed")
	cnt(descDrops, k.c.NoTarget.Load(), "no_target")
	cnt(descDrops, k.c.NoSnapshot.Load(), "no_snapshot")
	cnt(descDrops, k.c.TxDropped.Load(), "tx")
	cnt(descDrops, k.c.CacheErrors.Load(), "cache_error")
	cnt(descDrops, k.c.FragOrphans.Load(), "no_first_fragment")
	cnt(descRelated, k.c.Related.Load())
	if kc, err := k.objs.ReadCounters(); err == nil {
		for i, v := range kc {
			cnt(descKernel, v, xdpprog.Counter(i).String())
		}
	}
	if pc, err := k.objs.ReadPuntCounters(); err == nil {
		cnt(descPuntXDP, pc[xdpprog.PuntCounterRedirect], "redirect")
		cnt(descPuntXDP, pc[xdpprog.PuntCounterNoSocket], "no_socket")
	}
	for q, s := range k.pp.RX {
		st, err := s.Stats()
		if err != nil {
			continue
		}
		qs := itoa(q)
		for _, e := range []struct {
			n string
			v uint64
		}{
			{"rx_dropped", st.RxDropped}, {"rx_ring_full", st.RxRingFull},
			{"rx_fill_ring_empty", st.RxFillRingEmptyDescs}, {"rx_invalid_descs", st.RxInvalidDescs},
			{"fill_ring_empty", st.FillRingEmpty},
		} {
			cnt(descRing, e.v, qs, e.n)
		}
	}
	ch <- prometheus.MustNewConstMetric(descGen, prometheus.GaugeValue, float64(k.gen.Load()))
	ch <- prometheus.MustNewConstMetric(descPods, prometheus.GaugeValue, float64(k.wirer.Count()))
	for _, u := range k.wirer.Unwired() {
		ch <- prometheus.MustNewConstMetric(descUnwired, prometheus.GaugeValue, 1, u.Pod, u.Reason)
	}
	k.wirer.Registry().Targets(func(t *podwire.Target) {
		if n, err := k.objs.PodDropCount(t.HostIndex); err == nil {
			ch <- prometheus.MustNewConstMetric(descPodDrops, prometheus.CounterValue, float64(n), t.Pod)
		}
	})
	_ = afxdp.Stats{}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
