package afxdp

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// UMEMConfig sizes a UMEM. Zero fields take the defaults.
type UMEMConfig struct {
	// FrameSize is 2048 or 4096 bytes (default 2048: a 1514-byte frame
	// plus the kernel's 256-byte XDP_PACKET_HEADROOM fits).
	FrameSize int
	// NumFrames is the number of frames (default 4096).
	NumFrames int
	// Headroom is extra space the kernel leaves before each received
	// packet, on top of XDP_PACKET_HEADROOM (default 0).
	Headroom int
	// BindFlags are the XDP bind flags (unix.XDP_COPY, unix.XDP_ZEROCOPY,
	// unix.XDP_USE_NEED_WAKEUP) used by the socket that registers the
	// UMEM. Every other socket shares that socket's mode: the kernel
	// refuses flags on an XDP_SHARED_UMEM bind. Zero lets the kernel pick
	// zero-copy when the driver has it and copy otherwise (veth: copy).
	BindFlags uint16
}

// UMEM is the packet memory shared by every socket made from it: frames are
// received into it and transmitted from it without copying between sockets.
// Its methods other than Frame are control-path and safe for concurrent use.
type UMEM struct {
	area      []byte
	frameSize uint64
	numFrames int
	headroom  uint32
	bindFlags uint16

	mu      sync.Mutex
	sockets map[*Socket]struct{} // live sockets; any bound one can be shared through
	closed  bool

	// lists are the FreeLists that own frames, copied on write (see
	// FreeList).
	lists atomic.Pointer[[]*FreeList]
}

// NewUMEM maps the frame area. Nothing is registered with the kernel until
// the first socket is made (registration needs an AF_XDP socket, and that
// socket has to be the one that is bound first).
func NewUMEM(cfg UMEMConfig) (*UMEM, error) {
	if cfg.FrameSize == 0 {
		cfg.FrameSize = 2048
	}
	if cfg.NumFrames == 0 {
		cfg.NumFrames = 4096
	}
	if cfg.FrameSize != 2048 && cfg.FrameSize != 4096 {
		return nil, fmt.Errorf("afxdp: frame size %d: want 2048 or 4096", cfg.FrameSize)
	}
	if cfg.NumFrames < 0 || cfg.Headroom < 0 || cfg.Headroom+unix.XDP_PACKET_HEADROOM+64 > cfg.FrameSize {
		return nil, fmt.Errorf("afxdp: bad UMEM config %+v", cfg)
	}
	size := cfg.FrameSize * cfg.NumFrames
	// MAP_POPULATE: fault the pages in now, the kernel pins them at
	// registration anyway.
	area, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, explain(fmt.Sprintf("mmap %d-byte UMEM", size), err)
	}
	return &UMEM{
		area:      area,
		frameSize: uint64(cfg.FrameSize),
		numFrames: cfg.NumFrames,
		headroom:  uint32(cfg.Headroom),
		bindFlags: cfg.BindFlags,
		sockets:   make(map[*Socket]struct{}),
	}, nil
}

// FrameSize returns the size of one frame.
func (u *UMEM) FrameSize() int { return int(u.frameSize) }

// NumFrames returns the number of frames.
func (u *UMEM) NumFrames() int { return u.numFrames }

// Frame returns the bytes at UMEM address addr, n long, with capacity up to
// the end of addr's frame so a caller can grow a packet in place. It returns
// nil, never panics, if the range is not inside one frame.
func (u *UMEM) Frame(addr uint64, n int) []byte {
	end := addr + uint64(n)
	frameEnd := (addr &^ (u.frameSize - 1)) + u.frameSize
	if n < 0 || end > frameEnd || frameEnd > uint64(len(u.area)) {
		return nil
	}
	return u.area[addr:end:frameEnd]
}

// FrameBase returns the start of the frame that holds addr. RX descriptors
// and completions carry addresses with an offset inside the frame.
func (u *UMEM) FrameBase(addr uint64) uint64 { return addr &^ (u.frameSize - 1) }

// Close closes every socket made from u and unmaps the frame area. It is
// idempotent.
func (u *UMEM) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	socks := make([]*Socket, 0, len(u.sockets))
	for s := range u.sockets {
		socks = append(socks, s)
	}
	u.mu.Unlock()

	var first error
	for _, s := range socks {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	// The kernel pins the pages while any socket refers to the UMEM; all of
	// ours are closed, so unmapping only drops our mapping.
	if err := unix.Munmap(u.area); err != nil && first == nil {
		first = fmt.Errorf("afxdp: munmap UMEM: %w", err)
	}
	u.area = nil
	return first
}

// FreeList is a stack of free frame addresses owned by one goroutine. Its
// backing array is allocated once with room for every frame of the UMEM,
// so Get and Put never allocate. It is not safe for concurrent use, except
// that other lists of the same UMEM hand frames back to it (below).
//
// A list made with frames owns them, and frames go home: Put and PutBatch
// keep the frames the list owns (or that no list owns) and hand every
// other frame to its owner's inbox, which the owner empties into its stack
// when it runs short. Workers that share a transmit socket complete each
// other's frames; without this, one worker could end up holding every
// frame of the UMEM (its fill ring has room for all of them) while the
// other's fill ring ran dry and its queue dropped everything. Only handing
// frames over and taking them in lock the inbox.
type FreeList struct {
	addrs  []uint64
	mask   uint64
	lo, hi uint64 // the frames [lo, hi) this list owns; none if lo == hi
	umem   *UMEM
	inbox  inbox
}

