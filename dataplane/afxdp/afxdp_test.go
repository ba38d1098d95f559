package afxdp

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// rxSocket makes the UMEM and the RX socket on dp1's queue 0 inside ns N,
// registers it in the XSKMAP and fills the fill ring.
func (l *lab) rxSocket(t *testing.T, cfg UMEMConfig, opts SocketOptions) (*UMEM, *Socket, *FreeList) {
	t.Helper()
	u, err := NewUMEM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	opts.RX, opts.Netns = true, l.n.h
	rx, err := u.NewSocket(l.dp1.index, 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.xsks.Put(uint32(0), uint32(rx.FD())); err != nil {
		t.Fatalf("XSKMAP update: %v", err)
	}
	free := u.NewFreeList(0, u.NumFrames())
	buf := make([]uint64, opts.FillSize)
	if len(buf) == 0 {
		buf = make([]uint64, 2048)
	}
	n := free.GetBatch(buf[:min(len(buf), free.Len()/2)])
	if got := rx.Fill(buf[:n]); got != n {
		t.Fatalf("Fill took %d of %d", got, n)
	}
	return u, rx, free
}

// receiveMatching sends want and polls rx until it arrives, recycling
// other frames into free. It sends again every poll interval: a frame sent
// while a freshly created veth is still coming up is lost, and on a loaded
// machine that window can outlast the first send.
func receiveMatching(t *testing.T, l *lab, u *UMEM, rx *Socket, free *FreeList, want []byte) Desc {
	t.Helper()
	descs := make([]Desc, 16)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		l.send(want)
		if _, err := rx.Poll(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		n := rx.Receive(descs)
		var found *Desc
		for i := range descs[:n] {
			if found == nil && bytes.Equal(u.Frame(descs[i].Addr, int(descs[i].Len)), want) {
				found = &descs[i]
				continue
			}
			free.Put(descs[i].Addr)
		}
		if found != nil {
			return *found
		}
	}
	st, _ := rx.Stats()
	t.Fatalf("frame not received within 5s; stats %+v", st)
	return Desc{}
}

func TestRxQueues(t *testing.T) {
	l := newLab(t)
	n, err := RxQueues("dp1", l.n.h)
	if err != nil || n != 1 {
		t.Fatalf("RxQueues(dp1) = %d, %v; want 1 (a default veth has one RX queue)", n, err)
	}
	if _, err := RxQueues("nonexistent0", l.n.h); err == nil {
		t.Fatal("RxQueues of a missing interface: no error")
	}
}

// (a) A frame written into the punt veth's peer is redirected by XDP into
// the RX socket byte for byte.
func TestReceive(t *testing.T) {
	l := newLab(t)
	u, rx, free := l.rxSocket(t, UMEMConfig{NumFrames: 64, BindFlags: unix.XDP_COPY}, SocketOptions{})
	frame := l.frameToHost(9, []byte("hello af_xdp"))
	d := receiveMatching(t, l, u, rx, free, frame)
	if d.Len != uint32(len(frame)) || u.FrameBase(d.Addr) == d.Addr {
		t.Errorf("desc %+v: want len %d and an address past the frame's headroom", d, len(frame))
	}
}

// (b) The frame received on dp1 is transmitted unchanged, from the same
// UMEM address, by a TX-only socket made inside another namespace on
// another veth, and reaches a real UDP socket behind that veth's peer.
func TestZeroCopyReinject(t *testing.T) {
	l := newLab(t)
	u, rx, free := l.rxSocket(t, UMEMConfig{NumFrames: 64, BindFlags: unix.XDP_COPY}, SocketOptions{})
	tx, err := u.NewSocket(l.pod0.index, 0, SocketOptions{TX: true, Netns: l.p.h})
	if err != nil {
		t.Fatal(err)
	}
	srv := listenUDP(t, l.h, "192.0.2.1:7000")
	payload := []byte("re-injected without a copy")
	frame := l.frameToHost(7000, payload)
	d := receiveMatching(t, l, u, rx, free, frame)

	if n := tx.Transmit([]Desc{d}); n != 1 {
		t.Fatalf("Transmit queued %d", n)
	}
	srv.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil {
		st, _ := tx.Stats()
		t.Fatalf("UDP server got nothing: %v; tx stats %+v", err, st)
	}
	if !bytes.Equal(buf[:n], payload) || from.Addr() != l.podIP {
		t.Fatalf("got %q from %v, want %q from %v", buf[:n], from, payload, l.podIP)
	}
	addrs := make([]uint64, 4)
	deadline := time.Now().Add(time.Second)
	var c int
	for c == 0 && time.Now().Before(deadline) {
		c = tx.Complete(addrs)
	}
	if c != 1 || addrs[0] != d.Addr {
		t.Fatalf("completion %v (n=%d), want address %#x", addrs[:c], c, d.Addr)
	}
}

// (c) Many more frames than ring slots and UMEM frames flow RX → TX →
// completion → fill; every frame address is accounted for at the end.
func TestWraparoundAccounting(t *testing.T) {
	l := newLab(t)
	const frames, ring = 32, 8
	u, rx, free := l.rxSocket(t, UMEMConfig{NumFrames: frames, BindFlags: unix.XDP_COPY},
		SocketOptions{RxSize: ring, FillSize: ring, TxSize: ring})
	tx, err := u.NewSocket(l.pod0.index, 0, SocketOptions{TX: true, TxSize: ring, CompSize: ring, Netns: l.p.h})
	if err != nil {
		t.Fatal(err)
	}
	srv := listenUDP(t, l.h, "192.0.2.1:7001")
	// The server counts what it gets; each round waits for it so the
	// socket's receive buffer never overflows (that would be the test's
	// loss, not the dataplane's).
	var delivered atomic.Int64
	srv.SetReadDeadline(time.Now().Add(30 * time.Second))
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := srv.Read(buf); err != nil {
				return
			}
			delivered.Add(1)
		}
	}()

	const rounds, burst = 60, 6
	descs := make([]Desc, ring)
	out := make([]Desc, 0, 2*ring)
	addrs := make([]uint64, ring)
	sent, forwarded := 0, 0
	service := func() {
		n := tx.Complete(addrs)
		free.PutBatch(addrs[:n])
		n = free.GetBatch(addrs)
		k := rx.Fill(addrs[:n])
		free.PutBatch(addrs[k:n])
		n = rx.Receive(descs[:min(len(descs), cap(out)-len(out))])
		for _, d := range descs[:n] {
			if binary.BigEndian.Uint16(u.Frame(d.Addr, int(d.Len))[36:]) == 7001 {
				out = append(out, d)
			} else {
				free.Put(d.Addr)
			}
		}
		k = tx.Transmit(out)
		forwarded += k
		out = append(out[:0], out[k:]...)
	}
	for r := 0; r < rounds; r++ {
		for i := 0; i < burst; i++ {
			l.send(l.frameToHost(7001, []byte{byte(r), byte(i)}))
			sent++
		}
		deadline := time.Now().Add(2 * time.Second)
		for (forwarded < sent || delivered.Load() < int64(sent)) && time.Now().Before(deadline) {
			rx.Poll(time.Millisecond)
			service()
		}
	}
	// Drain completions.
	deadline := time.Now().Add(2 * time.Second)
	for tx.TxPending() > 0 || free.Len()+l.fillOutstanding(rx) < frames {
		if time.Now().After(deadline) {
			break
		}
		tx.Kick()
		n := tx.Complete(addrs)
		free.PutBatch(addrs[:n])
	}
	st, _ := rx.Stats()
	if forwarded != sent {
		t.Errorf("forwarded %d of %d frames; rx stats %+v", forwarded, sent, st)
	}
	// Every frame is either free or on the fill ring, exactly once.
	seen := map[uint64]bool{}
	for _, a := range free.addrs {
		seen[a] = true
	}
	for i := rx.fill.ring.consumerIndex(); i != rx.fill.cachedProd; i++ {
		seen[u.FrameBase(rx.fill.addrs[i&rx.fill.mask])] = true
	}
	if len(seen) != frames || free.Len()+l.fillOutstanding(rx) != frames {
		t.Errorf("accounted %d distinct frames (free %d + fill %d), want %d",
			len(seen), free.Len(), l.fillOutstanding(rx), frames)
	}
	if got := delivered.Load(); got != int64(sent) {
		var snmp []byte
		l.h.do(t, func() (err error) { snmp, err = os.ReadFile("/proc/thread-self/net/snmp"); return err })
		t.Errorf("UDP server got %d of %d datagrams; host0's netns:\n%s", got, sent, snmp)
	}
	if sent < 10*frames {
		t.Fatalf("test too small to wrap rings: %d frames", sent)
	}
}

