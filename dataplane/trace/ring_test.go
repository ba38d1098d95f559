package trace

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

func event(i int) Event {
	return Event{
		Time: int64(1e18 + i), Generation: 7,
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("fd00::2"),
		Sport: uint16(i), Dport: 80, Proto: 6, Hook: 2, Ifindex: 42, Allowed: i%2 == 0,
		Reason: ruleset.NoRuleMatched, Dir: ruleset.Egress, Clause: -1, LatencyNs: uint32(i * 3), Source: SourceRequest,
	}
}

func readAll(rd *Reader) (out []Event, lost uint64) {
	buf := make([]Event, 5)
	for {
		n, l := rd.Read(buf)
		lost += l
		out = append(out, buf[:n]...)
		if n == 0 {
			return out, lost
		}
	}
}

func TestRingRoundTrip(t *testing.T) {
	r := NewRing("n1", 16)
	if r.Enabled() {
		t.Fatal("enabled with no reader")
	}
	rd := r.Follow()
	if !r.Enabled() {
		t.Fatal("not enabled with a reader")
	}
	var want []Event
	for i := range 10 {
		e := event(i)
		r.Record(&e)
		e.Seq = uint64(i + 1)
		want = append(want, e)
	}
	got, lost := readAll(rd)
	if lost != 0 {
		t.Errorf("lost %d", lost)
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("records (-want +got):\n%s", d)
	}
	rd.Close()
	rd.Close() // idempotent
	if r.Enabled() {
		t.Error("still enabled after Close")
	}
}

func TestRingWraparoundAndOverrun(t *testing.T) {
	r := NewRing("n1", 8)
	rd := r.Follow()
	defer rd.Close()
	for i := range 5 {
		e := event(i)
		r.Record(&e)
	}
	got, lost := readAll(rd)
	if len(got) != 5 || lost != 0 {
		t.Fatalf("read %d lost %d, want 5 and 0", len(got), lost)
	}
	// 20 more: the ring holds 8, so the reader lost 12 and reads the
	// newest 8, in order, across the wrap.
	for i := 5; i < 25; i++ {
		e := event(i)
		r.Record(&e)
	}
	got, lost = readAll(rd)
	if lost != 12 || len(got) != 8 {
		t.Fatalf("read %d lost %d, want 8 and 12", len(got), lost)
	}
	for j, e := range got {
		if want := uint64(18 + j); e.Seq != want || e.Sport != uint16(want-1) {
			t.Errorf("record %d: seq %d sport %d, want seq %d", j, e.Seq, e.Sport, want)
		}
	}
	// Backlog: the 8 newest.
	b := r.Backlog()
	got, lost = readAll(b)
	if len(got) != 8 || got[0].Seq != 18 || !b.Done() {
		t.Errorf("backlog: %d records from seq %d, done %v", len(got), got[0].Seq, b.Done())
	}
}

func TestRingConcurrentWriters(t *testing.T) {
	const writers, each = 4, 20000
	r := NewRing("n1", 1024)
	rd := r.Follow()
	defer rd.Close()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := event(i)
				e.Ifindex = uint32(w)
				e.Generation = uint64(i) // checked against Sport: no torn record
				r.Record(&e)
			}
		}()
	}
	done := make(chan struct{})
	var got, lost uint64
	go func() {
		defer close(done)
		buf := make([]Event, 64)
		for got+lost < writers*each {
			n, l := rd.Read(buf)
			lost += l
			for _, e := range buf[:n] {
				if uint64(e.Sport) != e.Generation%65536 || e.Dport != 80 || e.Dst != netip.MustParseAddr("fd00::2") {
					t.Errorf("torn record %+v", e)
					return
				}
			}
			got += uint64(n)
		}
	}()
	wg.Wait()
	<-done
	if got+lost != writers*each {
		t.Errorf("read %d + lost %d, want %d", got, lost, writers*each)
	}
	t.Logf("read %d, lost %d (overwritten before the reader got there), busy %d", got, lost, r.Busy())
}

func TestRecordAllocs(t *testing.T) {
	r := NewRing("n1", 64)
	rd := r.Follow()
	defer rd.Close()
	e := event(1)
	if n := testing.AllocsPerRun(1000, func() { r.Record(&e) }); n != 0 {
		t.Errorf("Record allocates %v per call", n)
	}
	buf := make([]Event, 8)
	if n := testing.AllocsPerRun(1000, func() { r.Record(&e); rd.Read(buf) }); n != 0 {
		t.Errorf("Read allocates %v per call", n)
	}
}

// BenchmarkTraceRecord is what a worker pays per verdict: with nobody
// listening only the Enabled check, with a listener the record itself.
func BenchmarkTraceRecord(b *testing.B) {
	e := event(1)
	b.Run("no-listener", func(b *testing.B) {
		r := NewRing("n1", 4096)
		b.ReportAllocs()
		for b.Loop() {
			if r.Enabled() {
				r.Record(&e)
			}
		}
		if r.Written() != 0 {
			b.Fatalf("recorded %d with no listener", r.Written())
		}
	})
	b.Run("listener", func(b *testing.B) {
		r := NewRing("n1", 4096)
		rd := r.Follow()
		defer rd.Close()
		b.ReportAllocs()
		for b.Loop() {
			if r.Enabled() {
				r.Record(&e)
			}
		}
		if r.Written() != uint64(b.N) {
			b.Fatalf("recorded %d of %d", r.Written(), b.N)
		}
	})
	b.Run("listener-parallel", func(b *testing.B) {
		r := NewRing("n1", 4096)
		rd := r.Follow()
		defer rd.Close()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			e := event(2)
			for pb.Next() {
				if r.Enabled() {
					r.Record(&e)
				}
			}
		})
	})
}
