package oracle

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Cell is one verdict of an `xdpolicy probe` truth table.
type Cell struct {
	From, To string // namespace/name
	Port     uint16
	Proto    corev1.Protocol
	Allowed  bool
}

func (c Cell) String() string {
	v := "denied"
	if c.Allowed {
		v = "allowed"
	}
	return fmt.Sprintf("%s -> %s %d/%s %s", c.From, c.To, c.Port, c.Proto, v)
}

// ParseTable reads the cells of the truth tables `xdpolicy probe -o table`
// writes (and deploy/examples/*/*/expected.txt hold): per port a header
// "80/TCP   (…)", a line of column labels (pod names, or numbers with a
// legend "  1=ns/a  2=ns/b" after the rows), then one row per source with
// "." for allowed and "X" for denied.
func ParseTable(text string) ([]Cell, error) {
	var out []Cell
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		head := strings.Fields(lines[i])
		if len(head) == 0 {
			continue
		}
		num, proto, ok := strings.Cut(head[0], "/")
		port, err := strconv.ParseUint(num, 10, 16)
		if !ok || err != nil || len(head) < 2 || !strings.HasPrefix(head[1], "(") {
			return nil, fmt.Errorf("line %d: want a header like \"80/TCP   (…)\", got %q", i+1, lines[i])
		}
		if i+1 >= len(lines) {
			return nil, fmt.Errorf("line %d: table without columns", i+1)
		}
		i++
		cols := strings.Fields(lines[i])
		type row struct {
			name  string
			marks []string
		}
		var rows []row
		for i+1 < len(lines) && strings.TrimSpace(lines[i+1]) != "" && !strings.HasPrefix(lines[i+1], "  ") {
			i++
			f := strings.Fields(lines[i])
			if len(f) != len(cols)+1 {
				return nil, fmt.Errorf("line %d: %d marks for %d columns", i+1, len(f)-1, len(cols))
			}
			rows = append(rows, row{f[0], f[1:]})
		}
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "  ") { // legend of numbered columns
			i++
			legend := map[string]string{}
			for _, kv := range strings.Fields(lines[i]) {
				k, v, _ := strings.Cut(kv, "=")
				legend[k] = v
			}
			for j, c := range cols {
				if legend[c] == "" {
					return nil, fmt.Errorf("line %d: column %s not in the legend", i+1, c)
				}
				cols[j] = legend[c]
			}
		}
		for _, r := range rows {
			for j, m := range r.marks {
				if m != "." && m != "X" {
					return nil, fmt.Errorf("table %s row %s: mark %q is neither . nor X", head[0], r.name, m)
				}
				out = append(out, Cell{From: r.name, To: cols[j], Port: uint16(port), Proto: corev1.Protocol(proto), Allowed: m == "."})
			}
		}
	}
	return out, nil
}

// Probe decides a cell between two pods (namespace/name) addressed as
// `xdpolicy probe` addresses them: the destination's first address and the
// source's first address of the same family.
func (o *Oracle) Probe(c Cell) (allowed bool, src, dst netip.Addr, err error) {
	addrs := func(name string) ([]netip.Addr, error) {
		ns, n, _ := strings.Cut(name, "/")
		p, err := o.pods.Pods(ns).Get(n)
		if err != nil {
			return nil, err
		}
		var out []netip.Addr
		for _, ip := range p.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				return nil, fmt.Errorf("pod %s: %w", name, err)
			}
			out = append(out, a)
		}
		return out, nil
	}
	from, err := addrs(c.From)
	if err != nil {
		return false, src, dst, err
	}
	to, err := addrs(c.To)
	if err != nil {
		return false, src, dst, err
	}
	for _, d := range to {
		for _, s := range from {
			if s.Is4() == d.Is4() {
				if c.From == c.To {
					// The pod's own address: looped back inside it.
					return true, s, d, nil
				}
				return o.Allowed(s, d, c.Proto, c.Port), s, d, nil
			}
		}
	}
	return false, src, dst, fmt.Errorf("%s and %s share no address family", c.From, c.To)
}
