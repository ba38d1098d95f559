package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
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
	reported map[string]string // ns/name → message of the Event sent
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
	)
	wake := make(chan struct{}, 1)
	mark := func() {
		dmu.Lock()
		if observed.IsZero() {
			observed = time.Now()
		}
		dmu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { mark() },
		UpdateFunc: func(o, n any) { mark() },
		DeleteFunc: func(any) { mark() },
	}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer(), pols.Informer(), svcs.Informer(), nodes.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
		inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			log.Warn("kube source: watch failed, enforcing the last snapshot until it resumes", "err", err)
		})
	}
	k.mu.Lock()
	k.client = cs
	k.recorder = bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "xdpolicy", Host: k.Node})
	k.policies = pols.Informer().GetStore()
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

	var last time.Time
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
		first = false
		dmu.Lock()
		obs := observed
		observed = time.Time{}
		dmu.Unlock()
		last = time.Now()
		c, err := k.build(pods.Lister().List, nss.Lister().List, pols.Lister().List, svcs.Lister().List, nodes.Lister().List)
		if err != nil {
			log.Error("kube source: keeping the last good state", "err", err)
			continue
		}
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

// build assembles a Cluster from the caches. The cached objects were
// stripped and defaulted by Strip and are never modified (informers replace
// them), so the Cluster shares them instead of copying.
func (k *Kube) build(
	podList func(labels.Selector) ([]*corev1.Pod, error),
	nsList func(labels.Selector) ([]*corev1.Namespace, error),
	polList func(labels.Selector) ([]*networkingv1.NetworkPolicy, error),
	svcList func(labels.Selector) ([]*corev1.Service, error),
	nodeList func(labels.Selector) ([]*corev1.Node, error),
) (*model.Cluster, error) {
	all := labels.Everything()
	c := &model.Cluster{}
	var err error
	if c.Pods, err = podList(all); err != nil {
		return nil, err
	}
	if c.Namespaces, err = nsList(all); err != nil {
		return nil, err
	}
	if c.Policies, err = polList(all); err != nil {
		return nil, err
	}
	if c.Services, err = svcList(all); err != nil {
		return nil, err
	}
	nodes, err := nodeList(all)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.Name != k.Node {
			continue
		}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				c.NodeAddrs = append(c.NodeAddrs, ip.Unmap())
			}
		}
	}
	c.Complete()
	return c, nil
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
		msg := fmt.Sprintf("xdpolicy on node %s: policy fails closed (its pods admit nothing) until fixed: %v", k.Node, p.Err)
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
