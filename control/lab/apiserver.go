package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/xdpolicy/xdpolicy/control/kubetest"
	"github.com/xdpolicy/xdpolicy/control/model"
)

// The lab on an API server (`lab up --apiserver` or `--kubeconfig`): the
// lab's Namespaces, Nodes and Pods are API objects (pod status patched with
// the lab's addresses and phase Running, since no kubelet runs), the agents
// follow the API server (`agent --kubeconfig`), and `lab apply/delete` and
// the prediction of `lab probe` go through the API. The cluster YAML in the
// lab directory still records the lab's layout.

// apiServerDir is where a lab keeps the API server it started.
func apiServerDir(dir string) string { return filepath.Join(dir, "apiserver") }

// labContainerImage is given to pod containers that have none: nothing
// runs images here, but the API server requires one.
const labContainerImage = "xdpolicy.invalid/lab-pod"

// upAPI starts (or connects to) the API server and creates the lab's
// objects there.
func (s *State) upAPI(o Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if o.Kubeconfig != "" {
		abs, err := filepath.Abs(o.Kubeconfig)
		if err != nil {
			return err
		}
		s.Kubeconfig = abs
	} else {
		s.APIServer = apiServerDir(s.Dir)
		if err := s.save(); err != nil { // so that down stops it even if Run fails half-way
			return err
		}
		srv, err := kubetest.Run(ctx, kubetest.Options{Dir: s.APIServer, Detach: true})
		if err != nil {
			return fmt.Errorf("API server: %w", err)
		}
		s.Kubeconfig = srv.Kubeconfig
	}
	if err := s.save(); err != nil {
		return err
	}
	cs, err := s.client()
	if err != nil {
		return err
	}
	res, err := model.Load(clusterFile(s.Dir))
	if err != nil {
		return err
	}
	if err := createObjects(ctx, cs, s, res.Cluster); err != nil {
		return err
	}
	// An API server on this namespace's loopback: the node namespaces
	// reach it through forwarders.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	if hp := apiHostPort(cfg.Host); strings.HasPrefix(hp, "127.0.0.1:") || strings.HasPrefix(hp, "localhost:") {
		return s.startForwarders(strings.Replace(hp, "localhost:", "127.0.0.1:", 1))
	}
	return nil
}

// client returns a client of the lab's API server.
func (s *State) client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 500, 1000
	return kubernetes.NewForConfig(cfg)
}

// createObjects creates Nodes (with the underlay addresses), Namespaces and
// Pods (status: phase Running and the lab's addresses).
func createObjects(ctx context.Context, cs kubernetes.Interface, s *State, c *model.Cluster) error {
	for _, n := range s.Nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"xdpolicy.io/lab": s.Name}}}
		for _, a := range n.IPs {
			node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
		}
		got, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			got, err = cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		got.Status.Addresses = node.Status.Addresses
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %s status: %w", n.Name, err)
		}
	}
	for _, ns := range c.Namespaces {
		o := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: ns.Labels}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
	}
	return parallel(c.Pods, func(p *corev1.Pod) error { return CreatePod(ctx, cs, p) })
}

// CreatePod creates a pod as the API server expects one (every container
// has an image) and sets its status as a kubelet would: the addresses
// given and phase Running.
func CreatePod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) error {
	o := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels}, Spec: *p.Spec.DeepCopy()}
	if len(o.Spec.Containers) == 0 {
		o.Spec.Containers = []corev1.Container{{Name: "c"}}
	}
	for _, cs := range [][]corev1.Container{o.Spec.InitContainers, o.Spec.Containers} {
		for i := range cs {
			if cs[i].Image == "" {
				cs[i].Image = labContainerImage
			}
		}
	}
	got, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, o, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	got.Status.Phase = corev1.PodRunning
	got.Status.PodIP = p.Status.PodIP
	got.Status.PodIPs = p.Status.PodIPs
	if got.Status.PodIP == "" && len(got.Status.PodIPs) > 0 {
		got.Status.PodIP = got.Status.PodIPs[0].IP
	}
	if len(got.Status.PodIPs) == 0 && got.Status.PodIP != "" {
		got.Status.PodIPs = []corev1.PodIP{{IP: got.Status.PodIP}}
	}
	if _, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// sourceArgs are the agent's control-source flags.
func (s *State) sourceArgs() []string {
	if s.Kubeconfig != "" {
		return []string{"--kubeconfig", s.Kubeconfig}
	}
	return []string{"--cluster", ClusterDir(s.Dir), "--policies", PoliciesDir(s.Dir)}
}

