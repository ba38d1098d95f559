package ruleset

import (
	"maps"
	"net/netip"
)

// addrShards is the number of maps an address index is split into, so that
// a snapshot derived from another copies only the shards it changes (a few
// dozen entries each at 10k pods) instead of every address.
const addrShards = 256

// addrIndex maps addresses to values. A zero addrIndex is empty; nil shards
// are empty maps. Published indexes are never modified: edits copy the
// shards they touch (see edit).
type addrIndex[V any] struct {
	shards [addrShards]map[netip.Addr]V
}

// shardOf spreads addresses by their last byte: pod and Service
// addresses are handed out in sequence. (One byte of As16 compiles to a
// shift; mixing in a second byte costs the verdict ~10 ns.)
func shardOf(a netip.Addr) int {
	return int(a.As16()[15])
}

func (x *addrIndex[V]) get(a netip.Addr) (V, bool) {
	v, ok := x.shards[shardOf(a)][a]
	return v, ok
}

func (x *addrIndex[V]) len() int {
	n := 0
	for _, m := range x.shards {
		n += len(m)
	}
	return n
}

// put sets a in an index under construction (not yet published).
func (x *addrIndex[V]) put(a netip.Addr, v V) {
	s := shardOf(a)
	if x.shards[s] == nil {
		x.shards[s] = map[netip.Addr]V{}
	}
	x.shards[s][a] = v
}

// addrEdit changes a copy of a published index, copying each shard the
// first time it changes.
type addrEdit[V any] struct {
	x      *addrIndex[V]
	copied [addrShards]bool
}

func (e *addrEdit[V]) shard(a netip.Addr) map[netip.Addr]V {
	s := shardOf(a)
	if !e.copied[s] {
		e.copied[s] = true
		if m := e.x.shards[s]; m != nil {
			e.x.shards[s] = maps.Clone(m)
		} else {
			e.x.shards[s] = map[netip.Addr]V{}
		}
	}
	return e.x.shards[s]
}

func (e *addrEdit[V]) set(a netip.Addr, v V) { e.shard(a)[a] = v }

func (e *addrEdit[V]) del(a netip.Addr) {
	if _, ok := e.x.get(a); ok {
		delete(e.shard(a), a)
	}
}
