package agent

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
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

	comp       compile.Compiler
	prev       *model.Cluster // the cluster comp compiled, as the source gave it
	recompiles int            // comp.Recompiles() counted in full
	full       prometheus.Counter

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
			Help: "Snapshots compiled from scratch: the first, those with many changed objects, and the compiler's own recompiles that drop what incremental changes left behind; the others were compiled incrementally.",
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

// maxIncremental is the most changed objects a snapshot may have to be
// compiled incrementally (each takes 0.1-2 ms at 10k pods); more (a
// relist, a bulk apply) are compiled from scratch, which bounds the time
// (~200 ms) however many objects changed.
const maxIncremental = 64

// compile compiles a snapshot: incrementally when, compared with the last
// one, at most maxIncremental objects were added, changed or deleted (the
// source shares unchanged objects between snapshots, so pointer comparison
// finds them), else from scratch.
func (k *control) compile(c *model.Cluster) (*ruleset.Ruleset, []compile.Problem) {
	if changes, ok := clusterChanges(k.prev, c, maxIncremental); ok {
		rs, problems, err := k.comp.Apply(changes...)
		if err == nil {
			if n := k.comp.Recompiles(); n != k.recompiles {
				// The compiler compiled from scratch to drop what
				// earlier changes left behind.
				k.full.Add(float64(n - k.recompiles))
				k.recompiles = n
			}
			k.prev = c
			return rs, problems
		}
		k.log.Info("incremental compile not possible, compiling from scratch", "err", err)
	}
	k.full.Inc()
	// The compiler owns what it is given: a shallow copy keeps c (also
	// read by the explain API) apart from it.
	own := *c
	own.Namespaces, own.Pods = slices.Clone(c.Namespaces), slices.Clone(c.Pods)
	own.Policies, own.Services = slices.Clone(c.Policies), slices.Clone(c.Services)
	rs, problems := k.comp.Compile(&own)
	k.recompiles = k.comp.Recompiles()
	k.prev = c
	return rs, problems
}

// clusterChanges lists what differs between prev and c as compiler
// changes: pods, NetworkPolicies and Services added, replaced (another
// object: the source replaces the objects that changed) or deleted,
// found by walking both lists in namespace/name order; namespaces added,
// deleted or relabelled, compared by labels (the source makes new objects
// for namespaces it only knows from their pods). ok is false when there is
// no prev, when there are more than max changes, or when a list is not
// sorted.
func clusterChanges(prev, c *model.Cluster, max int) (changes []compile.Change, ok bool) {
	if prev == nil {
		return nil, false
	}
	add := func(ch compile.Change) bool {
		changes = append(changes, ch)
		return len(changes) <= max
	}
	if !namespaceChanges(prev.Namespaces, c.Namespaces, add) ||
		!listChanges(prev.Pods, c.Pods, func(o *corev1.Pod, del bool) bool { return add(compile.Change{Pod: o, Delete: del}) }) ||
		!listChanges(prev.Policies, c.Policies, func(o *networkingv1.NetworkPolicy, del bool) bool {
			return add(compile.Change{Policy: o, Delete: del})
		}) ||
		!listChanges(prev.Services, c.Services, func(o *corev1.Service, del bool) bool { return add(compile.Change{Service: o, Delete: del}) }) {
		return nil, false
	}
	return changes, true
}

type named interface {
	comparable
	GetNamespace() string
	GetName() string
}

func byName[T named](a, b T) int {
	if c := strings.Compare(a.GetNamespace(), b.GetNamespace()); c != 0 {
		return c
	}
	return strings.Compare(a.GetName(), b.GetName())
}

// listChanges walks two lists sorted by namespace and name, calling change
// for each object added or replaced in cur (del false) and each object of
// prev gone from cur (del true); false when change does, or when a list is
// not sorted.
func listChanges[T named](prev, cur []T, change func(o T, del bool) bool) bool {
	if len(prev) == len(cur) && (len(cur) == 0 || &prev[0] == &cur[0]) {
		return true // the same list: nothing changed
	}
	i, j := 0, 0
	for i < len(prev) || j < len(cur) {
		if (i > 0 && i < len(prev) && byName(prev[i-1], prev[i]) >= 0) || (j > 0 && j < len(cur) && byName(cur[j-1], cur[j]) >= 0) {
			return false
		}
		d := 0
		switch {
		case i == len(prev):
			d = 1
		case j == len(cur):
			d = -1
		default:
			d = byName(prev[i], cur[j])
		}
		ok := true
		switch {
		case d < 0:
			ok = change(prev[i], true)
			i++
		case d > 0:
			ok = change(cur[j], false)
			j++
		default:
			if prev[i] != cur[j] {
				ok = change(cur[j], false)
			}
			i, j = i+1, j+1
		}
		if !ok {
			return false
		}
	}
	return true
}

// namespaceChanges compares namespaces by name and labels.
func namespaceChanges(prev, cur []*corev1.Namespace, add func(compile.Change) bool) bool {
	was := make(map[string]*corev1.Namespace, len(prev))
	for _, ns := range prev {
		was[ns.Name] = ns
	}
	for _, ns := range cur {
		old, ok := was[ns.Name]
		delete(was, ns.Name)
		if ok && (old == ns || maps.Equal(old.Labels, ns.Labels)) {
			continue
		}
		if !add(compile.Change{Namespace: ns}) {
			return false
		}
	}
	for _, ns := range prev {
		if _, gone := was[ns.Name]; gone && !add(compile.Change{Namespace: ns, Delete: true}) {
			return false
		}
	}
	return true
}
