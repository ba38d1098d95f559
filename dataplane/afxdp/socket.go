package afxdp

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SocketOptions choose a socket's rings. Ring sizes must be powers of two;
// zero takes the default shown.
type SocketOptions struct {
	RX bool // has an RX ring (receives redirected frames)
	TX bool // has a TX ring (transmits frames)

	RxSize   int // 2048
	TxSize   int // 2048 with RX, 256 for a TX-only socket
	FillSize int // 2048 with RX, 8 for a TX-only socket (required, unused)
	CompSize int // TxSize with TX, 8 otherwise

	// Netns, if > 0, is the network namespace the socket is created in (a
	// pod's netns for its veth end); ifindex is looked up there. Zero or
	// negative means the caller's namespace.
	Netns netns.NsHandle
}

// Socket is one AF_XDP socket bound to a device queue. Each of its four
// rings has one producer and one consumer: Receive, Transmit/Kick, Fill and
// Complete may run on different goroutines, but each of them on only one at
// a time. Close must not race with them.
type Socket struct {
	umem    *UMEM
	fd      int
	ifindex int
	queue   int

	rx, tx     descRing
	fill, comp addrRing
	hasRX      bool
	hasTX      bool
	wakeup     bool // bound with XDP_USE_NEED_WAKEUP
	pfd        [1]unix.PollFd
	closed     bool
	fillEmpty  atomic.Uint64
	compEmpty  atomic.Uint64
	txFull     atomic.Uint64
	kickRetry  atomic.Uint64
	kickErrors atomic.Uint64
}

// NewSocket creates an AF_XDP socket on queue of the interface ifindex and
// binds it to u. The first socket registers the UMEM; later ones share it
// with XDP_SHARED_UMEM (different device or queue, kernel >= 5.10), each with
// its own fill and completion rings as the kernel requires. A second socket
// on the same device and queue is not supported: use one socket with RX and
// TX instead.
func (u *UMEM) NewSocket(ifindex, queue int, opts SocketOptions) (*Socket, error) {
	if !opts.RX && !opts.TX {
		return nil, fmt.Errorf("afxdp: socket needs RX, TX or both")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if opts.RX {
		def(&opts.RxSize, 2048)
		def(&opts.TxSize, 2048)
		def(&opts.FillSize, 2048)
	} else {
		def(&opts.TxSize, 256)
		def(&opts.FillSize, 8)
	}
	if opts.TX {
		def(&opts.CompSize, opts.TxSize)
	} else {
		def(&opts.CompSize, 8)
	}
	if !opts.RX {
		opts.RxSize = 1 // unused
	}
	if !opts.TX {
		opts.TxSize = 1 // unused
	}
	for _, n := range []int{opts.RxSize, opts.TxSize, opts.FillSize, opts.CompSize} {
		if n <= 0 || n&(n-1) != 0 {
			return nil, fmt.Errorf("afxdp: ring size %d is not a power of two", n)
		}
	}

	// Hold the lock for the whole setup: the socket we share through must
	// stay open until our bind has taken its own reference on the UMEM.
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, ErrClosed
	}

	var fd int
	err := inNetns(opts.Netns, func() (err error) {
		fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, explain("create AF_XDP socket", err)
	}
	s := &Socket{umem: u, fd: fd, ifindex: ifindex, queue: queue, hasRX: opts.RX, hasTX: opts.TX}
	if err := s.setup(opts); err != nil {
		s.release()
		return nil, err
	}
	u.sockets[s] = struct{}{}
	return s, nil
}

func (s *Socket) setup(opts SocketOptions) error {
	u := s.umem
	var shareFD int = -1
	for o := range u.sockets {
		shareFD = o.fd
		break
	}
	if shareFD < 0 {
		// First live socket: register the UMEM on it.
		reg := unix.XDPUmemReg{
			Addr:     uint64(uintptr(unsafe.Pointer(&u.area[0]))),
			Len:      uint64(len(u.area)),
			Size:     uint32(u.frameSize),
			Headroom: u.headroom,
		}
		if err := setsockoptPtr(s.fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
			return explain("register UMEM", err)
		}
	}
	set := func(opt, n int, what string) error {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, opt, n); err != nil {
			return explain("set "+what+" ring size", err)
		}
		return nil
	}
	if err := set(unix.XDP_UMEM_FILL_RING, opts.FillSize, "fill"); err != nil {
		return err
	}
	if err := set(unix.XDP_UMEM_COMPLETION_RING, opts.CompSize, "completion"); err != nil {
		return err
	}
	if opts.RX {
		if err := set(unix.XDP_RX_RING, opts.RxSize, "RX"); err != nil {
			return err
		}
	}
	if opts.TX {
		if err := set(unix.XDP_TX_RING, opts.TxSize, "TX"); err != nil {
			return err
		}
	}

	var off unix.XDPMmapOffsets
	if err := getsockoptPtr(s.fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off)); err != nil {
		return explain("get ring offsets", err)
	}
	var err error
	if s.fill, err = s.mapAddrRing(off.Fr, opts.FillSize, unix.XDP_UMEM_PGOFF_FILL_RING, true); err != nil {
		return err
	}
	if s.comp, err = s.mapAddrRing(off.Cr, opts.CompSize, unix.XDP_UMEM_PGOFF_COMPLETION_RING, false); err != nil {
		return err
	}
	if opts.RX {
		if s.rx, err = s.mapDescRing(off.Rx, opts.RxSize, unix.XDP_PGOFF_RX_RING, false); err != nil {
			return err
		}
	}
	if opts.TX {
		if s.tx, err = s.mapDescRing(off.Tx, opts.TxSize, unix.XDP_PGOFF_TX_RING, true); err != nil {
			return err
		}
	}

	sa := &unix.SockaddrXDP{Ifindex: uint32(s.ifindex), QueueID: uint32(s.queue)}
	if shareFD >= 0 {
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(shareFD)
	} else {
		sa.Flags = u.bindFlags
		s.wakeup = u.bindFlags&unix.XDP_USE_NEED_WAKEUP != 0
	}
	if err := unix.Bind(s.fd, sa); err != nil {
		return explain(fmt.Sprintf("bind ifindex %d queue %d", s.ifindex, s.queue), err)
	}
	if shareFD >= 0 {
		// A shared socket inherits the mode of the one it shares through.
		for o := range u.sockets {
			s.wakeup = o.wakeup
			break
		}
	}
	s.pfd[0] = unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN}
	return nil
}

