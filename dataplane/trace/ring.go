package trace

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Source says which part of the slow path took a verdict.
type Source uint8

const (
	// SourcePunt: a frame punted by tcx and received on an AF_XDP socket.
	SourcePunt Source = iota
	// SourceRequest: a flow key the tcx program pushed into the requests
	// ring buffer (a GSO packet that missed the cache and was dropped).
	SourceRequest
	// SourceSample: a cached deny the kernel applied, sampled into the
	// stream (1 in --sample-drops).
	SourceSample
)

func (s Source) String() string {
	switch s {
	case SourceRequest:
		return "request"
	case SourceSample:
		return "fastpath-sample"
	}
	return "punt"
}

// Event is one verdict as a worker records it: numbers only, no names.
type Event struct {
	// Seq is the record's ticket in the ring (set by Read; 1 is the first
	// record the ring ever took).
	Seq uint64
	// Time is the wall clock of the verdict, Unix nanoseconds.
	Time       int64
	Generation uint64 // ruleset.Ruleset.Generation of the deciding snapshot
	Src, Dst   netip.Addr
	Sport      uint16
	Dport      uint16
	Proto      uint8
	Hook       uint8  // xdpprog.Hook: 1 leaving the pod, 2 entering it
	Ifindex    uint32 // H's ifindex
	Allowed    bool
	// Kept: denied by the current policy but let through because the flow
	// was already allowed (--existing-connections=keep).
	Kept   bool
	Reason ruleset.Reason
	// Dir is the direction of the deciding table (Verdict.Table.Dir), or
	// the hook's own direction when no table decided: egress names the
	// source pod as the enforcing pod, ingress the destination.
	Dir ruleset.Direction
	// Clause indexes the deciding table's clauses when Reason is
	// RuleMatched, else -1.
	Clause int32
	// LatencyNs is the time from the worker's receive to the verdict.
	LatencyNs uint32
	Source    Source
}

const words = 9

type slot struct {
	// seq is 2t-1 while ticket t is being written and 2t once it is
	// complete.
	seq atomic.Uint64
	w   [words]atomic.Uint64
}

// Ring is a multi-producer ring of fixed-size verdict records. The zero
// value is not usable; see NewRing.
type Ring struct {
	// Node names the node in every entry read from the ring.
	Node  string
	slots []slot
	mask  uint64
	_     [64]byte
	head  atomic.Uint64 // last ticket handed out
	_     [56]byte
	// listeners > 0 turns recording on.
	listeners atomic.Int32
	busy      atomic.Uint64 // records dropped because their slot was being written
}

// NewRing returns a ring of size records (rounded up to a power of two, at
// least 2).
func NewRing(node string, size int) *Ring {
	n := 2
	for n < size {
		n <<= 1
	}
	return &Ring{Node: node, slots: make([]slot, n), mask: uint64(n - 1)}
}

// Size is the number of records the ring holds.
func (r *Ring) Size() int { return len(r.slots) }

// Enabled reports whether anyone listens: one atomic load, the only cost of
// tracing for a worker while nobody does. A nil Ring is never enabled.
func (r *Ring) Enabled() bool { return r != nil && r.listeners.Load() > 0 }

// Hold turns recording on until the returned function is called (for
// readers, and for agents that keep a backlog with nobody following).
func (r *Ring) Hold() (release func()) {
	r.listeners.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			r.listeners.Add(-1)
		}
	}
}

// Written is the number of records ever claimed (the last ticket).
func (r *Ring) Written() uint64 { return r.head.Load() }

// Busy is the number of records writers dropped because a slower writer
// still held their slot (a whole ring lapped one write).
func (r *Ring) Busy() uint64 { return r.busy.Load() }

// Record appends e, overwriting the oldest record. It never allocates,
// blocks or locks; call it only when Enabled (it records regardless).
func (r *Ring) Record(e *Event) {
	t := r.head.Add(1)
	s := &r.slots[(t-1)&r.mask]
	old := s.seq.Load()
	if old&1 != 0 || old >= 2*t || !s.seq.CompareAndSwap(old, 2*t-1) {
		r.busy.Add(1)
		return
	}
	src, dst := e.Src.As16(), e.Dst.As16()
	s.w[0].Store(uint64(e.Time))
	s.w[1].Store(e.Generation)
	s.w[2].Store(binary.BigEndian.Uint64(src[:8]))
	s.w[3].Store(binary.BigEndian.Uint64(src[8:]))
	s.w[4].Store(binary.BigEndian.Uint64(dst[:8]))
	s.w[5].Store(binary.BigEndian.Uint64(dst[8:]))
	var flags uint64
	if e.Allowed {
		flags |= 1
	}
	if e.Kept {
		flags |= 2
	}
	if e.Dir == ruleset.Egress {
		flags |= 4
	}
	if e.Src.Is4() {
		flags |= 8
	}
	if e.Dst.Is4() {
		flags |= 16
	}
	s.w[6].Store(uint64(e.Sport)<<48 | uint64(e.Dport)<<32 | uint64(e.Proto)<<24 | uint64(e.Hook)<<16 | uint64(e.Reason)<<8 | flags)
	s.w[7].Store(uint64(e.Ifindex)<<32 | uint64(e.LatencyNs))
	s.w[8].Store(uint64(uint32(e.Clause))<<32 | uint64(e.Source))
	s.seq.Store(2 * t)
}

