// Package kubeops reaches the xdpolicy agents of a cluster from a
// workstation, the way kubectl reaches pods: through the API server, with the
// user's kubeconfig and RBAC (list pods, create pods/portforward in the
// agents' namespace). It finds the DaemonSet's running pods and forwards a
// local port on 127.0.0.1 to each agent's ops port, which the agent serves
// on the node's loopback only, so `xdpolicy trace` and `explain --live` can
// ask every node at once.
//
// What it must never do: talk to a node directly, or listen anywhere but
// the loopback.
package kubeops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Defaults match deploy/.
const (
	DefaultNamespace = "xdpolicy-system"
	DefaultSelector  = "app.kubernetes.io/name=xdpolicy"
	// PortName is the agent container's port that serves the ops API.
	PortName = "metrics"
)

// Options say where the agents are.
type Options struct {
	Kubeconfig string // path; empty: $KUBECONFIG, ~/.kube/config, in-cluster
	Namespace  string // default DefaultNamespace
	Selector   string // label selector of the agent pods; default DefaultSelector
	// Node keeps only the agent of this node (empty: every node).
	Node string
}

// Agent is one node's agent, reachable at Base while the Cluster is open.
type Agent struct {
	Node string
	Pod  string // namespace/name
	Base string // http://127.0.0.1:PORT
}

// Cluster holds the port-forwards to the agents.
type Cluster struct {
	Agents []Agent
	cancel context.CancelFunc
	done   []chan struct{}
}

// Connect finds the running agent pods and forwards a local port to each.
func Connect(ctx context.Context, o Options) (*Cluster, error) {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Selector == "" {
		o.Selector = DefaultSelector
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	lctx, cancelList := context.WithTimeout(ctx, 15*time.Second)
	pods, err := cs.CoreV1().Pods(o.Namespace).List(lctx, metav1.ListOptions{LabelSelector: o.Selector})
	cancelList()
	if err != nil {
		return nil, fmt.Errorf("list agent pods (%s in namespace %s): %w", o.Selector, o.Namespace, err)
	}
	var run []corev1.Pod
	var nodes []string
	for _, p := range pods.Items {
		nodes = append(nodes, p.Spec.NodeName)
		if p.Status.Phase == corev1.PodRunning && (o.Node == "" || p.Spec.NodeName == o.Node) {
			run = append(run, p)
		}
	}
	if len(run) == 0 {
		if o.Node != "" {
			return nil, fmt.Errorf("no running xdpolicy agent on node %q (agent pods %s in %s are on: %s)", o.Node, o.Selector, o.Namespace, strings.Join(nodes, ", "))
		}
		return nil, fmt.Errorf("no running xdpolicy agent pods (%s) in namespace %s: is the DaemonSet installed (kubectl apply -k deploy/)?", o.Selector, o.Namespace)
	}
	sort.Slice(run, func(i, j int) bool { return run[i].Spec.NodeName < run[j].Spec.NodeName })

	fctx, cancel := context.WithCancel(ctx)
	c := &Cluster{cancel: cancel}
	for _, p := range run {
		a, done, err := forward(fctx, cfg, cs, &p)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Agents = append(c.Agents, a)
		c.done = append(c.done, done)
	}
	return c, nil
}

// Close stops the port-forwards.
func (c *Cluster) Close() {
	c.cancel()
	for _, d := range c.done {
		<-d
	}
}

// forward opens a port-forward from 127.0.0.1:0 to the agent's ops port.
func forward(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, p *corev1.Pod) (Agent, chan struct{}, error) {
	name := p.Namespace + "/" + p.Name
	port := 0
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == PortName {
				port = int(cp.ContainerPort)
			}
		}
	}
	if port == 0 {
		return Agent{}, nil, fmt.Errorf("agent pod %s has no container port named %q", name, PortName)
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(p.Namespace).Name(p.Name).SubResource("portforward").URL()
	tr, up, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return Agent{}, nil, err
	}
	var dialer httpstream.Dialer = spdy.NewDialer(up, &http.Client{Transport: tr}, http.MethodPost, u)
	// As kubectl does: WebSockets first, SPDY where the API server has no
	// WebSocket port-forward.
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool { return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err) })
	}
	ready := make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, ready, io.Discard, &errOut)
	if err != nil {
		return Agent{}, nil, err
	}
	done := make(chan struct{})
	ferr := make(chan error, 1)
	go func() {
		defer close(done)
		ferr <- fw.ForwardPorts()
	}()
	select {
	case <-ready:
	case err := <-ferr:
		if err == nil {
			err = errors.New(strings.TrimSpace(errOut.String()))
		}
		return Agent{}, nil, fmt.Errorf("port-forward to agent pod %s (needs create on pods/portforward in %s): %w", name, p.Namespace, err)
	case <-time.After(20 * time.Second):
		return Agent{}, nil, fmt.Errorf("port-forward to agent pod %s: not ready after 20s", name)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		return Agent{}, nil, fmt.Errorf("port-forward to agent pod %s: no local port: %v", name, err)
	}
	return Agent{Node: p.Spec.NodeName, Pod: name, Base: fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local)}, done, nil
}
