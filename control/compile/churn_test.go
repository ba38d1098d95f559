package compile_test

import (
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// churn is a random cluster kept by name and changed by random events,
// each applied to a compile.Compiler (the cluster is then compiled from
// scratch to check it).
type churn struct {
	g    *gen
	r    *rand.Rand
	nss  map[string]*corev1.Namespace
	pods map[string]*corev1.Pod
	pols map[string]*networkingv1.NetworkPolicy
	svcs map[string]*corev1.Service
	// gone are pods deleted, whose names may come back.
	gone                  []string
	nextPod, nextPol      int
	nextNS, nextSvc, step int
	svcIPs                []netip.Addr // every ClusterIP ever used
}

func newChurn(seed uint64) (*churn, *model.Cluster) {
	r := rand.New(rand.NewPCG(seed, 77))
	g := &gen{r: r, invalid: true}
	c := g.cluster()
	s := &churn{g: g, r: r, nss: map[string]*corev1.Namespace{}, pods: map[string]*corev1.Pod{},
		pols: map[string]*networkingv1.NetworkPolicy{}, svcs: map[string]*corev1.Service{},
		nextPod: len(c.Pods), nextPol: len(c.Policies), nextNS: len(c.Namespaces)}
	for _, ns := range c.Namespaces {
		s.nss[ns.Name] = ns
	}
	for _, p := range c.Pods {
		s.pods[key(p)] = p
	}
	for _, p := range c.Policies {
		s.pols[key(p)] = p
	}
	for range 2 {
		// Pods inside ipBlocks by address (see namedBlockPolicy), from
		// the start, so that the compiler indexes pod addresses.
		o := s.namedBlockPolicy()
		s.pols[key(o)] = o
		c.Policies = append(c.Policies, o)
	}
	for range 3 {
		ch := s.addService()
		s.svcs[key(ch.Service)] = ch.Service
		c.Services = append(c.Services, ch.Service)
	}
	c.Complete()
	return s, c
}

func key[T interface {
	GetNamespace() string
	GetName() string
}](o T) string {
	return o.GetNamespace() + "/" + o.GetName()
}

// cluster is the current state, sorted as the sources sort it.
func (s *churn) cluster() *model.Cluster {
	c := &model.Cluster{
		Namespaces: slices.Collect(maps.Values(s.nss)),
		Pods:       slices.Collect(maps.Values(s.pods)),
		Policies:   slices.Collect(maps.Values(s.pols)),
		Services:   slices.Collect(maps.Values(s.svcs)),
	}
	c.Complete()
	return c
}

// pick returns a random key of m ("" if m is empty).
func pick[V any](s *churn, m map[string]V) string {
	if len(m) == 0 {
		return ""
	}
	keys := slices.Sorted(maps.Keys(m))
	return keys[s.r.IntN(len(keys))]
}

// addrs returns pod addresses: fresh ones, another (maybe deleted) pod's,
// one family of them, or none (not yet assigned).
func (s *churn) addrs() []netip.Addr {
	var v4, v6 netip.Addr
	if s.r.IntN(4) == 0 && len(s.g.podIPs) > 0 {
		// Reuse: an address some pod had (two pods may then claim it).
		a := pickOf(s.g, s.g.podIPs)
		if a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	} else {
		i := s.nextPod
		s.nextPod++
		v4 = netip.AddrFrom4([4]byte{10, 0, byte(i % 4), byte(10 + i)})
		v6 = netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i % 4), 15: byte(10 + i)})
		s.g.podIPs = append(s.g.podIPs, v4, v6)
	}
	var out []netip.Addr
	switch s.r.IntN(10) {
	case 0:
		return nil
	case 1, 2, 3:
		out = []netip.Addr{v4}
	case 4, 5:
		out = []netip.Addr{v6}
	default:
		out = []netip.Addr{v4, v6}
	}
	return slices.DeleteFunc(out, func(a netip.Addr) bool { return !a.IsValid() })
}

