// Package oracle is a NetworkPolicy verdict oracle that shares no code with
// xdpolicy's compiler: the packet evaluator of sigs.k8s.io/kube-network-policies
// v0.8.0 (its (*Controller).evaluatePacket: egress of the source pod, then
// ingress of the destination pod, pods found by address), fed by informers on
// a real kube-apiserver. What it judges is what the API server stored:
// its defaulting (policyTypes, protocol TCP, the kubernetes.io/metadata.name
// label) and its validation, never control/model's.
//
// Objects reach the server as the raw JSON a user would send (Create), pod
// status through the status subresource, as a kubelet would.
//
// kube-network-policies v0.8.0 exports no evaluator: evaluatePacket is
// reached with a //go:linkname pull of the method and a copy of its
// unexported packet struct's layout, both valid for exactly v0.8.0, which
// New checks in the build information.
//
// It is test-only: it must never be imported by non-test code (the shipped
// binary does not link it), and it must never import anything from control/
// or dataplane/, so that a bug there cannot hide on both sides.
package oracle
