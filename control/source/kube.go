package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
)

// InvalidPolicyReason is the reason of the Events on NetworkPolicies that
// fail closed.
const InvalidPolicyReason = "InvalidNetworkPolicy"

// UnenforcedPodReason is the reason of the Events on pods that a policy
// isolates but whose veth the agent could not wire.
const UnenforcedPodReason = "NetworkPolicyNotEnforced"

// PodReporter is implemented by sources that can tell the cluster's users
// about local pods a policy isolates whose traffic the agent cannot enforce
// (the agent calls it after every wiring pass with the complete map of
// ns/name → reason).
type PodReporter interface {
	ReportUnenforced(pods map[string]string)
}

// ProblemReporter is implemented by sources that can tell the cluster's
// users about policies that fail closed (the agent calls it after every
// compile with the complete list).
type ProblemReporter interface {
	ReportProblems(ps []compile.Problem)
}

// Kube is a Source following a Kubernetes API server: informers on Pods (all
// namespaces: label selectors need every pod), Namespaces, NetworkPolicies,
// Services (their ClusterIPs) and the local Node (its addresses). Events only
// mark the state dirty; one loop rebuilds the Cluster from the caches, after
// they have synced, at most once per MinInterval. While the API server is
// unreachable the caches keep the last state, so nothing is delivered and
// the agent keeps enforcing the last snapshot; the reflectors relist when it
// returns and the differences arrive as events.
type Kube struct {
	Config *rest.Config
	// Node is the local node's name (its Node object gives NodeAddrs).
	Node string
	// MinInterval between two rebuilds (default 10ms): changes within it
	// are coalesced into one snapshot.
	MinInterval time.Duration
	Log         *slog.Logger

	mu       sync.Mutex
	client   kubernetes.Interface
	recorder record.EventRecorder
	policies cacheLister
	pods     cacheLister
	reported map[string]string // ns/name → message of the Event sent
	podsSaid map[string]string // ns/name → reason of the pod Event sent
}

type cacheLister interface {
	GetByKey(key string) (any, bool, error)
}

// KubeConfig returns the client configuration: the kubeconfig file when
// given, else the in-cluster configuration.
func KubeConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "xdpolicy"
	// Lists at start-up are the only bursts; watches are long-lived.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

// InCluster reports whether the process runs in a pod with a service account.
func InCluster() bool { return os.Getenv("KUBERNETES_SERVICE_HOST") != "" }

// Run implements Source.
func (k *Kube) Run(ctx context.Context, deliver func(*model.Cluster)) error {
	if k.Config == nil {
		return errors.New("kube source: no client config")
	}
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	iv := k.MinInterval
	if iv <= 0 {
		iv = 10 * time.Millisecond
	}
	cs, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		return fmt.Errorf("kube source: %w", err)
	}
	bc := record.NewBroadcaster(record.WithContext(ctx))
	defer bc.Shutdown()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})

	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTransform(Strip))
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	pols := f.Networking().V1().NetworkPolicies()
	svcs := f.Core().V1().Services()
	// Only the local node: its addresses are the ones the node-to-pod
	// rule needs, and a watch of every Node costs memory on big clusters.
	nf := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTransform(Strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.Node).String()
		}))
	nodes := nf.Core().V1().Nodes()

	var (
		dmu      sync.Mutex
		observed time.Time // oldest change not yet delivered
		dirty    kinds     // kinds changed since the last rebuild
	)
	wake := make(chan struct{}, 1)
	mark := func(kind kinds) {
		dmu.Lock()
		if observed.IsZero() {
			observed = time.Now()
		}
		dirty |= kind
		dmu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	handler := func(kind kinds) cache.ResourceEventHandler {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { mark(kind) },
			UpdateFunc: func(o, n any) { mark(kind) },
			DeleteFunc: func(any) { mark(kind) },
		}
	}
	for _, x := range []struct {
		inf  cache.SharedIndexInformer
		kind kinds
	}{{pods.Informer(), kindPods}, {nss.Informer(), kindNamespaces}, {pols.Informer(), kindPolicies}, {svcs.Informer(), kindServices}, {nodes.Informer(), kindNodes}} {
		if _, err := x.inf.AddEventHandler(handler(x.kind)); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
		x.inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			if ctx.Err() != nil {
				return
			}
			log.Warn("kube source: watch failed, enforcing the last snapshot until it resumes", "err", err)
		})
	}
	k.mu.Lock()
	k.client = cs
	k.recorder = bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "xdpolicy", Host: k.Node})
	k.policies = pols.Informer().GetStore()
	k.pods = pods.Informer().GetStore()
	k.mu.Unlock()

	f.Start(ctx.Done())
	nf.Start(ctx.Done())
	defer f.Shutdown()
	defer nf.Shutdown()
	start := time.Now()
	for _, synced := range []map[any]bool{reflectMap(f.WaitForCacheSync(ctx.Done())), reflectMap(nf.WaitForCacheSync(ctx.Done()))} {
		for t, ok := range synced {
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("kube source: cache of %v did not sync", t)
			}
		}
	}
	log.Info("kube source: caches synced", "took", time.Since(start).Round(time.Millisecond))

	var (
		last   time.Time
		snap   snapshot
		failed bool
	)
	first := true
	for {
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-wake:
			}
			if d := iv - time.Since(last); d > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(d):
				}
			}
		}
		dmu.Lock()
		obs, changed := observed, dirty
		observed, dirty = time.Time{}, 0
		dmu.Unlock()
		last = time.Now()
		if first || failed {
			changed = kindAll
		}
		c, err := snap.build(changed, k.Node, pods.Lister().List, nss.Lister().List, pols.Lister().List, svcs.Lister().List, nodes.Lister().List)
		if failed = err != nil; failed {
			// Listers of synced caches do not fail; if one does, keep the
			// last snapshot and try everything again shortly.
			log.Error("kube source: keeping the last good state", "err", err)
			first = false
			time.AfterFunc(100*time.Millisecond, func() { mark(kindAll) })
			continue
		}
		first = false
		if obs.IsZero() {
			obs = last
		}
		c.Observed = obs
		deliver(c)
	}
}

