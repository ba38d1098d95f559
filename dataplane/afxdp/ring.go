package afxdp

import (
	"sync/atomic"
	"unsafe"
)

// Desc is one RX or TX descriptor, laid out exactly like the kernel's
// struct xdp_desc so ring memory can be viewed as []Desc.
//
// Addr is a UMEM offset. On RX it points at the packet data (frame base +
// headroom); on TX it may point anywhere inside a frame as long as
// Addr+Len stays inside that frame.
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// ring is the user-space half of one single-producer single-consumer ring
// shared with the kernel. Like libxdp's xsk_ring_prod/xsk_ring_cons it keeps
// cached copies of both indices so the shared cache lines are touched only
// when the cached view runs out.
//
// Memory ordering: the kernel pairs smp_load_acquire/smp_store_release on
// the indices. Go's sync/atomic operations are sequentially consistent
// (stronger than acquire/release) and the compiler never moves ordinary
// loads/stores of descriptors across them, so "write descriptors, then
// atomic.Store producer" and "atomic.Load producer, then read descriptors,
// then atomic.Store consumer" give the ordering the kernel expects on every
// architecture Go supports.
type ring struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32

	// For a producer ring cachedCons holds consumer+size, so
	// cachedCons-cachedProd is the number of free slots (libxdp's trick).
	cachedProd uint32
	cachedCons uint32

	mem []byte // the whole mmapped region, for munmap
}

func newRing(mem []byte, prod, cons, flags uint64, size uint32, producerSide bool) ring {
	r := ring{
		producer: (*uint32)(unsafe.Pointer(&mem[prod])),
		consumer: (*uint32)(unsafe.Pointer(&mem[cons])),
		flags:    (*uint32)(unsafe.Pointer(&mem[flags])),
		mask:     size - 1,
		size:     size,
		mem:      mem,
	}
	r.cachedProd = atomic.LoadUint32(r.producer)
	r.cachedCons = atomic.LoadUint32(r.consumer)
	if producerSide {
		r.cachedCons += size
	}
	return r
}

// free returns how many slots a producer may write, refreshing the cached
// consumer index only when the cached view has fewer than want.
func (r *ring) free(want uint32) uint32 {
	n := r.cachedCons - r.cachedProd
	if n >= want {
		return n
	}
	r.cachedCons = atomic.LoadUint32(r.consumer) + r.size
	return r.cachedCons - r.cachedProd
}

// submit publishes n slots written at cachedProd.
func (r *ring) submit(n uint32) {
	r.cachedProd += n
	atomic.StoreUint32(r.producer, r.cachedProd)
}

// avail returns how many entries a consumer may read, at most want,
// refreshing the cached producer index only when the cached view is short.
func (r *ring) avail(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n < want {
		r.cachedProd = atomic.LoadUint32(r.producer)
		n = r.cachedProd - r.cachedCons
	}
	return min(n, want)
}

// release hands n consumed entries back to the producer.
func (r *ring) release(n uint32) {
	r.cachedCons += n
	atomic.StoreUint32(r.consumer, r.cachedCons)
}

// needWakeup reports whether the kernel asked to be kicked
// (XDP_RING_NEED_WAKEUP), meaningful only with XDP_USE_NEED_WAKEUP.
func (r *ring) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&xdpRingNeedWakeup != 0
}

// pending is the number of entries published by the producer and not yet
// consumed, as seen from the shared indices.
func (r *ring) pending() uint32 {
	return atomic.LoadUint32(r.producer) - atomic.LoadUint32(r.consumer)
}

// addrRing is a fill or completion ring: entries are UMEM addresses.
type addrRing struct {
	ring
	addrs []uint64
}

// descRing is an RX or TX ring: entries are descriptors.
type descRing struct {
	ring
	descs []Desc
}

// produce copies as many addresses as fit into the ring and publishes them.
func (r *addrRing) produce(addrs []uint64) int {
	n := r.free(uint32(min(len(addrs), int(r.size))))
	n = min(n, uint32(len(addrs)))
	for i := uint32(0); i < n; i++ {
		r.addrs[(r.cachedProd+i)&r.mask] = addrs[i]
	}
	if n > 0 {
		r.submit(n)
	}
	return int(n)
}

// consume copies up to len(dst) addresses out of the ring and releases them.
func (r *addrRing) consume(dst []uint64) int {
	n := r.avail(uint32(min(len(dst), int(r.size))))
	for i := uint32(0); i < n; i++ {
		dst[i] = r.addrs[(r.cachedCons+i)&r.mask]
	}
	if n > 0 {
		r.release(n)
	}
	return int(n)
}

func (r *descRing) produce(descs []Desc) int {
	n := r.free(uint32(min(len(descs), int(r.size))))
	n = min(n, uint32(len(descs)))
	for i := uint32(0); i < n; i++ {
		r.descs[(r.cachedProd+i)&r.mask] = descs[i]
	}
	if n > 0 {
		r.submit(n)
	}
	return int(n)
}

func (r *descRing) consume(dst []Desc) int {
	n := r.avail(uint32(min(len(dst), int(r.size))))
	for i := uint32(0); i < n; i++ {
		dst[i] = r.descs[(r.cachedCons+i)&r.mask]
	}
	if n > 0 {
		r.release(n)
	}
	return int(n)
}

// consumerIndex is the shared consumer index, for accounting in tests.
func (r *ring) consumerIndex() uint32 { return atomic.LoadUint32(r.consumer) }
