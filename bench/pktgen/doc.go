// Package pktgen is xdpolicy's pktgen-style traffic generator: 64-byte UDP
// datagrams or TCP SYNs, built once from gopacket templates and patched in
// place per packet, transmitted on a TX-only AF_XDP socket (copy mode on a
// veth) from inside the generator's network namespace.
//
// Flows are deterministic for a seed: in NewFlows mode packet i gets the
// i-th element of a seeded permutation of (source address, source port)
// pairs, so no two packets of a run share a 5-tuple; in Established mode
// packets cycle over a fixed set of Flows 5-tuples. Rate control is open
// loop at a target rate, or as fast as the socket takes frames (Rate 0).
// Every packet carries its sequence number and CLOCK_REALTIME send time in
// its payload, for first-packet latency at the sink.
//
// What it must never do: allocate per packet, or send anything but the
// frames of its template (it only rewrites the source address, source
// port, payload and checksums).
package pktgen
