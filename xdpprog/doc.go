// Package xdpprog holds xdpolicy's kernel programs and everything needed to
// load, pin and attach them:
//
//   - tcx.c: the fast path, a flow-verdict cache run by tcx (or clsact) on the
//     host end H of every pod veth. Cached allows pass, cached denies drop,
//     everything else is punted to the punt veth dp0 with its hook and H's
//     ifindex encoded in the Ethernet destination (see [EncodePuntMAC]).
//   - punt.c: an XDP program for dp1, the far end of the punt veth, that hands
//     each frame to the AF_XDP socket of its RX queue.
//
// The C sources are compiled by bpf2go (go generate ./xdpprog/); the
// generated *_bpfel.go and *_bpfel.o files are committed, so building needs
// no clang.
//
// This package never decides policy and never writes verdicts on its own:
// the programs only apply what userspace cached, and fail closed (drop) for
// isolated pods when no agent is there to ask. Its attach and detach helpers
// never touch an interface, qdisc, filter or pin they did not create, apart
// from replacing their own earlier attachments on restart.
package xdpprog
