// Package nft translates a cluster's NetworkPolicies into an nftables
// ruleset in the shape nftables-based implementations use, for the bench
// harness's kernel-filtering baseline: a forward base chain that accepts
// established/related conntrack state, verdict maps from pod address to a
// per-pod chain (egress chains `return` on allow so the ingress check still
// runs; ingress chains `accept`), one rule per (policy, rule) matching a
// named interval set of peer addresses (selected pods' IPs, ipBlocks minus
// their excepts) and a named set of protocol . port intervals, and a final
// drop. Chains with identical rules are shared between pods. Render
// enforces every pod; RenderNode only the pods of one node, for a ruleset
// per node (as the lab benchmarks load one into each node's namespace).
//
// Scope: IPv4 only (the benchmark's traffic is IPv4). Named ports resolve
// on the destination: for ingress on the enforcing pod, for egress per
// peer pod (address . protocol . port elements). It is a benchmark
// baseline, checked on the benchmark's own flows; the project's semantics
// live in control/compile, never here.
package nft
