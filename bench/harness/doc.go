// Package harness runs `xdpolicy bench`: it builds a minimal lab topology
// (a node namespace with a generator pod and a sink pod on Calico-style
// point-to-point veths; every other pod and policy of the synthetic cluster
// exists only as an object in the agent's cluster YAML), and measures, in
// the same run and on the same topology, packets delivered to the sink
// with no enforcement, with the same policies compiled to nftables
// (bench/nft), and with the xdpolicy agent; plus first-packet latency,
// CPU per million packets and a 2x overload run.
//
// Measures, and why they are honest: delivered packets are the sink veth's
// rx_packets (netlink, read in the sink's namespace before and after a
// run: no per-packet cost, counts only frames that crossed the node); the
// sink drops the load port in a raw prerouting hook so it sends no
// ICMP/RST back. Correctness is checked before every measurement: an
// allowed flow reaches a UDP socket in the sink (so checksums are right),
// a denied one does not. Latency: the generator writes CLOCK_REALTIME into
// each probe's payload just before the send; the sink's socket reports the
// kernel receive time (SO_TIMESTAMPNS); both namespaces share the clock.
// CPU: the agent's utime+stime (/proc/<pid>/stat) and the whole machine's
// busy time (/proc/stat), per million delivered packets.
//
// What it must never do: leave namespaces, processes, pinned maps or
// nftables tables behind (everything has a unique name and is removed,
// also on failure), or assert speed (it reports ratios; tests check only
// that it works).
package harness
