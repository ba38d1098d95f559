// Package lab builds and tears down a local multi-node cluster made of
// network namespaces, for the end-to-end tests and the demo
// (`xdpolicy lab`): node namespaces joined by a bridged underlay, one
// namespace per pod wired the way routed CNIs (Calico) wire pods, a server
// in every pod on every containerPort, an `external` namespace on the
// underlay, and optionally the real agent in every node namespace.
//
// It also observes reachability: Probe makes real connections from every
// pod (and external) to every pod and reports them in the JSON schema of
// `xdpolicy probe` (query.Result), so observation and prediction compare
// cell by cell.
//
// SCTP on a kernel without an SCTP stack (CONFIG_IP_SCTP not set, detected
// once: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with
// EPROTONOSUPPORT or ESOCKTNOSUPPORT): the dataplane still sees and decides
// SCTP packets, so the lab speaks just enough SCTP over raw IP sockets of
// protocol 132, which such a kernel still delivers to (and then sends no ICMP
// protocol-unreachable). Every pod runs a server then; it answers each INIT
// with an ABORT (ports swapped, verification tag = the INIT's initiate tag,
// CRC32c checked and set): on the pod's SCTP containerPorts the ABORT
// carries a User-Initiated Abort cause whose reason is the pod's "ns/name",
// on any other port it is bare (what a stack without a listener sends, so
// "refused"). The prober sends an INIT from a random port with a random
// initiate tag from a raw socket in the source's namespace, twice within the
// timeout, and accepts only the answer from the destination address with the
// ports swapped and its tag. Those cells say so in their observation:
// "reply ns/pod (raw SCTP: this kernel has no SCTP stack)". No association
// is ever made: it shows that INITs and their answers pass the policy both
// ways, which is what NetworkPolicy decides. See rawsctp.go.
//
// The end-to-end suite (e2e_test.go, root only) runs every scenario of
// deploy/examples step by step on a 2-node lab with the agents and compares
// the observed matrix with the prediction and with the reviewed
// expected.txt; replays a diverse set of upstream e2e tables (the corpus in
// shared/corpus) on one lab, cell by cell against upstream and the
// prediction; probes a dual-stack lab per address family; and
// BenchmarkBulkTCP measures iperf3 between two pods of a node with and
// without enforcement.
//
// It must never touch the root network namespace: every link, address,
// route and sysctl it makes lives in a namespace it created and removes.
// It drives the kernel through the `ip` command (iproute2) and, where a
// thread must enter a namespace, setns on a locked OS thread that is never
// returned to the Go scheduler.
package lab
