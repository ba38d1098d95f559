package flowtable

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// TestFragmentPorts: a later fragment takes the ports the kernel recorded
// for its datagram's first fragment, at the same hook and veth, while they
// are fresh; otherwise it has none.
func TestFragmentPorts(t *testing.T) {
	flows := flowsMap(t)
	frags, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 44, ValueSize: 16, MaxEntries: 64})
	if err != nil {
		t.Skipf("skipping: cannot create a BPF map: %v", err)
	}
	defer frags.Close()
	tbl := NewTable(flows, frags)
	w := tbl.NewWriter()
	first := key(4242) // the first fragment's key, as tcx built it
	fk := xdpprog.FragKey{Hook: first.Hook, Proto: first.Proto, Ifindex: first.Ifindex, Id: 99, Saddr: first.Saddr, Daddr: first.Daddr}
	if err := frags.Put(&fk, &xdpprog.FragVal{Sport: first.Sport, Dport: first.Dport, SeenNs: tbl.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	later := first
	later.Sport, later.Dport = 0, 0
	if k := later; !w.FragmentPorts(&k, 99) || k != first {
		t.Errorf("FragmentPorts = %+v, want the first fragment's key %+v", k, first)
	}
	if k := later; w.FragmentPorts(&k, 98) {
		t.Error("another datagram's fragment got ports")
	}
	other := later
	other.Hook = uint8(xdpprog.HookEgress)
	if w.FragmentPorts(&other, 99) {
		t.Error("the same datagram at the other hook got ports")
	}
	stale := uint64(0)
	if now := tbl.clock.Now(); now > uint64(fragTTL+time.Second) {
		stale = now - uint64(fragTTL+time.Second)
	}
	frags.Put(&fk, &xdpprog.FragVal{Sport: first.Sport, Dport: first.Dport, SeenNs: stale})
	if k := later; w.FragmentPorts(&k, 99) {
		t.Error("ports recorded longer ago than the reassembly timeout were used")
	}
	if k := later; NewTable(flows, nil).NewWriter().FragmentPorts(&k, 99) {
		t.Error("without a frags map a later fragment got ports")
	}
}

// TestCachedReply: an ICMP error relates to a flow whose reply key holds an
// allow; current says it is of the generation the writer stamps.
func TestCachedReply(t *testing.T) {
	tbl := NewTable(flowsMap(t), nil)
	tbl.SetGeneration(5)
	w := tbl.NewWriter()
	fwd := key(1000)
	if err := w.Record(&fwd, true); err != nil {
		t.Fatal(err)
	}
	reply := ReplyKey(&fwd)
	if allowed, current := w.CachedReply(&reply); !allowed || !current {
		t.Errorf("reply of an allowed flow: allowed %v current %v, want both", allowed, current)
	}
	tbl.SetGeneration(6)
	if allowed, current := w.CachedReply(&reply); !allowed || current {
		t.Errorf("after a generation change: allowed %v current %v, want allowed, not current", allowed, current)
	}
	denied := key(1001)
	if err := w.Record(&denied, false); err != nil {
		t.Fatal(err)
	}
	if allowed, _ := w.CachedReply(&denied); allowed {
		t.Error("a cached deny counted as an allowed flow")
	}
	unknown := key(1002)
	if allowed, _ := w.CachedReply(&unknown); allowed {
		t.Error("a flow never seen counted as allowed")
	}
}
