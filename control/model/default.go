package model

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// DefaultNamespace sets the kubernetes.io/metadata.name label, as the API
// server does on every create and update.
func DefaultNamespace(ns *corev1.Namespace) {
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[NamespaceNameLabel] = ns.Name
}

// DefaultPod defaults what the API server defaults and the compiler reads:
// the namespace and container port protocols.
func DefaultPod(p *corev1.Pod) {
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range cs {
			for j := range cs[i].Ports {
				if cs[i].Ports[j].Protocol == "" {
					cs[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

// DefaultService defaults what the API server defaults and the compiler
// reads: the namespace, the type, and spec.clusterIPs from spec.clusterIP.
func DefaultService(s *corev1.Service) {
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if len(s.Spec.ClusterIPs) == 0 && s.Spec.ClusterIP != "" && s.Spec.Type != corev1.ServiceTypeExternalName {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	}
}

// DefaultPolicy applies the API server's defaulting for
// networking.k8s.io/v1 NetworkPolicy: the namespace, protocol TCP on every
// port, and policyTypes inferred when absent (Ingress always, Egress only
// when egress rules are present).
func DefaultPolicy(p *networkingv1.NetworkPolicy) {
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	tcp := corev1.ProtocolTCP
	for i := range p.Spec.Ingress {
		for j := range p.Spec.Ingress[i].Ports {
			if p.Spec.Ingress[i].Ports[j].Protocol == nil {
				p.Spec.Ingress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	for i := range p.Spec.Egress {
		for j := range p.Spec.Egress[i].Ports {
			if p.Spec.Egress[i].Ports[j].Protocol == nil {
				p.Spec.Egress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	if len(p.Spec.PolicyTypes) == 0 {
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(p.Spec.Egress) > 0 {
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
}

// HasType reports whether the (defaulted) policy applies in direction t.
func HasType(p *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	for _, pt := range p.Spec.PolicyTypes {
		if pt == t {
			return true
		}
	}
	return false
}