func (s *Socket) mmap(descOff uint64, n int, size uintptr, pgoff int64) ([]byte, error) {
	mem, err := unix.Mmap(s.fd, pgoff, int(descOff)+n*int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, explain("mmap ring", err)
	}
	return mem, nil
}

func (s *Socket) mapAddrRing(o unix.XDPRingOffset, n int, pgoff int64, producer bool) (addrRing, error) {
	mem, err := s.mmap(o.Desc, n, sizeofAddr, pgoff)
	if err != nil {
		return addrRing{}, err
	}
	r := addrRing{ring: newRing(mem, o.Producer, o.Consumer, o.Flags, uint32(n), producer)}
	r.addrs = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[o.Desc])), n)
	return r, nil
}

func (s *Socket) mapDescRing(o unix.XDPRingOffset, n int, pgoff int64, producer bool) (descRing, error) {
	mem, err := s.mmap(o.Desc, n, sizeofDesc, pgoff)
	if err != nil {
		return descRing{}, err
	}
	r := descRing{ring: newRing(mem, o.Producer, o.Consumer, o.Flags, uint32(n), producer)}
	r.descs = unsafe.Slice((*Desc)(unsafe.Pointer(&mem[o.Desc])), n)
	return r, nil
}

// FD returns the socket's file descriptor, to be stored in an XSKMAP at the
// socket's queue index.
func (s *Socket) FD() int { return s.fd }

// UMEM returns the UMEM the socket was made from.
func (s *Socket) UMEM() *UMEM { return s.umem }

// Fill gives frames to the kernel to receive into and returns how many the
// fill ring took; the caller keeps ownership of the rest.
func (s *Socket) Fill(addrs []uint64) int {
	if s.fill.size == 0 {
		return 0
	}
	// The ring being empty means the kernel had (or soon has) nowhere to put
	// an arriving frame: a sign the workers hand frames back too slowly.
	if atomic.LoadUint32(s.fill.consumer) == s.fill.cachedProd {
		s.fillEmpty.Add(1)
	}
	n := s.fill.produce(addrs)
	if n > 0 && s.wakeup && s.fill.needWakeup() {
		// Zero-copy drivers ask to be woken to pick up fill entries.
		unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
	return n
}

// Receive copies up to len(descs) received descriptors into descs and
// returns how many. The frames belong to the caller until it gives them
// back through Fill or Transmit.
func (s *Socket) Receive(descs []Desc) int {
	if !s.hasRX {
		return 0
	}
	return s.rx.consume(descs)
}

// Transmit queues descs on the TX ring, kicks the kernel and returns how
// many were queued; the rest stay with the caller (ring full: complete and
// retry). A kick the kernel cannot take now (EAGAIN, EBUSY, ENOBUFS) is
// counted and left for the next Transmit or Kick; other kick errors are
// counted in Stats.KickErrors and returned by Kick.
func (s *Socket) Transmit(descs []Desc) int {
	if !s.hasTX || len(descs) == 0 {
		return 0
	}
	n := s.tx.produce(descs)
	if n < len(descs) {
		s.txFull.Add(1)
	}
	if n > 0 {
		s.Kick()
	}
	return n
}

// Kick tells the kernel to send what is on the TX ring (sendto with
// MSG_DONTWAIT). In copy mode the kernel sends a bounded batch per call and
// answers EAGAIN when more is left, so Kick repeats while the kernel keeps
// consuming; it returns nil when the rest must simply be retried later.
func (s *Socket) Kick() error {
	if !s.hasTX {
		return nil
	}
	for {
		if s.wakeup && !s.tx.needWakeup() {
			return nil
		}
		before := atomic.LoadUint32(s.tx.consumer)
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN, unix.EBUSY, unix.ENOBUFS:
			if atomic.LoadUint32(s.tx.consumer) != before && s.tx.pending() > 0 {
				continue // progress: the kernel stopped only at its batch limit
			}
			s.kickRetry.Add(1)
			return nil
		default:
			s.kickErrors.Add(1)
			return explain("kick TX", e)
		}
	}
}