// read copies ticket t out of its slot; ok is false when the slot does not
// hold it (any more, or yet: see Reader.Read).
func (s *slot) read(t uint64, e *Event) bool {
	var w [words]uint64
	for i := range w {
		w[i] = s.w[i].Load()
	}
	if s.seq.Load() != 2*t {
		return false
	}
	var src, dst [16]byte
	binary.BigEndian.PutUint64(src[:8], w[2])
	binary.BigEndian.PutUint64(src[8:], w[3])
	binary.BigEndian.PutUint64(dst[:8], w[4])
	binary.BigEndian.PutUint64(dst[8:], w[5])
	flags := w[6] & 0xff
	*e = Event{
		Seq:        t,
		Time:       int64(w[0]),
		Generation: w[1],
		Src:        netip.AddrFrom16(src),
		Dst:        netip.AddrFrom16(dst),
		Sport:      uint16(w[6] >> 48),
		Dport:      uint16(w[6] >> 32),
		Proto:      uint8(w[6] >> 24),
		Hook:       uint8(w[6] >> 16),
		Reason:     ruleset.Reason(w[6] >> 8),
		Allowed:    flags&1 != 0,
		Kept:       flags&2 != 0,
		Dir:        ruleset.Ingress,
		Ifindex:    uint32(w[7] >> 32),
		LatencyNs:  uint32(w[7]),
		Clause:     int32(uint32(w[8] >> 32)),
		Source:     Source(w[8]),
	}
	if flags&4 != 0 {
		e.Dir = ruleset.Egress
	}
	if flags&8 != 0 {
		e.Src = e.Src.Unmap()
	}
	if flags&16 != 0 {
		e.Dst = e.Dst.Unmap()
	}
	return true
}

// Reader reads a Ring from its own cursor. It is not safe for concurrent
// use; any number of Readers may read one Ring.
type Reader struct {
	r       *Ring
	next    uint64 // next ticket to read
	end     uint64 // last ticket to read; 0 = follow
	release func()
	waited  int // consecutive Reads that found next not complete
}

// Follow returns a reader of the records written from now on, and turns
// recording on until Close.
func (r *Ring) Follow() *Reader {
	rd := &Reader{r: r, release: r.Hold()}
	rd.next = r.head.Load() + 1
	return rd
}

// Backlog returns a reader of the records the ring holds now, oldest first
// (records are only written while someone holds the ring).
func (r *Ring) Backlog() *Reader {
	h := r.head.Load()
	rd := &Reader{r: r, end: h, next: 1, release: func() {}}
	if h > uint64(len(r.slots)) {
		rd.next = h - uint64(len(r.slots)) + 1
	}
	return rd
}

// Close ends the reader; a following reader stops holding the ring.
func (rd *Reader) Close() { rd.release() }

// Done reports whether a backlog reader has read everything it will.
func (rd *Reader) Done() bool { return rd.end != 0 && rd.next > rd.end }

// stuckReads is how many Reads a reader waits on a record whose writer has
// claimed but not completed it before counting it lost (its writer dropped
// it, or stalls).
const stuckReads = 8

// Read fills buf with the next records in ticket order and returns how many,
// and how many records were lost since the previous Read (overwritten
// before this reader got to them, or dropped by their writer).
func (rd *Reader) Read(buf []Event) (n int, lost uint64) {
	r := rd.r
	head := r.head.Load()
	if rd.end != 0 {
		head = min(head, rd.end)
	}
	size := uint64(len(r.slots))
	for n < len(buf) && rd.next <= head {
		if head-rd.next >= size {
			skip := head - size + 1 - rd.next
			lost += skip
			rd.next += skip
		}
		t := rd.next
		s := &r.slots[(t-1)&r.mask]
		seq := s.seq.Load()
		switch {
		case seq == 2*t:
			if s.read(t, &buf[n]) {
				n++
			} else {
				lost++ // overwritten while we read it
			}
		case seq > 2*t:
			lost++ // overwritten
		default: // claimed but not complete yet
			rd.waited++
			if rd.waited < stuckReads && rd.end == 0 {
				return n, lost
			}
			lost++
		}
		rd.waited = 0
		rd.next++
	}
	return n, lost
}
