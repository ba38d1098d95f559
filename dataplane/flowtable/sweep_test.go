package flowtable

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// flowsMap makes an LRU hash shaped like the kernel's flows map.
func flowsMap(t *testing.T) *ebpf.Map {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create BPF maps")
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 44, ValueSize: 16, MaxEntries: 1024})
	if err != nil {
		t.Skipf("skipping: cannot create a BPF map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func key(port uint16) xdpprog.FlowKey {
	return xdpprog.NewFlowKey(xdpprog.HookIngress, 6, 7,
		netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), 80))
}

// TestSweepDenies checks that expiring denies deletes exactly the old
// denies still in the map, leaving newer denies and entries that an allow
// has overwritten since, and that it does so without walking the map.
func TestSweepDenies(t *testing.T) {
	m := flowsMap(t)
	tbl := NewTable(m, nil)
	w := tbl.NewWriter()
	oldDeny, overwritten, newDeny := key(1), key(2), key(3)
	for _, k := range []xdpprog.FlowKey{oldDeny, overwritten} {
		if err := w.Record(&k, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Record(&overwritten, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := w.Record(&newDeny, false); err != nil {
		t.Fatal(err)
	}
	n, err := tbl.SweepDenies(20 * time.Millisecond)
	if err != nil || n != 1 {
		t.Fatalf("SweepDenies = %d, %v; want 1 (only the old deny)", n, err)
	}
	var v xdpprog.FlowVal
	if m.Lookup(&oldDeny, &v) == nil {
		t.Error("old deny still cached")
	}
	if err := m.Lookup(&overwritten, &v); err != nil || v.Verdict != xdpprog.VerdictAllow {
		t.Errorf("allow that replaced a deny: %v, %+v", err, v)
	}
	if err := m.Lookup(&newDeny, &v); err != nil || v.Verdict != xdpprog.VerdictDeny {
		t.Errorf("new deny: %v, %+v", err, v)
	}
	if n, _ := tbl.SweepDenies(20 * time.Millisecond); n != 0 {
		t.Errorf("second sweep deleted %d, want 0", n)
	}
}

// TestDenyQueueOverflow checks that a queue overflow falls back to one walk
// of the map, so no deny outlives its time.
func TestDenyQueueOverflow(t *testing.T) {
	m := flowsMap(t)
	tbl := NewTable(m, nil)
	w := tbl.NewWriter()
	first := key(1)
	if err := w.Record(&first, false); err != nil {
		t.Fatal(err)
	}
	other := key(2)
	for range denyQueueSize {
		tbl.denies.push(&other, 1) // forgets the first
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := tbl.SweepDenies(10 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var v xdpprog.FlowVal
	if m.Lookup(&first, &v) == nil {
		t.Error("a deny the queue forgot was not found by the fallback walk")
	}
}