// Complete copies up to len(addrs) addresses of transmitted frames into
// addrs and returns how many; those frames are the caller's again.
func (s *Socket) Complete(addrs []uint64) int {
	if s.comp.size == 0 {
		return 0
	}
	n := s.comp.consume(addrs)
	if n == 0 {
		s.compEmpty.Add(1)
	}
	return n
}

// TxPending returns how many queued TX descriptors the kernel has not taken.
func (s *Socket) TxPending() int {
	if !s.hasTX {
		return 0
	}
	return int(s.tx.pending())
}

// Poll waits up to timeout for received frames and reports whether the RX
// ring has some. It returns at once if frames are already there. A negative
// timeout waits forever.
func (s *Socket) Poll(timeout time.Duration) (bool, error) {
	if !s.hasRX {
		return false, nil
	}
	if s.rx.avail(1) > 0 {
		return true, nil
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	s.pfd[0].Revents = 0
	_, err := unix.Poll(s.pfd[:], ms)
	if err == unix.EINTR {
		return s.rx.avail(1) > 0, nil
	}
	if err != nil {
		return false, explain("poll", err)
	}
	if s.pfd[0].Revents&unix.POLLERR != 0 {
		return false, explain("poll", unix.ENETDOWN)
	}
	return s.rx.avail(1) > 0, nil
}

// Stats are the kernel's XDP_STATISTICS plus this package's own counters.
type Stats struct {
	RxDropped            uint64 // frames dropped for reasons other than below
	RxInvalidDescs       uint64 // RX descriptors the kernel rejected
	TxInvalidDescs       uint64 // TX descriptors the kernel rejected (bad addr/len)
	RxRingFull           uint64 // frames dropped because the RX ring was full
	RxFillRingEmptyDescs uint64 // frames dropped because the fill ring was empty
	TxRingEmptyDescs     uint64 // kicks that found the TX ring empty

	FillRingEmpty   uint64 // Fill calls that found the kernel had used every fill entry
	CompletionEmpty uint64 // Complete calls that found nothing
	TxRingFull      uint64 // Transmit calls that could not queue everything
	KickRetries     uint64 // kicks answered EAGAIN/EBUSY/ENOBUFS
	KickErrors      uint64 // kicks that failed otherwise
}

// Stats reads the socket's statistics.
func (s *Socket) Stats() (Stats, error) {
	var ks unix.XDPStatistics
	if s.closed {
		return Stats{}, ErrClosed
	}
	if err := getsockoptPtr(s.fd, unix.XDP_STATISTICS, unsafe.Pointer(&ks), unsafe.Sizeof(ks)); err != nil {
		return Stats{}, explain("get statistics", err)
	}
	return Stats{
		RxDropped:            ks.Rx_dropped,
		RxInvalidDescs:       ks.Rx_invalid_descs,
		TxInvalidDescs:       ks.Tx_invalid_descs,
		RxRingFull:           ks.Rx_ring_full,
		RxFillRingEmptyDescs: ks.Rx_fill_ring_empty_descs,
		TxRingEmptyDescs:     ks.Tx_ring_empty_descs,
		FillRingEmpty:        s.fillEmpty.Load(),
		CompletionEmpty:      s.compEmpty.Load(),
		TxRingFull:           s.txFull.Load(),
		KickRetries:          s.kickRetry.Load(),
		KickErrors:           s.kickErrors.Load(),
	}, nil
}

// Close unmaps the rings and closes the socket; it is idempotent. Frames
// still on its rings are not returned to any free list. Other sockets of
// the UMEM keep working.
func (s *Socket) Close() error {
	u := s.umem
	u.mu.Lock()
	defer u.mu.Unlock()
	if s.closed {
		return nil
	}
	delete(u.sockets, s)
	return s.release()
}

// release unmaps and closes whatever setup got to. Callers hold u.mu.
func (s *Socket) release() error {
	s.closed = true
	var first error
	for _, r := range []*ring{&s.fill.ring, &s.comp.ring, &s.rx.ring, &s.tx.ring} {
		if r.mem != nil {
			if err := unix.Munmap(r.mem); err != nil && first == nil {
				first = fmt.Errorf("afxdp: munmap ring: %w", err)
			}
		}
		*r = ring{}
	}
	s.fill.addrs, s.comp.addrs, s.rx.descs, s.tx.descs = nil, nil, nil, nil
	s.hasRX, s.hasTX = false, false
	if err := unix.Close(s.fd); err != nil && first == nil {
		first = fmt.Errorf("afxdp: close socket: %w", err)
	}
	s.fd = -1
	return first
}
