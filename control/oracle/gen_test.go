package oracle_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
)

// gen writes random clusters as the raw JSON a user would send the API
// server: a few labelled namespaces; pods with labels, named and unnamed
// TCP/UDP/SCTP container ports (also in plain init containers, which serve
// nothing), IPv4, IPv6 or dual-stack addresses in either order, some
// hostNetwork (the node's addresses), Pending, without an address, or
// terminated; and networking.k8s.io/v1 NetworkPolicies using every field:
// podSelector and namespaceSelector with matchLabels and all four
// matchExpressions operators, both in one peer, ipBlocks with excepts
// around pod and external addresses (host bits set now and then), numeric,
// ranged and named ports with and without a protocol, absent and empty
// lists, empty rules, policyTypes absent or in either order. A few policies
// are broken in ways the API server rejects.
//
// It is the idea of control/compile's generator written anew over raw
// objects; nothing in it is shared with the code under test.
type gen struct {
	r    *rand.Rand
	seed uint64

	nsNames   []string
	podIPs    []netip.Addr   // addresses of running or pending pods
	running   [][]netip.Addr // address sets of running pods, for reuse by terminated ones
	endPorts  []int          // ends of generated port ranges: flows probe around them
	rangeLows []int
}

type nodeAddrs struct{ v4, v6 netip.Addr }

var (
	nodes = []nodeAddrs{
		{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00:ff::1")},
		{netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("fd00:ff::2")},
	}
	externals = []netip.Addr{
		netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.0.1.250"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fd00::1:ff"),
	}
	nsLabelKeys  = []string{"team", "env", "tier"}
	podLabelKeys = []string{"app", "role", "ver"}
	labelValues  = []string{"a", "b", "c", ""}
	portNames    = []string{"http", "dns", "metrics", "grpc", "sctp-x", "nope"}
	portNumbers  = []int{53, 80, 81, 443, 5000, 5001, 5002, 8080, 9090}
	protocols    = []string{"TCP", "UDP", "SCTP"}
)

const nsNameLabel = "kubernetes.io/metadata.name"

func newGen(seed uint64) *gen {
	return &gen{r: rand.New(rand.NewPCG(seed, 0x6f7261636c65)), seed: seed}
}

func (g *gen) chance(pct int) bool    { return g.r.IntN(100) < pct }
func (g *gen) pick(n int) int         { return g.r.IntN(n) }
func (g *gen) between(lo, hi int) int { return lo + g.r.IntN(hi-lo+1) }
func pickOf[T any](g *gen, xs []T) T  { return xs[g.pick(len(xs))] }

