package afxdp

import (
	"slices"
	"sync"
	"testing"
)

// newTestUMEM maps a UMEM of n frames (no socket: no privileges needed).
func newTestUMEM(t *testing.T, n int) *UMEM {
	t.Helper()
	u, err := NewUMEM(UMEMConfig{NumFrames: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// TestFreeListFramesGoHome: a worker that completes another worker's
// frames (they share a transmit socket) hands them back to that worker's
// list; its own it keeps. So neither can end up with every frame.
func TestFreeListFramesGoHome(t *testing.T) {
	u := newTestUMEM(t, 256)
	fs := uint64(u.FrameSize())
	a, b := u.NewFreeList(0, 128), u.NewFreeList(128, 128)
	buf := make([]uint64, 256)

	// Every frame of a is completed by b.
	n := a.GetBatch(buf)
	if n != 128 || a.Len() != 0 {
		t.Fatalf("a gave %d frames and kept %d, want 128 and 0", n, a.Len())
	}
	for i := range n {
		buf[i] += 100 // completions carry offsets inside the frame
	}
	if got := b.PutBatch(buf[:n]); got != n {
		t.Fatalf("b took %d of %d frames back", got, n)
	}
	if b.Len() != 128 {
		t.Fatalf("b holds %d frames after completing a's, want its own 128", b.Len())
	}
	if got := a.GetBatch(buf); got != 128 {
		t.Fatalf("a got %d of its 128 frames back", got)
	}
	for _, f := range buf[:128] {
		if f >= 128*fs || f%fs != 0 {
			t.Fatalf("a got frame %#x, not one of its own frame bases", f)
		}
	}
	// A mixed batch: b keeps its own, a's go to a; one at a time too.
	m := b.GetBatch(buf[128:192]) // 64 of b's
	mixed := append(slices.Clone(buf[:32]), buf[128:128+m]...)
	b.PutBatch(mixed)
	if a.Len() != 0 || b.Len() != 128 {
		t.Fatalf("after a mixed batch: a %d, b %d; want 0 (a's are in its inbox) and 128", a.Len(), b.Len())
	}
	if !b.Put(buf[32]) {
		t.Fatal("b refused a's frame")
	}
	if got := a.GetBatch(buf[:256]); got != 33 {
		t.Fatalf("a got %d frames from its inbox, want 33", got)
	}
	// Conservation: a's 128 are out (buf[:128]: 33 just taken from its
	// inbox, 95 never returned), b has its 128.
	all := append(slices.Clone(buf[:128]), a.addrs...)
	all = append(all, b.addrs...)
	slices.Sort(all)
	if len(slices.Compact(all)) != 256 {
		t.Fatalf("%d distinct frames accounted for, want 256", len(slices.Compact(all)))
	}

	if allocs := testing.AllocsPerRun(100, func() {
		k := a.GetBatch(buf)
		b.PutBatch(buf[:k])
		k = a.GetBatch(buf)
		f, _ := b.Get()
		a.Put(f)
		b.PutBatch(buf[:k])
	}); allocs != 0 {
		t.Errorf("%v allocations per round, want 0", allocs)
	}
}

// TestFreeListSingle: a list over every frame (one worker) keeps them all.
func TestFreeListSingle(t *testing.T) {
	u := newTestUMEM(t, 128)
	f := u.NewFreeList(0, u.NumFrames())
	buf := make([]uint64, 128)
	n := f.GetBatch(buf)
	f.PutBatch(buf[:n])
	if f.Len() != 128 || f.inbox.n.Load() != 0 {
		t.Fatalf("list %d, inbox %d: want 128 and 0", f.Len(), f.inbox.n.Load())
	}
}

// TestFreeListConcurrent: two workers completing each other's frames at
// the same time lose and duplicate nothing (run with -race).
func TestFreeListConcurrent(t *testing.T) {
	u := newTestUMEM(t, 256)
	lists := []*FreeList{u.NewFreeList(0, 128), u.NewFreeList(128, 128)}
	var mu sync.Mutex
	var inFlight [][]uint64 // frames taken by one worker, to be completed by the other
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := lists[w]
			buf := make([]uint64, 32)
			for range 2000 {
				k := me.GetBatch(buf)
				mu.Lock()
				inFlight = append(inFlight, slices.Clone(buf[:k]))
				var done []uint64
				if len(inFlight) > 1 {
					done, inFlight = inFlight[0], inFlight[1:]
				}
				mu.Unlock()
				me.PutBatch(done)
			}
		}()
	}
	wg.Wait()
	for _, d := range inFlight {
		lists[0].PutBatch(d)
	}
	for i, l := range lists {
		l.takeInbox()
		if l.Len() != 128 {
			t.Errorf("list %d holds %d frames at the end, want its 128", i, l.Len())
		}
	}
}
