package xdpprog

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPuntEncoding(t *testing.T) {
	tests := []struct {
		hook     Hook
		ifindex  uint32
		dst, src string // the frame's addresses after PutPunt
	}{
		// Leaving the pod: the source carries the encoding, the
		// destination (a bridge's or a peer's MAC) is kept.
		{HookEgress, 7, "aa:bb:cc:dd:ee:01", "03:01:00:00:00:07"},
		{HookIngress, 0x01020304, "02:02:01:02:03:04", "aa:bb:cc:dd:ee:02"},
		{HookIngress, 0xffffffff, "02:02:ff:ff:ff:ff", "aa:bb:cc:dd:ee:02"},
	}
	pod := [6]byte{0x0a, 1, 2, 3, 4, 5}
	for _, tc := range tests {
		frame := make([]byte, 14)
		copy(frame[0:], []byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01})
		copy(frame[6:], []byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x02})
		orig := append([]byte(nil), frame...)
		PutPunt(frame, tc.hook, tc.ifindex)
		if dst, src := net.HardwareAddr(frame[0:6]).String(), net.HardwareAddr(frame[6:12]).String(); dst != tc.dst || src != tc.src {
			t.Errorf("PutPunt(%v, %d): dst %s src %s, want dst %s src %s", tc.hook, tc.ifindex, dst, src, tc.dst, tc.src)
		}
		h, ifindex, ok := DecodePunt(frame)
		if !ok || h != tc.hook || ifindex != tc.ifindex {
			t.Errorf("DecodePunt(%x) = %v, %d, %v", frame[:12], h, ifindex, ok)
		}
		RestorePodMAC(frame, tc.hook, &pod)
		copy(orig[PuntMACOffset(tc.hook):], pod[:])
		if diff := cmp.Diff(orig, frame); diff != "" {
			t.Errorf("RestorePodMAC (-want +got):\n%s", diff)
		}
	}
}

func TestDecodePuntRejects(t *testing.T) {
	for _, s := range []string{
		"aa:bb:cc:dd:ee:ff aa:bb:cc:dd:ee:ff",
		"02:01:00:00:00:01 aa:bb:cc:dd:ee:ff", // egress encoded where ingress goes
		"aa:bb:cc:dd:ee:ff 03:02:00:00:00:01", // ingress encoded where egress goes
		"02:00:00:00:00:01 02:00:00:00:00:01",
		"02:03:00:00:00:01 03:03:00:00:00:01",
		"aa:bb:cc:dd:ee:ff 02:01:00:00:00:01", // unicast prefix in the source
		"ff:ff:ff:ff:ff:ff aa:bb:cc:dd:ee:ff",
	} {
		var frame []byte
		for _, m := range strings.Fields(s) {
			mac, err := net.ParseMAC(m)
			if err != nil {
				t.Fatal(err)
			}
			frame = append(frame, mac...)
		}
		if h, i, ok := DecodePunt(frame); ok {
			t.Errorf("DecodePunt(%s) = %v, %d, true; want not ok", s, h, i)
		}
	}
	if _, _, ok := DecodePunt([]byte{2, 2, 0, 0, 0, 1, 0}); ok {
		t.Error("DecodePunt accepted 7 bytes")
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