func mustJSON(v map[string]any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// obj builds a JSON object from key, value pairs.
func obj(kv ...any) map[string]any {
	m := map[string]any{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func list(xs ...map[string]any) []any {
	out := []any{}
	for _, x := range xs {
		out = append(out, x)
	}
	return out
}

func strs(xs ...string) []any {
	out := []any{}
	for _, x := range xs {
		out = append(out, x)
	}
	return out
}

// cluster returns the documents of one cluster: namespaces, pods, policies.
func (g *gen) cluster() (docs [][]byte) {
	for i := range g.between(3, 5) {
		name := fmt.Sprintf("s%d-n%d", g.seed, i)
		g.nsNames = append(g.nsNames, name)
		meta := obj("name", name)
		lbls := g.labels(nsLabelKeys)
		if g.chance(10) {
			// The API server owns this label: it overwrites the value.
			lbls[nsNameLabel] = "spoofed"
		}
		if len(lbls) > 0 || g.chance(20) {
			meta["labels"] = lbls
		}
		docs = append(docs, mustJSON(obj("apiVersion", "v1", "kind", "Namespace", "metadata", meta)))
	}
	for i := range g.between(12, 28) {
		docs = append(docs, mustJSON(g.pod(i)))
	}
	for i := range g.between(2, 8) {
		docs = append(docs, mustJSON(g.policy(i)))
	}
	return docs
}

func (g *gen) labels(keys []string) map[string]any {
	m := map[string]any{}
	for _, k := range keys {
		if g.chance(60) {
			m[k] = pickOf(g, labelValues[:3])
			if g.chance(5) {
				m[k] = ""
			}
		}
	}
	return m
}

func (g *gen) pod(i int) map[string]any {
	meta := obj("name", fmt.Sprintf("p%d", i), "namespace", pickOf(g, g.nsNames))
	if l := g.labels(podLabelKeys); len(l) > 0 {
		meta["labels"] = l
	}
	spec := obj("nodeName", fmt.Sprintf("n%d", g.pick(len(nodes))+1))
	status := obj()
	var ips []netip.Addr
	switch k := g.pick(100); {
	case k < 10: // hostNetwork: the node's addresses
		spec["hostNetwork"] = true
		n := nodes[spec["nodeName"].(string)[1]-'1']
		ips = []netip.Addr{n.v4}
		if g.chance(50) {
			ips = append(ips, n.v6)
		}
		status["phase"] = "Running"
	case k < 16: // not started: no address yet
		status["phase"] = "Pending"
	case k < 24: // terminated: no address, or one a running pod has taken
		// since (a terminated pod whose address nobody took is left
		// out, see TestOracle).
		status["phase"] = pickOf(g, []string{"Succeeded", "Failed"})
		if len(g.running) > 0 && g.chance(70) {
			ips = pickOf(g, g.running)
		}
	default:
		v4 := netip.AddrFrom4([4]byte{10, 0, byte(i % 4), byte(10 + i)})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i % 4), 15: byte(10 + i)})
		switch k := g.pick(10); {
		case k < 4:
			ips = []netip.Addr{v4}
		case k < 6:
			ips = []netip.Addr{v6}
		case k < 8:
			ips = []netip.Addr{v4, v6}
		default:
			ips = []netip.Addr{v6, v4}
		}
		g.podIPs = append(g.podIPs, ips...)
		status["phase"] = "Running"
		if g.chance(10) {
			status["phase"] = "Pending"
		} else {
			g.running = append(g.running, ips)
		}
	}
	if len(ips) > 0 {
		status["podIP"] = ips[0].String()
		var podIPs []map[string]any
		for _, a := range ips {
			podIPs = append(podIPs, obj("ip", a.String()))
		}
		status["podIPs"] = list(podIPs...)
	}
	// Container ports: names unique in the pod, (port, protocol) unique
	// per container, as the API server wants (it is left to reject the
	// rare clash the generator lets through).
	ctrs := []map[string]any{obj("name", "main", "image", "img")}
	if g.chance(30) {
		ctrs = append(ctrs, obj("name", "second", "image", "img"))
	}
	var init map[string]any
	if g.chance(15) {
		// A plain init container has finished: its ports serve nothing.
		init = obj("name", "init", "image", "img")
	}
	usedName := map[string]bool{}
	usedPort := map[string]bool{}
	for range g.between(0, 4) {
		cp := obj("containerPort", pickOf(g, portNumbers))
		proto := pickOf(g, protocols)
		if g.chance(20) {
			proto = "TCP" // defaulted by the server
		} else {
			cp["protocol"] = proto
		}
		name := ""
		if g.chance(80) {
			name = pickOf(g, portNames[:5])
			cp["name"] = name
		}
		key := fmt.Sprint(cp["containerPort"], proto)
		if (usedPort[key] || (name != "" && usedName[name])) && !g.chance(3) {
			continue
		}
		usedPort[key] = true
		usedName[name] = name != ""
		c := ctrs[0]
		switch k := g.pick(10); {
		case k == 0 && init != nil:
			c = init
		case k < 4:
			c = ctrs[len(ctrs)-1]
		}
		ports, _ := c["ports"].([]any)
		c["ports"] = append(ports, cp)
	}
	spec["containers"] = list(ctrs...)
	if init != nil {
		spec["initContainers"] = list(init)
	}
	return obj("apiVersion", "v1", "kind", "Pod", "metadata", meta, "spec", spec, "status", status)
}

func (g *gen) selector(keys []string, values func(key string) string) map[string]any {
	s := obj()
	if g.chance(5) {
		s["matchLabels"] = obj() // present but empty
	}
	for range g.between(0, 2) {
		key := pickOf(g, keys)
		if g.chance(50) {
			ml, _ := s["matchLabels"].(map[string]any)
			if ml == nil {
				ml = obj()
				s["matchLabels"] = ml
			}
			ml[key] = values(key)
			continue
		}
		req := obj("key", key, "operator", pickOf(g, []string{"In", "NotIn", "Exists", "DoesNotExist"}))
		if op := req["operator"]; op == "In" || op == "NotIn" {
			var vs []string
			for range g.between(1, 2) {
				if v := values(key); !slices.Contains(vs, v) {
					vs = append(vs, v)
				}
			}
			req["values"] = strs(vs...)
		}
		me, _ := s["matchExpressions"].([]any)
		s["matchExpressions"] = append(me, req)
	}
	return s
}

