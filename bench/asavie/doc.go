// Package asavie measures github.com/asavie/xdp (v0.3.3), the AF_XDP
// library the design brief names, against xdpolicy's own dataplane/afxdp,
// side by side on a veth pair shaped like the punt veth (MTU punt.MTU, 4 KiB
// UMEM frames, copy mode, xdpprog's punt program redirecting into the
// XSKMAP). BenchmarkAFXDPvsAsavie reports, for receive-and-recycle
// (rx-drop) and receive-and-transmit (forward), packets per CPU second of
// the receiving thread and allocations per packet; TestAsavieSendtoError
// records how each library takes a transmit error.
//
// It is the evidence behind the decision in ARCHITECTURE.md to keep
// dataplane/afxdp. It holds no code outside its tests and must never be
// imported: asavie/xdp is a test-only dependency and must not reach the
// xdpolicy binary (`go list -deps ./cmd/xdpolicy | grep asavie` prints
// nothing).
package asavie