func setAddrs(p *corev1.Pod, ips []netip.Addr) {
	p.Status.PodIP, p.Status.PodIPs = "", nil
	for i, a := range ips {
		if i == 0 {
			p.Status.PodIP = a.String()
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
}

// podChange returns a copy of a random pod to change, or nil.
func (s *churn) podChange() *corev1.Pod {
	k := pick(s, s.pods)
	if k == "" {
		return nil
	}
	return s.pods[k].DeepCopy()
}

func (s *churn) addService() compile.Change {
	o := &corev1.Service{}
	o.Namespace, o.Name = pickOf(s.g, s.g.nsNames), fmt.Sprintf("svc%d", s.nextSvc)
	s.nextSvc++
	switch s.r.IntN(6) {
	case 0:
		o.Spec.ClusterIP = corev1.ClusterIPNone
	default:
		// A small pool, so that Services share addresses now and then.
		n := byte(s.r.IntN(12))
		for _, a := range []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, n}), netip.AddrFrom16([16]byte{0xfd, 0x96, 15: n})}[:1+s.r.IntN(2)] {
			o.Spec.ClusterIPs = append(o.Spec.ClusterIPs, a.String())
			s.svcIPs = append(s.svcIPs, a)
		}
	}
	model.DefaultService(o)
	return compile.Change{Service: o}
}

// event makes one random change (nil when the chosen kind has nothing to
// change) and records it in s.
func (s *churn) event(kind string) []compile.Change {
	g := s.g
	switch kind {
	case "pod-add":
		o := g.pod(s.nextPod)
		s.nextPod++
		if len(s.gone) > 0 && s.r.IntN(4) == 0 {
			// A pod of that name again (a StatefulSet's).
			ns, name, _ := strings.Cut(s.gone[s.r.IntN(len(s.gone))], "/")
			o.Namespace, o.Name = ns, name
		}
		if _, ok := s.pods[key(o)]; ok {
			return nil
		}
		model.DefaultPod(o)
		return []compile.Change{{Pod: o}}
	case "pod-delete":
		o := s.podChange()
		if o == nil {
			return nil
		}
		return []compile.Change{{Pod: o, Delete: true}}
	case "pod-ip":
		o := s.podChange()
		if o == nil || o.Spec.HostNetwork {
			return nil
		}
		setAddrs(o, s.addrs())
		return []compile.Change{{Pod: o}}
	case "pod-phase":
		o := s.podChange()
		if o == nil {
			return nil
		}
		if o.Status.Phase == corev1.PodRunning {
			o.Status.Phase = pickOf(g, []corev1.PodPhase{corev1.PodSucceeded, corev1.PodFailed})
		} else {
			o.Status.Phase = corev1.PodRunning
		}
		return []compile.Change{{Pod: o}}
	case "pod-relabel":
		o := s.podChange()
		if o == nil {
			return nil
		}
		o.Labels = g.labels(podLabelKeys)
		if s.r.IntN(4) == 0 {
			if o.Labels == nil {
				o.Labels = map[string]string{}
			}
			o.Labels["ver"] = fmt.Sprintf("v%d", s.step) // an identity no pod had
		}
		return []compile.Change{{Pod: o}}
	case "pod-replace": // everything but the name: ports, hostNetwork, node
		o := s.podChange()
		if o == nil {
			return nil
		}
		n := g.pod(s.nextPod)
		s.nextPod++
		n.Namespace, n.Name = o.Namespace, o.Name
		model.DefaultPod(n)
		return []compile.Change{{Pod: n}}
	case "pod-node":
		o := s.podChange()
		if o == nil {
			return nil
		}
		o.Spec.NodeName = fmt.Sprintf("node-%d", s.r.IntN(3))
		return []compile.Change{{Pod: o}}
	case "pod-same": // a new object with nothing the compiler reads changed
		o := s.podChange()
		if o == nil {
			return nil
		}
		o.ResourceVersion = fmt.Sprint(s.step)
		return []compile.Change{{Pod: o}}
	case "ns-add":
		o := &corev1.Namespace{}
		o.Name = fmt.Sprintf("ns%d", s.nextNS)
		s.nextNS++
		if s.r.IntN(3) == 0 {
			// A namespace whose object had gone (or never came) while
			// it had pods.
			for _, k := range slices.Sorted(maps.Keys(s.pods)) {
				if ns := s.pods[k].Namespace; s.nss[ns] == nil {
					o.Name = ns
					break
				}
			}
		}
		if _, ok := s.nss[o.Name]; ok {
			return nil
		}
		o.Labels = g.labels(nsLabelKeys)
		model.DefaultNamespace(o)
		if !slices.Contains(g.nsNames, o.Name) {
			g.nsNames = append(g.nsNames, o.Name)
		}
		return []compile.Change{{Namespace: o}}
	case "ns-delete":
		k := pick(s, s.nss)
		if k == "" {
			return nil
		}
		return []compile.Change{{Namespace: s.nss[k], Delete: true}}
	case "ns-relabel":
		k := pick(s, s.nss)
		if k == "" {
			return nil
		}
		o := s.nss[k].DeepCopy()
		o.Labels = g.labels(nsLabelKeys)
		model.DefaultNamespace(o)
		return []compile.Change{{Namespace: o}}
	case "svc-add":
		return []compile.Change{s.addService()}
	case "svc-delete":
		k := pick(s, s.svcs)
		if k == "" {
			return nil
		}
		return []compile.Change{{Service: s.svcs[k], Delete: true}}
	case "policy-add":
		o := g.policy(s.nextPol)
		s.nextPol++
		model.DefaultPolicy(o)
		return []compile.Change{{Policy: o}}
	case "policy-named-block":
		return []compile.Change{{Policy: s.namedBlockPolicy()}}
	case "policy-update":
		k := pick(s, s.pols)
		if k == "" {
			return nil
		}
		o := g.policy(s.nextPol)
		s.nextPol++
		o.Namespace, o.Name = s.pols[k].Namespace, s.pols[k].Name
		model.DefaultPolicy(o)
		return []compile.Change{{Policy: o}}
	case "policy-delete":
		k := pick(s, s.pols)
		if k == "" {
			return nil
		}
		return []compile.Change{{Policy: s.pols[k], Delete: true}}
	}
	panic("unknown event " + kind)
}