func (g *gen) podSelector() map[string]any {
	return g.selector(podLabelKeys, func(string) string { return pickOf(g, labelValues) })
}

func (g *gen) nsSelector() map[string]any {
	return g.selector(append([]string{nsNameLabel}, nsLabelKeys...), func(k string) string {
		if k == nsNameLabel {
			if g.chance(10) {
				return "spoofed"
			}
			return pickOf(g, g.nsNames)
		}
		return pickOf(g, labelValues)
	})
}

func (g *gen) policy(i int) map[string]any {
	spec := obj("podSelector", obj())
	if g.chance(60) {
		spec["podSelector"] = g.podSelector()
	}
	switch g.pick(9) {
	case 0:
		spec["policyTypes"] = strs("Ingress")
	case 1:
		spec["policyTypes"] = strs("Egress")
	case 2:
		spec["policyTypes"] = strs("Ingress", "Egress")
	case 3:
		spec["policyTypes"] = strs("Egress", "Ingress")
	case 4:
		spec["policyTypes"] = []any{} // defaulted as if absent
	case 5:
		t := pickOf(g, []string{"Ingress", "Egress"})
		spec["policyTypes"] = strs(t, t) // accepted as it is
	}
	for _, dir := range []string{"ingress", "egress"} {
		peers := "from"
		if dir == "egress" {
			peers = "to"
		}
		// Rule lists: absent, empty, or 1-3 rules (empty ones too).
		if k := g.pick(5); k > 0 {
			rules := []any{}
			for range k - 1 {
				r := obj()
				if p := g.peers(); p != nil {
					r[peers] = p
				}
				if p := g.ports(); p != nil {
					r["ports"] = p
				}
				rules = append(rules, r)
			}
			spec[dir] = rules
		}
	}
	if g.chance(5) {
		g.breakPolicy(spec)
	}
	meta := obj("name", fmt.Sprintf("np%d", i), "namespace", pickOf(g, g.nsNames))
	return obj("apiVersion", "networking.k8s.io/v1", "kind", "NetworkPolicy", "metadata", meta, "spec", spec)
}

// peers returns nil (absent), an empty list, or 1-3 peers.
func (g *gen) peers() []any {
	switch g.pick(6) {
	case 0:
		return nil
	case 1:
		return []any{}
	}
	var out []any
	for range g.between(1, 3) {
		switch g.pick(4) {
		case 0:
			out = append(out, obj("podSelector", g.podSelector()))
		case 1:
			out = append(out, obj("namespaceSelector", g.nsSelector()))
		case 2:
			out = append(out, obj("podSelector", g.podSelector(), "namespaceSelector", g.nsSelector()))
		case 3:
			out = append(out, obj("ipBlock", g.ipBlock()))
		}
	}
	return out
}

