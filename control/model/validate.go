package model

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ValidatePolicy checks a defaulted policy the way the API server's
// networking.k8s.io/v1 validation does, for every field the semantics depend
// on. The error lists every problem with its field path.
func ValidatePolicy(p *networkingv1.NetworkPolicy) error {
	return fieldErrs(validatePolicy(p))
}

func validatePolicy(p *networkingv1.NetworkPolicy) field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	if p.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), ""))
	}
	errs = append(errs, validateSelector(&p.Spec.PodSelector, spec.Child("podSelector"))...)
	for i, r := range p.Spec.Ingress {
		path := spec.Child("ingress").Index(i)
		errs = append(errs, validatePorts(r.Ports, path.Child("ports"))...)
		errs = append(errs, validatePeers(r.From, path.Child("from"))...)
	}
	for i, r := range p.Spec.Egress {
		path := spec.Child("egress").Index(i)
		errs = append(errs, validatePorts(r.Ports, path.Child("ports"))...)
		errs = append(errs, validatePeers(r.To, path.Child("to"))...)
	}
	types := spec.Child("policyTypes")
	if len(p.Spec.PolicyTypes) > 2 {
		return append(errs, field.Invalid(types, p.Spec.PolicyTypes, "may not specify more than two policyTypes"))
	}
	for i, t := range p.Spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			errs = append(errs, field.NotSupported(types.Index(i), t, []string{"Ingress", "Egress"}))
		}
	}
	return errs
}

func validateSelector(s *metav1.LabelSelector, path *field.Path) field.ErrorList {
	return metav1validation.ValidateLabelSelector(s, metav1validation.LabelSelectorValidationOptions{}, path)
}

func validatePorts(ports []networkingv1.NetworkPolicyPort, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, p := range ports {
		pp := path.Index(i)
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				errs = append(errs, field.NotSupported(pp.Child("protocol"), *p.Protocol, []string{"TCP", "UDP", "SCTP"}))
			}
		}
		switch {
		case p.Port == nil:
			if p.EndPort != nil {
				errs = append(errs, field.Invalid(pp.Child("endPort"), *p.EndPort, "may not be specified when `port` is not specified"))
			}
		case p.Port.Type == intstr.Int:
			for _, msg := range validation.IsValidPortNum(int(p.Port.IntVal)) {
				errs = append(errs, field.Invalid(pp.Child("port"), p.Port.IntVal, msg))
			}
			if p.EndPort != nil {
				if *p.EndPort < p.Port.IntVal {
					errs = append(errs, field.Invalid(pp.Child("endPort"), *p.EndPort, "must be greater than or equal to `port`"))
				}
				for _, msg := range validation.IsValidPortNum(int(*p.EndPort)) {
					errs = append(errs, field.Invalid(pp.Child("endPort"), *p.EndPort, msg))
				}
			}
		default:
			if p.EndPort != nil {
				errs = append(errs, field.Invalid(pp.Child("endPort"), *p.EndPort, "may not be specified when `port` is non-numeric"))
			}
			for _, msg := range validation.IsValidPortName(p.Port.StrVal) {
				errs = append(errs, field.Invalid(pp.Child("port"), p.Port.StrVal, msg))
			}
		}
	}
	return errs
}

func validatePeers(peers []networkingv1.NetworkPolicyPeer, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, peer := range peers {
		pp := path.Index(i)
		n := 0
		if peer.PodSelector != nil {
			n++
			errs = append(errs, validateSelector(peer.PodSelector, pp.Child("podSelector"))...)
		}
		if peer.NamespaceSelector != nil {
			n++
			errs = append(errs, validateSelector(peer.NamespaceSelector, pp.Child("namespaceSelector"))...)
		}
		if peer.IPBlock != nil {
			n++
			errs = append(errs, validateIPBlock(peer.IPBlock, pp.Child("ipBlock"))...)
		}
		switch {
		case n == 0:
			errs = append(errs, field.Required(pp, "must specify a peer"))
		case n > 1 && peer.IPBlock != nil:
			errs = append(errs, field.Forbidden(pp, "may not specify both ipBlock and another peer"))
		}
	}
	return errs
}