// namedBlockPolicy makes a policy whose egress clauses list pods by
// address: a named port resolved on the pods inside an ipBlock that its
// selectors do not pick.
func (s *churn) namedBlockPolicy() *networkingv1.NetworkPolicy {
	g := s.g
	o := g.policy(s.nextPol)
	s.nextPol++
	a := pickOf(g, g.podIPs)
	bits := 16
	if a.Is6() {
		bits = 112
	}
	block := &networkingv1.IPBlock{CIDR: netip.PrefixFrom(a, bits).Masked().String()}
	if s.r.IntN(3) == 0 {
		block.Except = []string{netip.PrefixFrom(a, bits+8).Masked().String()}
	}
	to := []networkingv1.NetworkPolicyPeer{{IPBlock: block}}
	switch s.r.IntN(3) {
	case 0:
		to = append(to, networkingv1.NetworkPolicyPeer{NamespaceSelector: g.nsSelector()})
	case 1:
		to = append(to, networkingv1.NetworkPolicyPeer{PodSelector: g.selector(podLabelKeys)})
	}
	proto := pickOf(g, protocols)
	name := intstr.FromString(pickOf(g, portNames[:5]))
	o.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	o.Spec.Ingress = nil
	o.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: to, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &proto, Port: &name}}}}
	model.DefaultPolicy(o)
	return o
}

// record applies changes to the state.
func (s *churn) record(chs []compile.Change) {
	for _, ch := range chs {
		switch {
		case ch.Pod != nil && ch.Delete:
			delete(s.pods, key(ch.Pod))
			s.gone = append(s.gone, key(ch.Pod))
		case ch.Pod != nil:
			s.pods[key(ch.Pod)] = ch.Pod
		case ch.Namespace != nil && ch.Delete:
			delete(s.nss, ch.Namespace.Name)
		case ch.Namespace != nil:
			s.nss[ch.Namespace.Name] = ch.Namespace
		case ch.Policy != nil && ch.Delete:
			delete(s.pols, key(ch.Policy))
		case ch.Policy != nil:
			s.pols[key(ch.Policy)] = ch.Policy
		case ch.Service != nil && ch.Delete:
			delete(s.svcs, key(ch.Service))
		case ch.Service != nil:
			s.svcs[key(ch.Service)] = ch.Service
		}
	}
}

var churnKinds = []string{
	"pod-add", "pod-delete", "pod-ip", "pod-phase", "pod-relabel", "pod-replace", "pod-node", "pod-same",
	"ns-add", "ns-delete", "ns-relabel", "svc-add", "svc-delete", "policy-add", "policy-named-block", "policy-update", "policy-delete",
}

