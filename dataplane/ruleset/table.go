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
//
// Peers are matched two ways. Pods picked by selectors are matched by
// identity: every peer pod belongs to exactly one identity (its namespace,
// labels and ports), and idents maps an identity to the clauses admitting
// it. Address ranges (ipBlocks, "every peer") live in a prefix trie whose
// entries carry the clauses admitting the addresses they are the longest
// match for. A peer's clauses are the union of both.
type Table struct {
	Dir Direction
	// Policies are the policies that select this table's pods in Dir.
	Policies []int32
	Clauses  []Clause
	// idents maps identity id to an index into sets (0 is the empty
	// set) at idents[id/identChunk][id%identChunk]; a nil chunk maps all
	// its identities to 0. Chunks are never modified once built, so the
	// copies WithIdentities makes share all but the chunks they change.
	idents []*identRow
	sets   []Bits
	blocks *bart.Table[Bits] // nil when no clause has address ranges
	ports  [4]portTable      // TCP, UDP, SCTP, other protocols
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

// NoIdentity is the identity of a peer that is not a pod.
const NoIdentity = -1

// identChunk is the number of identities per chunk of Table.idents.
const identChunk = 128

// identRow is one chunk of Table.idents.
type identRow [identChunk]uint32

// identSet returns the index into sets of identity ident's clauses (0 for
// none, and for NoIdentity).
func (t *Table) identSet(ident int32) uint32 {
	if c := uint(ident) / identChunk; c < uint(len(t.idents)) {
		if ch := t.idents[c]; ch != nil {
			return ch[uint(ident)%identChunk]
		}
	}
	return 0
}

// Match returns the first clause admitting the flow from or to a peer with
// address addr and identity ident (NoIdentity for non-pods), or -1. It never
// allocates.
func (t *Table) Match(ident int32, addr netip.Addr, proto Proto, port uint16) int32 {
	pb := t.ports[protoIndex(proto)].lookup(port)
	if pb == nil {
		return -1
	}
	var ib, bb Bits
	ib = t.sets[t.identSet(ident)]
	if t.blocks != nil {
		bb, _ = t.blocks.Lookup(addr)
	}
	for i := range pb {
		var x uint64
		if i < len(ib) {
			x = ib[i]
		}
		if i < len(bb) {
			x |= bb[i]
		}
		if x &= pb[i]; x != 0 {
			return int32(i*64 + bits.TrailingZeros64(x))
		}
	}
	return -1
}

// PeerClauses is the set of clauses whose peers include the peer, whatever
// the port (for explanations).
func (t *Table) PeerClauses(ident int32, addr netip.Addr) Bits {
	out := make(Bits, (len(t.Clauses)+63)/64)
	for i, w := range t.sets[t.identSet(ident)] {
		out[i] |= w
	}
	if t.blocks != nil {
		b, _ := t.blocks.Lookup(addr)
		for i, w := range b {
			out[i] |= w
		}
	}
	return out
}

// PortClauses is the set of clauses whose ports include (proto, port),
// whatever the peer (for explanations).
func (t *Table) PortClauses(proto Proto, port uint16) Bits {
	return t.ports[protoIndex(proto)].lookup(port)
}

// Matches lists every clause admitting the flow (allocates).
func (t *Table) Matches(ident int32, addr netip.Addr, proto Proto, port uint16) []int32 {
	p := t.PortClauses(proto, port)
	var out []int32
	for _, i := range t.PeerClauses(ident, addr).Indices() {
		if p.Has(int(i)) {
			out = append(out, i)
		}
	}
	return out
}

// Entries reports the size of the table's peer structures: identities with
// clauses and trie prefixes.
func (t *Table) Entries() (idents, prefixes int) {
	for _, ch := range t.idents {
		if ch == nil {
			continue
		}
		for _, s := range ch {
			if s != 0 {
				idents++
			}
		}
	}
	if t.blocks != nil {
		prefixes = t.blocks.Size()
	}
	return idents, prefixes
}

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
	// Idents are the identities of the pods the clause's selectors picked.
	Idents []uint32
	// Blocks are address ranges (an empty peer list is 0.0.0.0/0 and ::/0).
	Blocks []Block
	// Addrs are single addresses admitted on their own (pods inside an
	// ipBlock whose named ports resolved).
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
	t.idents, t.sets = b.identSets(specs)
	t.blocks = b.peerTrie(specs)
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

// identSets maps every identity some clause picks to its interned clause
// set.
func (b *builder) identSets(specs []ClauseSpec) ([]*identRow, []Bits) {
	n := 0
	for i := range specs {
		for _, id := range specs[i].Idents {
			n = max(n, int(id)+1)
		}
	}
	if n == 0 {
		return nil, []Bits{nil}
	}
	// One flat scratch bitmap per identity.
	scratch := make([]uint64, n*b.words)
	for i := range specs {
		for _, id := range specs[i].Idents {
			Bits(scratch[int(id)*b.words:]).set(i)
		}
	}
	idents := make([]*identRow, (n+identChunk-1)/identChunk)
	sets := []Bits{nil}
	index := map[*uint64]uint32{}
	for id := range n {
		s := b.intern(scratch[id*b.words : (id+1)*b.words])
		if s == nil {
			continue
		}
		k, ok := index[&s[0]]
		if !ok {
			k = uint32(len(sets))
			index[&s[0]] = k
			sets = append(sets, s)
		}
		if idents[id/identChunk] == nil {
			idents[id/identChunk] = new(identRow)
		}
		idents[id/identChunk][id%identChunk] = k
	}
	return idents, sets
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
	if !slices.ContainsFunc(specs, func(s ClauseSpec) bool { return len(s.Blocks) > 0 || len(s.Addrs) > 0 }) {
		return nil
	}
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

// WithIdentity returns a copy of the table in which identity id is admitted
// by the clauses in b (which must have one bit per clause). The receiver is
// not modified; both stay valid, so a snapshot can be derived from the
// previous one without rebuilding tables.
func (t *Table) WithIdentity(id uint32, b Bits) *Table {
	return t.WithIdentities([]uint32{id}, []Bits{b})
}

// WithIdentities is WithIdentity for several identities at once: identity
// ids[i] is admitted by the clauses in sets[i] (nil or all zeros: none).
// Only the chunks of the identity array holding them are copied.
func (t *Table) WithIdentities(ids []uint32, sets []Bits) *Table {
	nt := *t
	n := len(t.idents)
	for _, id := range ids {
		n = max(n, int(id/identChunk)+1)
	}
	nt.idents = make([]*identRow, n)
	copy(nt.idents, t.idents)
	var copied []uint32 // chunks copied
	nt.sets = slices.Clip(t.sets)
	for i, id := range ids {
		k := 0
		if b := sets[i]; !b.empty() {
			k = slices.IndexFunc(nt.sets, func(s Bits) bool { return slices.Equal(s, b) })
			if k < 0 {
				k = len(nt.sets)
				nt.sets = append(nt.sets, slices.Clone(b))
			}
		}
		c := id / identChunk
		if !slices.Contains(copied, c) {
			if k == 0 && nt.idents[c] == nil {
				continue
			}
			copied = append(copied, c)
			ch := new(identRow)
			if old := nt.idents[c]; old != nil {
				*ch = *old
			}
			nt.idents[c] = ch
		}
		nt.idents[c][id%identChunk] = uint32(k)
	}
	return &nt
}

// IdentityClauses is the set of clauses admitting identity id through the
// selectors (nil for none), shared with the table: do not modify it.
func (t *Table) IdentityClauses(id uint32) Bits {
	return t.sets[t.identSet(int32(id))]
}