// inbox holds frames other lists handed back to their owner.
type inbox struct {
	n     atomic.Int64 // len(addrs), read without the lock
	mu    sync.Mutex
	addrs []uint64
}

// NewFreeList returns a free list holding and owning frames
// [first, first+count) of u and able to take back any frame of u. Give each
// worker its own list, over its own frames.
func (u *UMEM) NewFreeList(first, count int) *FreeList {
	if first < 0 || count < 0 || first+count > u.numFrames {
		first, count = 0, 0
	}
	f := &FreeList{addrs: make([]uint64, 0, u.numFrames), mask: ^(u.frameSize - 1), umem: u,
		lo: uint64(first) * u.frameSize, hi: uint64(first+count) * u.frameSize}
	for i := first; i < first+count; i++ {
		f.addrs = append(f.addrs, uint64(i)*u.frameSize)
	}
	if count > 0 {
		f.inbox.addrs = make([]uint64, 0, count)
		u.mu.Lock()
		var lists []*FreeList
		if l := u.lists.Load(); l != nil {
			lists = append(lists, *l...)
		}
		lists = append(lists, f)
		u.lists.Store(&lists)
		u.mu.Unlock()
	}
	return f
}

// Len returns the number of free frames.
func (f *FreeList) Len() int { return len(f.addrs) }

// Get pops one frame address.
func (f *FreeList) Get() (uint64, bool) {
	if len(f.addrs) == 0 {
		f.takeInbox()
	}
	n := len(f.addrs)
	if n == 0 {
		return 0, false
	}
	a := f.addrs[n-1]
	f.addrs = f.addrs[:n-1]
	return a, true
}

// GetBatch pops up to len(dst) frame addresses into dst.
func (f *FreeList) GetBatch(dst []uint64) int {
	if len(f.addrs) < len(dst) {
		f.takeInbox()
	}
	n := min(len(dst), len(f.addrs))
	copy(dst, f.addrs[len(f.addrs)-n:])
	f.addrs = f.addrs[:len(f.addrs)-n]
	return n
}

// takeInbox moves the frames other lists handed back into the stack.
func (f *FreeList) takeInbox() {
	if f.inbox.n.Load() == 0 {
		return
	}
	f.inbox.mu.Lock()
	k := min(len(f.inbox.addrs), cap(f.addrs)-len(f.addrs))
	f.addrs = append(f.addrs, f.inbox.addrs[len(f.inbox.addrs)-k:]...)
	f.inbox.addrs = f.inbox.addrs[:len(f.inbox.addrs)-k]
	f.inbox.n.Store(int64(len(f.inbox.addrs)))
	f.inbox.mu.Unlock()
}

// owner returns the list that owns the frame at base, or nil when it is
// this list's or nobody's.
func (f *FreeList) owner(base uint64) *FreeList {
	if base >= f.lo && base < f.hi {
		return nil
	}
	lists := f.umem.lists.Load()
	if lists == nil {
		return nil
	}
	for _, o := range *lists {
		if base >= o.lo && base < o.hi {
			if o == f {
				return nil
			}
			return o
		}
	}
	return nil
}

// handBack gives frames (rounded to their base) to f's inbox and returns
// how many it took: all, unless the inbox is full (a frame returned twice).
func (f *FreeList) handBack(addrs []uint64) int {
	f.inbox.mu.Lock()
	k := min(len(addrs), cap(f.inbox.addrs)-len(f.inbox.addrs))
	for _, a := range addrs[:k] {
		f.inbox.addrs = append(f.inbox.addrs, a&f.mask)
	}
	f.inbox.n.Store(int64(len(f.inbox.addrs)))
	f.inbox.mu.Unlock()
	return k
}

// Put pushes a frame back, rounding addr down to its frame base, to this
// list or its owner's. It reports false (and drops addr) if the list is
// full, which means a frame was returned twice.
func (f *FreeList) Put(addr uint64) bool {
	base := addr & f.mask
	if o := f.owner(base); o != nil {
		return o.handBack([]uint64{base}) == 1
	}
	if len(f.addrs) == cap(f.addrs) {
		return false
	}
	f.addrs = append(f.addrs, base)
	return true
}

// PutBatch pushes frames back, each to this list or its owner's, and
// returns how many fitted. Consecutive frames of one other owner are
// handed back together.
func (f *FreeList) PutBatch(addrs []uint64) int {
	n := 0
	for i := 0; i < len(addrs); {
		base := addrs[i] & f.mask
		o := f.owner(base)
		if o == nil {
			if len(f.addrs) < cap(f.addrs) {
				f.addrs = append(f.addrs, base)
				n++
			}
			i++
			continue
		}
		j := i + 1 // a run of frames of owner o
		for j < len(addrs) && f.owner(addrs[j]&f.mask) == o {
			j++
		}
		n += o.handBack(addrs[i:j])
		i = j
	}
	return n
}