func validateIPBlock(b *networkingv1.IPBlock, path *field.Path) field.ErrorList {
	if b.CIDR == "" {
		return field.ErrorList{field.Required(path.Child("cidr"), "")}
	}
	cidr, err := ParseCIDR(b.CIDR)
	if err != nil {
		return field.ErrorList{field.Invalid(path.Child("cidr"), b.CIDR, err.Error())}
	}
	var errs field.ErrorList
	for i, s := range b.Except {
		ex, err := ParseCIDR(s)
		if err != nil {
			errs = append(errs, field.Invalid(path.Child("except").Index(i), s, err.Error()))
			continue
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || !cidr.Contains(ex.Addr()) || ex.Bits() <= cidr.Bits() {
			errs = append(errs, field.Invalid(path.Child("except").Index(i), s, "must be a strict subset of `cidr`"))
		}
	}
	return errs
}

// ParseCIDR parses an ipBlock CIDR. It accepts host bits set ("10.0.0.1/24")
// and masks them: older API servers stored such CIDRs with only a warning
// (v1.37.2 rejects new ones), so objects stored earlier may have them.
// IPv4-mapped IPv6 prefixes are unmapped.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("must be a valid CIDR such as 10.0.0.0/8 or fd00::/64")
	}
	if a := p.Addr(); a.Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix %s is shorter than /96", s)
		}
		p = netip.PrefixFrom(a.Unmap(), bits)
	}
	return p.Masked(), nil
}

// ValidatePod checks the fields of a pod the compiler reads.
func ValidatePod(p *corev1.Pod) error {
	var errs []error
	if p.Name == "" {
		errs = append(errs, errors.New("metadata.name: Required value"))
	}
	if _, err := PodIPs(p); err != nil {
		errs = append(errs, err)
	}
	for kind, cs := range map[string][]corev1.Container{"initContainers": p.Spec.InitContainers, "containers": p.Spec.Containers} {
		for i, c := range cs {
			for j, cp := range c.Ports {
				switch cp.Protocol {
				case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
				default:
					errs = append(errs, fmt.Errorf("spec.%s[%d].ports[%d].protocol: Unsupported value: %q: supported values: \"TCP\", \"UDP\", \"SCTP\"", kind, i, j, cp.Protocol))
				}
				if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					errs = append(errs, fmt.Errorf("spec.%s[%d].ports[%d].containerPort: Invalid value: %d: must be between 1 and 65535, inclusive", kind, i, j, cp.ContainerPort))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// ValidateService checks the fields of a Service the compiler reads, as the
// API server validates them: the type, and spec.clusterIP / spec.clusterIPs
// ("" while unallocated, "None" for headless, else at most one address per
// family, the first equal to spec.clusterIP).
func ValidateService(s *corev1.Service) error {
	var errs field.ErrorList
	if s.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), ""))
	}
	spec := field.NewPath("spec")
	switch s.Spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
			errs = append(errs, field.Forbidden(spec.Child("clusterIP"), "may not be set for ExternalName services"))
		}
		if len(s.Spec.ClusterIPs) > 0 {
			errs = append(errs, field.Forbidden(spec.Child("clusterIPs"), "may not be set for ExternalName services"))
		}
		return fieldErrs(errs)
	default:
		errs = append(errs, field.NotSupported(spec.Child("type"), s.Spec.Type, []string{"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}))
	}
	if ip := s.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		if _, err := netip.ParseAddr(ip); err != nil {
			errs = append(errs, field.Invalid(spec.Child("clusterIP"), ip, `must be a valid IP address or "None"`))
		}
	}
	ips := spec.Child("clusterIPs")
	if len(s.Spec.ClusterIPs) > 2 {
		errs = append(errs, field.TooMany(ips, len(s.Spec.ClusterIPs), 2))
	}
	if len(s.Spec.ClusterIPs) > 0 && s.Spec.ClusterIP != "" && s.Spec.ClusterIPs[0] != s.Spec.ClusterIP {
		errs = append(errs, field.Invalid(ips.Index(0), s.Spec.ClusterIPs[0], "must match `clusterIP`"))
	}
	var first netip.Addr
	for i, ip := range s.Spec.ClusterIPs {
		if ip == corev1.ClusterIPNone {
			if len(s.Spec.ClusterIPs) > 1 {
				errs = append(errs, field.Invalid(ips.Index(i), ip, `"None" must be the only value`))
			}
			continue
		}
		a, err := netip.ParseAddr(ip)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(ips.Index(i), ip, `must be a valid IP address or "None"`))
		case i == 0:
			first = a.Unmap()
		case first.IsValid() && first.Is4() == a.Unmap().Is4():
			errs = append(errs, field.Invalid(ips.Index(i), ip, "must be of a different IP family than clusterIPs[0]"))
		}
	}
	return fieldErrs(errs)
}

func fieldErrs(errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return errs.ToAggregate()
}
