package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/source"
	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// control is the control-loop state the snapshot handler keeps besides
// the ruleset: the node addresses the source reported, the policy-error
// gauge and the realization histogram.
type control struct {
	src source.Source
	log *slog.Logger

	mu        sync.Mutex
	nodeAddrs []netip.Addr // from the source (the Node object)

	comp compile.Compiler
	prev *model.Cluster // the cluster comp compiled, as the source gave it
	full prometheus.Counter

	policyErrors *prometheus.GaugeVec
	realization  prometheus.Histogram
	snapshots    prometheus.Counter
	errored      map[[2]string]bool
}

func newControl(cfg Config, log *slog.Logger) *control {
	return &control{
		src: cfg.Source,
		log: log,
		policyErrors: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xdpolicy_policy_errors",
			Help: "1 for each NetworkPolicy that could not be compiled as written and fails closed for the pods it selects.",
		}, []string{"namespace", "name"}),
		realization: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xdpolicy_policy_realization_seconds",
			Help:    "From the source observing a change (informer event) to the snapshot including it being enforced: compiled, published, BPF maps and generation updated, revalidation started.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10},
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpolicy_snapshots_enforced_total",
			Help: "Snapshots compiled and enforced.",
		}),
		full: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpolicy_full_compiles_total",
			Help: "Snapshots compiled from scratch; the others changed only existing NetworkPolicies and were compiled incrementally.",
		}),
		errored: map[[2]string]bool{},
	}
}

func (k *control) collectors() []prometheus.Collector {
	return []prometheus.Collector{k.policyErrors, k.realization, k.snapshots, k.full}
}

// addrs returns the node netns's addresses with the source's node addresses.
func (k *control) addrs() []netip.Addr {
	out := nodeAddrs()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, a := range k.nodeAddrs {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// received is called with each snapshot before it is compiled.
func (k *control) received(c *model.Cluster) {
	k.mu.Lock()
	k.nodeAddrs = c.NodeAddrs
	k.mu.Unlock()
}

// enforced is called once the snapshot's generation is in the kernel.
func (k *control) enforced(c *model.Cluster, problems []compile.Problem) {
	k.snapshots.Inc()
	if !c.Observed.IsZero() {
		k.realization.Observe(time.Since(c.Observed).Seconds())
	}
	now := map[[2]string]bool{}
	for _, p := range problems {
		key := [2]string{p.Policy.Namespace, p.Policy.Name}
		now[key] = true
		k.policyErrors.WithLabelValues(key[0], key[1]).Set(1)
	}
	for key := range k.errored {
		if !now[key] {
			k.policyErrors.DeleteLabelValues(key[0], key[1])
		}
	}
	k.errored = now
	if r, ok := k.src.(source.ProblemReporter); ok {
		r.ReportProblems(problems)
	}
}

// reportUnwired tells the source's users (Events) about the local pods a
// policy isolates that the wirer could not wire.
func (k *control) reportUnwired(us []podwire.Unwired) {
	r, ok := k.src.(source.PodReporter)
	if !ok {
		return
	}
	m := make(map[string]string, len(us))
	for _, u := range us {
		m[u.Pod] = u.Reason
	}
	r.ReportUnenforced(m)
}

// compile compiles a snapshot: incrementally when, compared with the last
// one, only existing NetworkPolicies changed (the source shares unchanged
// objects between snapshots, so pointer comparison finds them), else from
// scratch.
func (k *control) compile(c *model.Cluster) (*ruleset.Ruleset, []compile.Problem) {
	if changed, ok := policyChanges(k.prev, c); ok && len(changed) > 0 {
		var (
			rs       *ruleset.Ruleset
			problems []compile.Problem
			err      error
		)
		for _, o := range changed {
			if rs, problems, err = k.comp.SetPolicy(o); err != nil {
				break
			}
		}
		if err == nil {
			k.prev = c
			return rs, problems
		}
		k.log.Info("incremental compile not possible, compiling from scratch", "err", err)
	}
	k.full.Inc()
	// The compiler owns what it is given and changes its slices later: a
	// shallow copy keeps c (also read by the explain API) as it is.
	own := *c
	own.Namespaces, own.Pods = slices.Clone(c.Namespaces), slices.Clone(c.Pods)
	own.Policies, own.Services = slices.Clone(c.Policies), slices.Clone(c.Services)
	rs, problems := k.comp.Compile(&own)
	k.prev = c
	return rs, problems
}

// policyChanges returns the policies of c that differ from prev when
// nothing else that the compiler reads changed and no policy was added or
// removed; ok is false otherwise.
func policyChanges(prev, c *model.Cluster) (changed []*networkingv1.NetworkPolicy, ok bool) {
	if prev == nil || !slices.Equal(prev.Namespaces, c.Namespaces) || !slices.Equal(prev.Pods, c.Pods) ||
		!slices.Equal(prev.Services, c.Services) || len(prev.Policies) != len(c.Policies) {
		return nil, false
	}
	for i, p := range c.Policies {
		q := prev.Policies[i]
		if p == q {
			continue
		}
		if p.Namespace != q.Namespace || p.Name != q.Name {
			return nil, false
		}
		changed = append(changed, p)
	}
	return changed, true
}
