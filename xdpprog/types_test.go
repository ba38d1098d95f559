package xdpprog

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPuntMAC(t *testing.T) {
	tests := []struct {
		hook    Hook
		ifindex uint32
		want    string
	}{
		{HookEgress, 7, "02:01:00:00:00:07"},
		{HookIngress, 0x01020304, "02:02:01:02:03:04"},
		{HookIngress, 0xffffffff, "02:02:ff:ff:ff:ff"},
	}
	for _, tc := range tests {
		mac := EncodePuntMAC(tc.hook, tc.ifindex)
		if mac.String() != tc.want {
			t.Errorf("EncodePuntMAC(%v, %d) = %v, want %v", tc.hook, tc.ifindex, mac, tc.want)
		}
		h, ifindex, ok := DecodePuntMAC(mac)
		if !ok || h != tc.hook || ifindex != tc.ifindex {
			t.Errorf("DecodePuntMAC(%v) = %v, %d, %v", mac, h, ifindex, ok)
		}
	}
}

func TestDecodePuntMACRejects(t *testing.T) {
	for _, s := range []string{"aa:bb:cc:dd:ee:ff", "02:00:00:00:00:01", "02:03:00:00:00:01", "ff:ff:ff:ff:ff:ff"} {
		mac, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		if h, i, ok := DecodePuntMAC(mac); ok {
			t.Errorf("DecodePuntMAC(%s) = %v, %d, true; want not ok", s, h, i)
		}
	}
	if _, _, ok := DecodePuntMAC([]byte{2, 1, 0}); ok {
		t.Error("DecodePuntMAC accepted 3 bytes")
	}
}

func TestFlowKey(t *testing.T) {
	tests := []struct{ src, dst string }{
		{"10.0.0.1:1234", "10.0.0.2:80"},
		{"[fd00::1]:53", "[fd00::2]:65535"},
	}
	for _, tc := range tests {
		src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
		k := NewFlowKey(HookIngress, 6, 9, src, dst)
		if diff := cmp.Diff([]netip.AddrPort{src, dst}, []netip.AddrPort{k.Src(), k.Dst()}, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	k := NewFlowKey(HookEgress, 17, 1, netip.MustParseAddrPort("1.2.3.4:258"), netip.MustParseAddrPort("5.6.7.8:1"))
	wantSrc := [16]byte{10: 0xff, 11: 0xff, 12: 1, 13: 2, 14: 3, 15: 4}
	if k.Saddr != wantSrc {
		t.Errorf("IPv4 source stored as %v, want v4-mapped %v", k.Saddr, wantSrc)
	}
	// The kernel sees the port's bytes in network order: 258 = 0x01 0x02.
	if b := [2]byte{byte(k.Sport), byte(k.Sport >> 8)}; b != [2]byte{1, 2} {
		t.Errorf("sport bytes in memory = %v, want [1 2]", b)
	}
}

func TestNames(t *testing.T) {
	for c := Counter(0); c < NumCounters; c++ {
		if c.String() == "" || c.String() == "counter?" {
			t.Errorf("counter %d has no name", c)
		}
	}
	if IsolatedFlag(HookIngress) != PodIsolatedIngress || IsolatedFlag(HookEgress) != PodIsolatedEgress {
		t.Error("IsolatedFlag maps hooks to the wrong bits")
	}
}