// labState finds the lab whose directory is dir.
func labState(dir string) *State {
	s, err := loadDir(dir)
	if err != nil {
		return nil
	}
	return s
}

// apiCluster reads the lab's cluster and policies from the API server.
func (s *State) apiCluster() (*model.Cluster, error) {
	cs, err := s.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &model.Cluster{}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range nss.Items {
		c.Add(&nss.Items[i])
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		c.Add(&pods.Items[i])
	}
	pols, err := cs.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pols.Items {
		c.Add(&pols.Items[i])
	}
	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range svcs.Items {
		c.Add(&svcs.Items[i])
	}
	c.Complete()
	return c, nil
}

// applyAPI is Apply for a lab on an API server: NetworkPolicies are
// created or updated; Namespace and Pod labels are replaced.
func (s *State) applyAPI(paths []string, del bool) ([]string, error) {
	objs, err := readObjects(paths)
	if err != nil {
		return nil, err
	}
	cs, err := s.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []string
	for _, o := range objs {
		switch {
		case o.Kind == "NetworkPolicy" && o.APIVersion == "networking.k8s.io/v1":
			np, err := model.DecodePolicy(o.js)
			if err != nil {
				return out, fmt.Errorf("%s: %s: %w", o.file, o, err)
			}
			ns := o.namespace()
			api := cs.NetworkingV1().NetworkPolicies(ns)
			if del {
				if err := api.Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
					return out, fmt.Errorf("%s: %s: %w", o.file, o, err)
				}
				out = append(out, fmt.Sprintf("networkpolicy %s/%s deleted", ns, np.Name))
				continue
			}
			verb, err := ApplyPolicy(ctx, cs, np)
			if err != nil {
				return out, fmt.Errorf("%s: %s: %w", o.file, o, err)
			}
			out = append(out, fmt.Sprintf("networkpolicy %s/%s %s", ns, np.Name, verb))
		case del:
			return out, fmt.Errorf("%s: %s: the lab deletes only NetworkPolicies", o.file, o)
		case o.Kind == "Namespace" && o.APIVersion == "v1":
			api := cs.CoreV1().Namespaces()
			cur, err := api.Get(ctx, o.Metadata.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Metadata.Name, Labels: o.Metadata.Labels}}
				if _, err := api.Create(ctx, n, metav1.CreateOptions{}); err != nil {
					return out, err
				}
				out = append(out, "namespace "+o.Metadata.Name+" created")
				continue
			}
			if err != nil {
				return out, err
			}
			l := maps.Clone(o.Metadata.Labels)
			if l == nil {
				l = map[string]string{}
			}
			l[model.NamespaceNameLabel] = o.Metadata.Name
			cur.Labels = l
			if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return out, err
			}
			out = append(out, "namespace "+o.Metadata.Name+" configured")
		case o.Kind == "Pod" && o.APIVersion == "v1":
			api := cs.CoreV1().Pods(o.namespace())
			cur, err := api.Get(ctx, o.Metadata.Name, metav1.GetOptions{})
			if err != nil {
				return out, fmt.Errorf("%s: %s: pods come only from 'lab up': %w", o.file, o, err)
			}
			cur.Labels = o.Metadata.Labels
			if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return out, err
			}
			out = append(out, fmt.Sprintf("pod %s/%s configured", o.namespace(), o.Metadata.Name))
		default:
			return out, fmt.Errorf("%s: %s: the lab applies only NetworkPolicies, Namespaces and Pods", o.file, o)
		}
	}
	return out, nil
}

// ApplyPolicy creates a NetworkPolicy or replaces the spec and labels of
// the existing one; it returns "created" or "configured".
func ApplyPolicy(ctx context.Context, cs kubernetes.Interface, np *networkingv1.NetworkPolicy) (string, error) {
	ns := np.Namespace
	if ns == "" {
		ns = "default"
	}
	api := cs.NetworkingV1().NetworkPolicies(ns)
	o := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: np.Name, Namespace: ns, Labels: np.Labels}, Spec: np.Spec}
	_, err := api.Create(ctx, o, metav1.CreateOptions{})
	if err == nil {
		return "created", nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	cur, err := api.Get(ctx, np.Name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	cur.Spec, cur.Labels = np.Spec, np.Labels
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return "", err
	}
	return "configured", nil
}

// downAPI stops the API server the lab started.
func downAPI(dir string) error {
	d := apiServerDir(dir)
	if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return kubetest.StopDir(d)
}