// peers are the addresses verdicts are checked for: every address a pod
// has or had, nodes, external hosts, the edges of every ipBlock and
// except, and the ClusterIPs.
func (s *churn) peers(c *model.Cluster) []netip.Addr {
	out := slices.Clone(s.g.podIPs)
	out = append(out, externals...)
	out = append(out, s.svcIPs...)
	for _, p := range c.Policies {
		var blocks []*networkingv1.IPBlock
		for _, r := range p.Spec.Ingress {
			for _, peer := range r.From {
				blocks = append(blocks, peer.IPBlock)
			}
		}
		for _, r := range p.Spec.Egress {
			for _, peer := range r.To {
				blocks = append(blocks, peer.IPBlock)
			}
		}
		for _, b := range blocks {
			if b == nil {
				continue
			}
			for _, cidr := range append([]string{b.CIDR}, b.Except...) {
				if pf, err := netip.ParsePrefix(cidr); err == nil {
					pf = pf.Masked()
					out = append(out, pf.Addr(), pf.Addr().Next(), lastAddr(pf))
				}
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// allPorts are the ports verdicts are checked on: every container port
// number (so named ports resolve) on each protocol, a port no pod serves,
// and ICMP.
func allPorts() []protoPort {
	var out []protoPort
	for _, n := range portNumbers {
		for _, pr := range []ruleset.Proto{ruleset.TCP, ruleset.UDP, ruleset.SCTP} {
			out = append(out, protoPort{pr, uint16(n)})
		}
	}
	return append(out, protoPort{ruleset.TCP, 3000}, protoPort{1, 0})
}

var churnSeeds = flag.Int("churn.seeds", 8, "TestChurn: number of random sequences (400 events each)")

// TestChurn applies random sequences of single-object changes of every
// kind (and now and then several at once, as the agent does) and checks
// the ruleset after each against a full compile of the changed cluster:
// the same pods, address owners, Service addresses and verdicts, for every
// pod, direction and peer on three random ports each (every port every
// 25th event). The previous ruleset is checked again against its own full
// compile now and then: changes copy, they never write to a published
// snapshot. Half the seeds compact (compile from scratch) very often.
func TestChurn(t *testing.T) {
	seeds, events := uint64(*churnSeeds), 400
	all := allPorts()
	total := 0
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			if seed%2 == 1 {
				defer compile.SetCompactSlack(8)()
			}
			s, c0 := newChurn(seed)
			pr := rand.New(rand.NewPCG(seed, 99)) // the ports checked; s.r makes the events
			var c compile.Compiler
			got, _ := c.Compile(c0)
			var prevGot, prevWant *ruleset.Ruleset
			var prevPeers []netip.Addr
			counts := map[string]int{}
			for s.step = 0; s.step < events; s.step++ {
				var chs []compile.Change
				var kinds []string
				for n := 1 + s.r.IntN(4)*min(1, s.r.IntN(10)/9); len(chs) < n; {
					kind := pickOf(s.g, churnKinds)
					ev := s.event(kind)
					if ev == nil {
						continue
					}
					if slices.ContainsFunc(chs, func(ch compile.Change) bool { return sameObject(ch, ev[0]) }) {
						continue // one change per object in a batch, as the agent makes them
					}
					chs, kinds = append(chs, ev...), append(kinds, kind)
					s.record(ev)
				}
				var problems []compile.Problem
				var err error
				if got, problems, err = c.Apply(chs...); err != nil {
					t.Fatal(err)
				}
				cl := s.cluster()
				want, wantProblems := compile.Compile(cl)
				peers := s.peers(cl)
				ports := func(int) []protoPort {
					return []protoPort{all[pr.IntN(len(all))], all[pr.IntN(len(all))], all[pr.IntN(len(all))]}
				}
				if s.step%25 == 0 {
					ports = func(int) []protoPort { return all }
				}
				if bad := compareRulesets(t, got, want, peers, ports); bad > 0 || len(problems) != len(wantProblems) {
					t.Fatalf("step %d (%v): %d differences; %d problems, full compile %d", s.step, chs, bad, len(problems), len(wantProblems))
				}
				if prevGot != nil && s.step%10 == 0 {
					if bad := compareRulesets(t, prevGot, prevWant, prevPeers, ports); bad > 0 {
						t.Fatalf("step %d (%v) changed the previous ruleset: %d differences", s.step, chs, bad)
					}
				}
				prevGot, prevWant, prevPeers = got, want, peers
				for _, k := range kinds {
					counts[k]++
				}
			}
			t.Logf("events %v, recompiles %d", counts, c.Recompiles())
			for _, k := range churnKinds {
				if counts[k] == 0 {
					t.Errorf("no %s event", k)
				}
				total += counts[k]
			}
		})
	}
	t.Logf("%d changes", total)
}

func sameObject(a, b compile.Change) bool {
	switch {
	case a.Pod != nil && b.Pod != nil:
		return key(a.Pod) == key(b.Pod)
	case a.Namespace != nil && b.Namespace != nil:
		return a.Namespace.Name == b.Namespace.Name
	case a.Policy != nil && b.Policy != nil:
		return key(a.Policy) == key(b.Policy)
	case a.Service != nil && b.Service != nil:
		return key(a.Service) == key(b.Service)
	}
	return false
}