// ipBlock picks a CIDR around a pod, node or external address (or a
// default route) and excepts strictly inside it around other addresses.
func (g *gen) ipBlock() map[string]any {
	all := slices.Concat(g.podIPs, externals, []netip.Addr{nodes[0].v4, nodes[0].v6, nodes[1].v4, nodes[1].v6})
	var cidr netip.Prefix
	if g.chance(10) || len(all) == 0 {
		cidr = pickOf(g, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")})
	} else {
		a := pickOf(g, all)
		bits := pickOf(g, []int{8, 16, 22, 24, 30, 32})
		if a.Is6() {
			bits = pickOf(g, []int{8, 64, 112, 120, 126, 128})
		}
		cidr = netip.PrefixFrom(a, bits)
	}
	b := obj("cidr", cidr.Masked().String())
	switch k := g.pick(100); {
	case k < 3:
		b["cidr"] = cidr.String() // host bits set: rejected since 1.33's strict validation
	case k < 8:
		b["cidr"] = strings.ToUpper(expand(cidr.Masked())) // accepted as written
	}
	var except []string
	for range g.pick(3) {
		var inside []netip.Addr
		for _, a := range all {
			if cidr.Masked().Contains(a) {
				inside = append(inside, a)
			}
		}
		if len(inside) == 0 || cidr.Bits() == cidr.Addr().BitLen() {
			break
		}
		a := pickOf(g, inside)
		except = append(except, netip.PrefixFrom(a, g.between(cidr.Bits()+1, a.BitLen())).Masked().String())
	}
	if except != nil {
		b["except"] = strs(except...)
	}
	return b
}

// expand writes an IPv6 prefix without "::" (fd00:0:0:0:0:0:0:0/8), which
// the API server accepts and stores as written.
func expand(p netip.Prefix) string {
	if p.Addr().Is4() {
		return p.String()
	}
	b := p.Addr().As16()
	var parts []string
	for i := 0; i < 16; i += 2 {
		parts = append(parts, fmt.Sprintf("%x", uint16(b[i])<<8|uint16(b[i+1])))
	}
	return fmt.Sprintf("%s/%d", strings.Join(parts, ":"), p.Bits())
}

// ports returns nil (absent), an empty list, or 1-3 ports.
func (g *gen) ports() []any {
	switch g.pick(5) {
	case 0:
		return nil
	case 1:
		return []any{}
	}
	var out []any
	for range g.between(1, 3) {
		pp := obj()
		if !g.chance(25) {
			pp["protocol"] = pickOf(g, protocols)
		}
		switch g.pick(5) {
		case 0: // every port of the protocol
		case 1, 2:
			pp["port"] = pickOf(g, portNumbers)
		case 3:
			lo := pickOf(g, portNumbers)
			hi := min(lo+g.pick(3000), 65535)
			pp["port"], pp["endPort"] = lo, hi
			g.rangeLows = append(g.rangeLows, lo)
			g.endPorts = append(g.endPorts, hi)
		case 4:
			pp["port"] = pickOf(g, portNames)
		}
		out = append(out, pp)
	}
	return out
}

// breakPolicy makes a policy invalid in one of the ways the API server
// rejects.
func (g *gen) breakPolicy(spec map[string]any) {
	var bad map[string]any
	switch g.pick(12) {
	case 9:
		bad = obj("from", list(obj())) // a peer without selector or ipBlock
	case 10:
		bad = obj("from", list(obj("ipBlock", obj("cidr", "::ffff:10.0.0.0/104")))) // IPv4-mapped
	case 11:
		bad = obj("from", list(obj("ipBlock", obj("cidr", "010.0.0.0/8")))) // leading zero
	case 0:
		bad = obj("ports", list(obj("port", 80, "endPort", 79)))
	case 1:
		bad = obj("from", list(obj("ipBlock", obj("cidr", "10.0.0.0/33"))))
	case 2:
		bad = obj("from", list(obj("ipBlock", obj("cidr", "10.0.0.0/16", "except", strs("10.1.0.0/24")))))
	case 3:
		bad = obj("from", list(obj("ipBlock", obj("cidr", "10.0.0.0/16"), "podSelector", obj())))
	case 4:
		bad = obj("from", list(obj("podSelector", obj("matchExpressions", list(obj("key", "app", "operator", "In")))))) // In without values
	case 5:
		bad = obj("ports", list(obj("protocol", "ICMP")))
	case 6:
		bad = obj("ports", list(obj("port", "http", "endPort", 90)))
	case 7:
		bad = obj("ports", list(obj("port", "80"))) // a number as a string is a (bad) port name
	case 8:
		spec["policyTypes"] = strs("Ingress", "Sideways")
		return
	}
	rules, _ := spec["ingress"].([]any)
	spec["ingress"] = append(rules, bad)
}

// flowPorts are the ports flows are tried on: every port number the
// generator uses, both ends of every range and the ports just outside them,
// and a random one.
func (g *gen) flowPorts() []uint16 {
	set := map[int]bool{}
	for _, p := range portNumbers {
		set[p] = true
	}
	for _, p := range g.endPorts {
		set[p], set[min(p+1, 65535)] = true, true
	}
	for _, p := range g.rangeLows {
		set[max(p-1, 1)] = true
	}
	set[g.between(1, 65535)] = true
	var out []uint16
	for p := range set {
		out = append(out, uint16(p))
	}
	slices.Sort(out)
	return out
}
