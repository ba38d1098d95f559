// Package punt owns the node-local punt port: the veth pair dp0↔dp1 that
// the tcx programs redirect missed packets into, the XDP program on dp1
// (pinned, so it stays attached while the agent restarts) and one AF_XDP RX
// socket per RX queue of dp1, registered in the XSKMAP, all sharing one
// UMEM with the TX-only re-injection sockets.
//
// What it must never do: touch any interface other than dp0/dp1 of the
// namespace it runs in, or leave an XSKMAP entry pointing at a socket it
// closed (the kernel removes those itself when the socket goes).
package punt
