package model

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// NamespaceNameLabel is the label the API server puts on every Namespace.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Cluster is the state a ruleset is compiled from. Objects are owned by the
// Cluster once added: callers must not modify them afterwards.
type Cluster struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
	// Services matter only through their ClusterIPs: traffic leaving a pod
	// for one has not been DNATed yet, so its egress is decided at the
	// backend's entering hook instead (see dataplane/flowtable).
	Services []*corev1.Service

	// NodeAddrs are the local node's addresses from its Node object (the
	// Kubernetes source); traffic from them to local pods is always
	// allowed, like traffic from the node netns's own addresses.
	NodeAddrs []netip.Addr
	// Observed is when a live source first saw the oldest change this
	// snapshot includes (zero for file sources); the agent measures policy
	// realization from it.
	Observed time.Time
}

// Add appends objects of the kinds a Cluster holds, defaulting them, and
// reports objects of any other kind as skipped (false).
func (c *Cluster) Add(obj any) bool {
	switch o := obj.(type) {
	case *corev1.Namespace:
		DefaultNamespace(o)
		c.Namespaces = append(c.Namespaces, o)
	case *corev1.Pod:
		DefaultPod(o)
		c.Pods = append(c.Pods, o)
	case *networkingv1.NetworkPolicy:
		DefaultPolicy(o)
		c.Policies = append(c.Policies, o)
	case *corev1.Service:
		DefaultService(o)
		c.Services = append(c.Services, o)
	default:
		return false
	}
	return true
}

// Merge appends everything in o to c.
func (c *Cluster) Merge(o *Cluster) {
	c.Namespaces = append(c.Namespaces, o.Namespaces...)
	c.Pods = append(c.Pods, o.Pods...)
	c.Policies = append(c.Policies, o.Policies...)
	c.Services = append(c.Services, o.Services...)
}

// Complete adds a Namespace object for every namespace that pods or policies
// refer to but that was not given, so that plain pod listings work; such
// namespaces carry only the kubernetes.io/metadata.name label. Objects are
// then sorted by namespace and name so results do not depend on input order.
func (c *Cluster) Complete() {
	seen := map[string]bool{}
	for _, ns := range c.Namespaces {
		seen[ns.Name] = true
	}
	add := func(name string) {
		if name == "" || seen[name] {
			return
		}
		seen[name] = true
		ns := &corev1.Namespace{}
		ns.Name = name
		DefaultNamespace(ns)
		c.Namespaces = append(c.Namespaces, ns)
	}
	for _, p := range c.Pods {
		add(p.Namespace)
	}
	for _, p := range c.Policies {
		add(p.Namespace)
	}
	sort.SliceStable(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Name < c.Namespaces[j].Name })
	sort.SliceStable(c.Pods, func(i, j int) bool {
		a, b := c.Pods[i], c.Pods[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	sort.SliceStable(c.Policies, func(i, j int) bool {
		a, b := c.Policies[i], c.Policies[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	sort.SliceStable(c.Services, func(i, j int) bool {
		a, b := c.Services[i], c.Services[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// ClusterIPs returns a Service's cluster addresses from spec.clusterIPs,
// falling back to spec.clusterIP, unmapped and deduplicated. Headless
// Services ("None"), ExternalName Services and Services not yet given an
// address have none. Unparsable addresses are an error naming the field
// (ValidateService reports every problem; this reports the first).
func ClusterIPs(s *corev1.Service) ([]netip.Addr, error) {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	raw := s.Spec.ClusterIPs
	if len(raw) == 0 && s.Spec.ClusterIP != "" {
		raw = []string{s.Spec.ClusterIP}
	}
	if len(raw) > 0 && raw[0] == corev1.ClusterIPNone {
		return nil, nil
	}
	return parseAddrs(raw, "spec.clusterIPs[%d]", len(s.Spec.ClusterIPs) == 0, "spec.clusterIP")
}

// parseAddrs parses a list field of addresses (or the single field it fell
// back to), unmapping and deduplicating them; errors name the field.
func parseAddrs(raw []string, listField string, single bool, singleField string) ([]netip.Addr, error) {
	var out []netip.Addr
	for i, ip := range raw {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			f := fmt.Sprintf(listField, i)
			if single {
				f = singleField
			}
			return nil, fmt.Errorf("%s: invalid IP address %q", f, ip)
		}
		if a = a.Unmap(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// PodIPs returns the pod's addresses from status.podIPs, falling back to
// status.podIP, unmapped and deduplicated. Unparsable addresses are an error
// naming the field.
func PodIPs(p *corev1.Pod) ([]netip.Addr, error) {
	var raw []string
	for _, ip := range p.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && p.Status.PodIP != "" {
		raw = append(raw, p.Status.PodIP)
	}
	return parseAddrs(raw, "status.podIPs[%d].ip", len(p.Status.PodIPs) == 0, "status.podIP")
}

// Active reports whether a pod takes part in policy: it has an address and
// has not terminated (a terminated pod's address may already be reused).
// HostNetwork pods are active but never enforced and never selected.
func Active(p *corev1.Pod) bool {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	return p.Status.PodIP != "" || len(p.Status.PodIPs) > 0
}

// ContainerPort is one named or unnamed port a pod serves.
type ContainerPort struct {
	Name     string
	Port     uint16
	Protocol corev1.Protocol
}

// Ports lists the pod's container ports, protocol defaulted: those of its
// containers and of its sidecars (init containers with restartPolicy
// Always); a plain init container has finished and serves nothing.
func Ports(p *corev1.Pod) []ContainerPort {
	var out []ContainerPort
	add := func(cs []corev1.Container) {
		for _, c := range cs {
			if isInit := len(p.Spec.InitContainers) > 0 && &cs[0] == &p.Spec.InitContainers[0]; isInit &&
				(c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, cp := range c.Ports {
				proto := cp.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				if cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
					out = append(out, ContainerPort{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: proto})
				}
			}
		}
	}
	add(p.Spec.InitContainers)
	add(p.Spec.Containers)
	return out
}
