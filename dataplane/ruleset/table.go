package ruleset

import (
	"math/bits"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/gaissmai/bart"
)

// Clause is one bit of a table: a rule of a policy, or the part of a rule
// that admits one named port resolved to one number.
type Clause struct {
	Policy int32 // index into Ruleset.Policies
	Rule   int32 // index into the policy's ingress or egress rule list
	// NamedPort is "name=port/PROTO" when the clause stands for a named
	// port of the rule resolved on the destination pod, else "".
	NamedPort string
}

// Bits is a set of clause indices.
type Bits []uint64

// Has reports whether clause i is in the set.
func (b Bits) Has(i int) bool { return i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

func (b Bits) set(i int) { b[i/64] |= 1 << (i % 64) }

func (b Bits) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
}

// Indices lists the set bits (allocates; for explanations, not the hot path).
func (b Bits) Indices() []int32 {
	var out []int32
	for i, w := range b {
		for w != 0 {
			out = append(out, int32(i*64+bits.TrailingZeros64(w)))
			w &= w - 1
		}
	}
	return out
}

// Table is the compiled classifier of one enforcement point kind: the union
// of the rules, in one direction, of one set of policies (for ingress, also
// with one resolution of the named ports they use). It is shared by every
// pod with that policy set.
type Table struct {
	Dir Direction
	// Policies are the policies that select this table's pods in Dir.
	Policies []int32
	Clauses  []Clause
	peers    *bart.Table[Bits]
	ports    [4]portTable // TCP, UDP, SCTP, other protocols
}

// portTable maps a port to the clauses admitting it: bits[i] holds for the
// ports from lo[i] up to lo[i+1]-1.
type portTable struct {
	lo   []uint16
	bits []Bits
}

func (pt *portTable) lookup(port uint16) Bits {
	if len(pt.lo) == 0 {
		return nil
	}
	i, j := 0, len(pt.lo)
	for j-i > 1 {
		m := int(uint(i+j) >> 1)
		if pt.lo[m] <= port {
			i = m
		} else {
			j = m
		}
	}
	return pt.bits[i]
}

// Match returns the first clause admitting the flow, or -1. It never
// allocates.
func (t *Table) Match(peer netip.Addr, proto Proto, port uint16) int32 {
	pb := t.ports[protoIndex(proto)].lookup(port)
	if pb == nil {
		return -1
	}
	ab, ok := t.peers.Lookup(peer.Unmap())
	if !ok {
		return -1
	}
	n := min(len(ab), len(pb))
	for i := 0; i < n; i++ {
		if x := ab[i] & pb[i]; x != 0 {
			return int32(i*64 + bits.TrailingZeros64(x))
		}
	}
	return -1
}

// PeerClauses is the set of clauses whose peers include addr, whatever the
// port (for explanations).
func (t *Table) PeerClauses(addr netip.Addr) Bits {
	b, _ := t.peers.Lookup(addr.Unmap())
	return b
}

// PortClauses is the set of clauses whose ports include (proto, port),
// whatever the peer (for explanations).
func (t *Table) PortClauses(proto Proto, port uint16) Bits {
	return t.ports[protoIndex(proto)].lookup(port)
}

// Matches lists every clause admitting the flow (allocates).
func (t *Table) Matches(peer netip.Addr, proto Proto, port uint16) []int32 {
	a, p := t.PeerClauses(peer), t.PortClauses(proto, port)
	var out []int32
	for _, i := range a.Indices() {
		if p.Has(int(i)) {
			out = append(out, i)
		}
	}
	return out
}

// Entries reports how many prefixes the peer trie holds.
func (t *Table) Entries() int { return t.peers.Size() }

// Block is an ipBlock: a prefix minus its holes.
type Block struct {
	Prefix netip.Prefix
	Except []netip.Prefix
}

// PortRange admits ports Lo..Hi of one protocol.
type PortRange struct {
	Proto  Proto
	Lo, Hi uint16
}

// ClauseSpec is what a clause admits, as the compiler hands it over.
type ClauseSpec struct {
	Clause Clause
	// Blocks are address ranges (an empty peer list is 0.0.0.0/0 and ::/0).
	Blocks []Block
	// Addrs are single addresses (pods picked by selectors).
	Addrs []netip.Addr
	// AllPorts admits every protocol and port, including protocols without
	// ports; otherwise only Ports.
	AllPorts bool
	Ports    []PortRange
}