func reflectMap[T comparable](m map[T]bool) map[any]bool {
	out := make(map[any]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// kinds is a set of the object kinds the source watches.
type kinds uint8

const (
	kindPods kinds = 1 << iota
	kindNamespaces
	kindPolicies
	kindServices
	kindNodes
	kindAll = kindPods | kindNamespaces | kindPolicies | kindServices | kindNodes
)

// snapshot is the last Cluster's sorted lists: a kind that did not change
// keeps its list (the same slice, the same objects), so that a policy
// change does not sort 10k pods again, and the agent sees by comparing
// pointers that nothing but the policies changed. Consumers never modify
// a Cluster's slices (the agent's compiler works on copies).
type snapshot struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	policies   []*networkingv1.NetworkPolicy
	services   []*corev1.Service
	nodeAddrs  []netip.Addr
}

func byNamespaceName[T interface {
	GetNamespace() string
	GetName() string
}](a, b T) int {
	if c := strings.Compare(a.GetNamespace(), b.GetNamespace()); c != 0 {
		return c
	}
	return strings.Compare(a.GetName(), b.GetName())
}

// build assembles a Cluster from the caches, listing again only the kinds
// that changed. The cached objects were stripped and defaulted by Strip and
// are never modified (informers replace them), so the Cluster shares them
// instead of copying. Namespaces that pods or policies refer to but that
// are not (or no longer) in the cache are added as model.Cluster.Complete
// does.
func (s *snapshot) build(changed kinds, node string,
	podList func(labels.Selector) ([]*corev1.Pod, error),
	nsList func(labels.Selector) ([]*corev1.Namespace, error),
	polList func(labels.Selector) ([]*networkingv1.NetworkPolicy, error),
	svcList func(labels.Selector) ([]*corev1.Service, error),
	nodeList func(labels.Selector) ([]*corev1.Node, error),
) (*model.Cluster, error) {
	all := labels.Everything()
	var err error
	if changed&kindPods != 0 {
		if s.pods, err = podList(all); err != nil {
			return nil, err
		}
		slices.SortFunc(s.pods, byNamespaceName)
	}
	if changed&kindPolicies != 0 {
		if s.policies, err = polList(all); err != nil {
			return nil, err
		}
		slices.SortFunc(s.policies, byNamespaceName)
	}
	if changed&kindServices != 0 {
		if s.services, err = svcList(all); err != nil {
			return nil, err
		}
		slices.SortFunc(s.services, byNamespaceName)
	}
	if changed&(kindNamespaces|kindPods|kindPolicies) != 0 {
		if s.namespaces, err = nsList(all); err != nil {
			return nil, err
		}
		seen := make(map[string]bool, len(s.namespaces))
		for _, ns := range s.namespaces {
			seen[ns.Name] = true
		}
		add := func(name string) {
			if name != "" && !seen[name] {
				seen[name] = true
				ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
				model.DefaultNamespace(ns)
				s.namespaces = append(s.namespaces, ns)
			}
		}
		for _, p := range s.pods {
			add(p.Namespace)
		}
		for _, p := range s.policies {
			add(p.Namespace)
		}
		slices.SortFunc(s.namespaces, func(a, b *corev1.Namespace) int { return strings.Compare(a.Name, b.Name) })
	}
	if changed&kindNodes != 0 {
		nodes, err := nodeList(all)
		if err != nil {
			return nil, err
		}
		s.nodeAddrs = nil
		for _, n := range nodes {
			if n.Name != node {
				continue
			}
			for _, a := range n.Status.Addresses {
				if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
					continue
				}
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					s.nodeAddrs = append(s.nodeAddrs, ip.Unmap())
				}
			}
		}
	}
	return &model.Cluster{Namespaces: s.namespaces, Pods: s.pods, Policies: s.policies, Services: s.services, NodeAddrs: s.nodeAddrs}, nil
}