func (l *lab) fillOutstanding(s *Socket) int { return int(s.fill.pending()) }

// (d) The steady state of a worker allocates nothing.
func TestNoAllocs(t *testing.T) {
	l := newLab(t)
	u, rx, free := l.rxSocket(t, UMEMConfig{NumFrames: 512, BindFlags: unix.XDP_COPY}, SocketOptions{})
	tx, err := u.NewSocket(l.pod0.index, 0, SocketOptions{TX: true, Netns: l.p.h})
	if err != nil {
		t.Fatal(err)
	}
	// Queue frames on the RX ring before measuring. Their destination MAC
	// is not host0's, so host0 drops them after the TX and nothing in this
	// process allocates on their behalf.
	frame := l.frameToHost(7002, []byte("steady"))
	copy(frame[0:6], []byte{0x02, 0, 0, 0, 0, 0x99})
	for i := 0; i < 150; i++ {
		l.send(frame)
	}
	// Delivery to dp1 is asynchronous (NAPI): wait until the frames are on
	// the RX ring.
	for deadline := time.Now().Add(3 * time.Second); rx.rx.pending() < 120 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	descs := make([]Desc, 4)
	addrs := make([]uint64, 4)
	received := 0
	allocs := testing.AllocsPerRun(100, func() {
		rx.Poll(0)
		n := rx.Receive(descs)
		received += n
		tx.Transmit(descs[:n])
		n = tx.Complete(addrs)
		free.PutBatch(addrs[:n])
		n = free.GetBatch(addrs)
		k := rx.Fill(addrs[:n])
		free.PutBatch(addrs[k:n])
		u.Frame(descs[0].Addr, 14)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per steady-state iteration, want 0", allocs)
	}
	if received < 100 {
		t.Errorf("only %d frames went through the measured loop", received)
	}
	if _, err := tx.Stats(); err != nil {
		t.Fatal(err)
	}
}

// (e) Close is idempotent, and the test's namespaces and links go away.
func TestCloseTwiceAndCleanup(t *testing.T) {
	requirePrivileges(t)
	var names []string
	t.Run("lab", func(t *testing.T) {
		l := newLab(t)
		names = []string{l.s.name, l.n.name, l.p.name, l.h.name}
		u, rx, _ := l.rxSocket(t, UMEMConfig{NumFrames: 16, BindFlags: unix.XDP_COPY}, SocketOptions{})
		tx, err := u.NewSocket(l.pod0.index, 0, SocketOptions{TX: true, Netns: l.p.h})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Close(); err != nil {
			t.Fatal(err)
		}
		if err := tx.Close(); err != nil {
			t.Fatalf("second socket Close: %v", err)
		}
		if err := u.Close(); err != nil {
			t.Fatal(err)
		}
		if err := u.Close(); err != nil {
			t.Fatalf("second UMEM Close: %v", err)
		}
		// Everything is a no-op after Close, never a crash.
		if rx.Receive(make([]Desc, 1)) != 0 || rx.Fill([]uint64{0}) != 0 || rx.Complete(make([]uint64, 1)) != 0 ||
			tx.Transmit([]Desc{{}}) != 0 {
			t.Fatal("ring operation on a closed socket did something")
		}
		if _, err := rx.Stats(); err == nil {
			t.Fatal("Stats after Close: no error")
		}
		if _, err := u.NewSocket(l.dp1.index, 0, SocketOptions{RX: true}); err == nil {
			t.Fatal("NewSocket after Close: no error")
		}
		// Deleting one end of a veth deletes both.
		lk, err := l.n.nl.LinkByName("dp1")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.n.nl.LinkDel(lk); err != nil {
			t.Fatal(err)
		}
		if _, err := l.n.nl.LinkByName("dp1"); err == nil {
			t.Fatal("dp1 still exists after delete")
		}
		if _, err := l.s.nl.LinkByName("s0"); err == nil {
			t.Fatal("s0 still exists after deleting its peer")
		}
	})
	// The subtest's cleanups have run.
	for _, name := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
			t.Errorf("netns %s still exists", name)
		}
		if h, err := netns.GetFromName(name); err == nil {
			h.Close()
			t.Errorf("netns %s still opens", name)
		}
	}
}

// BenchmarkRingOps measures one producer/consumer round trip of a batch of
// 64 addresses through the ring code, with both ends in user space over
// plain memory (no kernel), and checks every batch.
func BenchmarkRingOps(b *testing.B) {
	const size, batch = 2048, 64
	mem := make([]byte, 256+size*8)
	prod := addrRing{ring: newRing(mem, 0, 64, 128, size, true)}
	prod.addrs = unsafeAddrs(mem[256:], size)
	cons := addrRing{ring: newRing(mem, 0, 64, 128, size, false)}
	cons.addrs = prod.addrs
	in := make([]uint64, batch)
	out := make([]uint64, batch)
	for i := range in {
		in[i] = uint64(i) * 2048
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		in[0] = uint64(i)
		if n := prod.produce(in); n != batch {
			b.Fatalf("produced %d", n)
		}
		if n := cons.consume(out); n != batch || out[0] != uint64(i) || out[batch-1] != in[batch-1] {
			b.Fatalf("consumed %d, first %d", n, out[0])
		}
	}
}