// NewTable compiles clauses into a table. Prefixes must be masked and
// addresses unmapped.
func NewTable(dir Direction, policies []int32, specs []ClauseSpec) *Table {
	b := newBuilder(len(specs))
	t := &Table{Dir: dir, Policies: policies, Clauses: make([]Clause, len(specs))}
	for i := range specs {
		t.Clauses[i] = specs[i].Clause
	}
	t.peers = b.peerTrie(specs)
	for pi, proto := range [3]Proto{TCP, UDP, SCTP} {
		t.ports[pi] = b.portTable(specs, proto)
	}
	other := b.zero()
	for i := range specs {
		if specs[i].AllPorts {
			other.set(i)
		}
	}
	if !other.empty() {
		t.ports[3] = portTable{lo: []uint16{0}, bits: []Bits{b.intern(other)}}
	}
	return t
}

type builder struct {
	words  int
	shared map[string]Bits
}

func newBuilder(clauses int) *builder {
	return &builder{words: (clauses + 63) / 64, shared: map[string]Bits{}}
}

func (b *builder) zero() Bits { return make(Bits, b.words) }

// intern returns one shared copy of every distinct bitmap, nil for the
// empty one, so that tables stay small and lookups can test for nil.
func (b *builder) intern(x Bits) Bits {
	if x.empty() {
		return nil
	}
	key := unsafe.String((*byte)(unsafe.Pointer(&x[0])), len(x)*8)
	if s, ok := b.shared[key]; ok {
		return s
	}
	x = slices.Clone(x)
	b.shared[unsafe.String((*byte)(unsafe.Pointer(&x[0])), len(x)*8)] = x
	return x
}

type blockRef struct {
	clause int
	except []netip.Prefix
}

// peerTrie builds the address trie. Every block and except prefix becomes
// an entry whose bitmap holds the clauses admitting the addresses for which
// that entry is the longest match: clause c admits such an address iff one
// of c's blocks covers the entry and none of that block's excepts does.
// Single addresses become host entries with their own clauses added to
// whatever the blocks give them.
func (b *builder) peerTrie(specs []ClauseSpec) *bart.Table[Bits] {
	blocks := &bart.Table[[]blockRef]{}
	var bounds []netip.Prefix
	for i := range specs {
		for _, bl := range specs[i].Blocks {
			refs, _ := blocks.Get(bl.Prefix)
			blocks.Insert(bl.Prefix, append(refs, blockRef{i, bl.Except}))
			bounds = append(bounds, bl.Prefix)
			bounds = append(bounds, bl.Except...)
		}
	}
	slices.SortFunc(bounds, comparePrefix)
	bounds = slices.Compact(bounds)

	out := &bart.Table[Bits]{}
	x := b.zero()
	for _, p := range bounds {
		clear(x)
		for _, refs := range blocks.Supernets(p) {
			for _, r := range refs {
				if !coveredByAny(r.except, p) {
					x.set(r.clause)
				}
			}
		}
		out.Insert(p, b.intern(x))
	}

	hosts := map[netip.Addr]Bits{}
	for i := range specs {
		for _, a := range specs[i].Addrs {
			h, ok := hosts[a]
			if !ok {
				h = b.zero()
				if base, ok := out.Lookup(a); ok {
					copy(h, base)
				}
				hosts[a] = h
			}
			h.set(i)
		}
	}
	for a, h := range hosts {
		out.Insert(netip.PrefixFrom(a, a.BitLen()), b.intern(h))
	}
	return out
}

func coveredByAny(ps []netip.Prefix, p netip.Prefix) bool {
	for _, e := range ps {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// portTable splits 0..65535 into intervals at every range boundary of proto
// and records the clauses admitting each interval, merging neighbours with
// equal sets.
func (b *builder) portTable(specs []ClauseSpec, proto Proto) portTable {
	cuts := []int{0}
	for i := range specs {
		for _, r := range specs[i].Ports {
			if r.Proto == proto {
				cuts = append(cuts, int(r.Lo), int(r.Hi)+1)
			}
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	var pt portTable
	x := b.zero()
	for _, lo := range cuts {
		if lo > 65535 {
			break
		}
		clear(x)
		for i := range specs {
			if specs[i].AllPorts {
				x.set(i)
				continue
			}
			for _, r := range specs[i].Ports {
				if r.Proto == proto && int(r.Lo) <= lo && lo <= int(r.Hi) {
					x.set(i)
					break
				}
			}
		}
		bits := b.intern(x)
		if n := len(pt.bits); n > 0 && sameBits(pt.bits[n-1], bits) {
			continue
		}
		pt.lo = append(pt.lo, uint16(lo))
		pt.bits = append(pt.bits, bits)
	}
	if len(pt.bits) == 1 && pt.bits[0] == nil {
		return portTable{}
	}
	return pt
}

// sameBits compares interned bitmaps by identity.
func sameBits(a, b Bits) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return &a[0] == &b[0]
}