// ReportProblems implements ProblemReporter: a Warning Event with reason
// InvalidNetworkPolicy on each policy that newly fails closed (or whose
// problem changed).
func (k *Kube) ReportProblems(ps []compile.Problem) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.recorder == nil {
		return
	}
	now := map[string]string{}
	for _, p := range ps {
		key := p.Policy.Namespace + "/" + p.Policy.Name
		msg := fmt.Sprintf("xdpolicy on node %s: policy fails closed (the pods it selects get no traffic in or out) until fixed: %v", k.Node, p.Err)
		now[key] = msg
		if k.reported[key] == msg {
			continue
		}
		obj, ok, err := k.policies.GetByKey(key)
		if err != nil || !ok {
			continue
		}
		k.recorder.Event(obj.(*networkingv1.NetworkPolicy), corev1.EventTypeWarning, InvalidPolicyReason, msg)
	}
	k.reported = now
}

// ReportUnenforced implements PodReporter: a Warning Event with reason
// NetworkPolicyNotEnforced on each pod that newly cannot be enforced (or
// whose reason changed).
func (k *Kube) ReportUnenforced(pods map[string]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.recorder == nil {
		return
	}
	for key, reason := range pods {
		if k.podsSaid[key] == reason {
			continue
		}
		obj, ok, err := k.pods.GetByKey(key)
		if err != nil || !ok {
			continue
		}
		k.recorder.Eventf(obj.(*corev1.Pod), corev1.EventTypeWarning, UnenforcedPodReason,
			"xdpolicy on node %s cannot attach to this pod's veth, so the NetworkPolicies that isolate it are NOT enforced: %s", k.Node, reason)
	}
	k.podsSaid = pods
}

// Strip is the informers' transform: it keeps only the fields the compiler
// and the dataplane read (dropping managedFields, annotations such as
// last-applied-configuration, container specs, conditions, …) and defaults
// what it keeps, so the cached objects are ready to share with snapshots.
func Strip(obj any) (any, error) {
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Labels: m.Labels}
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{ObjectMeta: meta(o.ObjectMeta)}
		p.Spec.NodeName = o.Spec.NodeName
		p.Spec.HostNetwork = o.Spec.HostNetwork
		keep := func(cs []corev1.Container) []corev1.Container {
			var out []corev1.Container
			for _, c := range cs {
				if len(c.Ports) == 0 {
					continue
				}
				ports := make([]corev1.ContainerPort, len(c.Ports))
				for i, cp := range c.Ports {
					ports[i] = corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol}
				}
				out = append(out, corev1.Container{Name: c.Name, Ports: ports, RestartPolicy: c.RestartPolicy})
			}
			return out
		}
		p.Spec.InitContainers = keep(o.Spec.InitContainers)
		p.Spec.Containers = keep(o.Spec.Containers)
		p.Status.Phase = o.Status.Phase
		p.Status.PodIP = o.Status.PodIP
		p.Status.PodIPs = o.Status.PodIPs
		model.DefaultPod(p)
		return p, nil
	case *corev1.Namespace:
		ns := &corev1.Namespace{ObjectMeta: meta(o.ObjectMeta)}
		model.DefaultNamespace(ns)
		return ns, nil
	case *networkingv1.NetworkPolicy:
		p := &networkingv1.NetworkPolicy{ObjectMeta: meta(o.ObjectMeta), Spec: o.Spec}
		model.DefaultPolicy(p)
		return p, nil
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: meta(o.ObjectMeta)}
		s.Spec.Type = o.Spec.Type
		s.Spec.ClusterIP = o.Spec.ClusterIP
		s.Spec.ClusterIPs = o.Spec.ClusterIPs
		model.DefaultService(s)
		return s, nil
	case *corev1.Node:
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, ResourceVersion: o.ResourceVersion}}
		n.Status.Addresses = o.Status.Addresses
		return n, nil
	}
	// Tombstones (cache.DeletedFinalStateUnknown) and anything else pass.
	return obj, nil
}
