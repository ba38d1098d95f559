// Package worker is the slow path of the dataplane: each Worker owns one
// AF_XDP RX socket of the punt port and, per batch of punted frames, loads
// the current ruleset once, decodes every frame, reads its hook and host
// veth from the punt MAC, decides the flow, caches the verdict in the
// kernel's flow table (forward and reply), restores the real destination
// MAC, completes the L4 checksum and re-injects the frame, without copying
// it, on the pod's TX-only socket. Denied frames go back to the fill ring.
//
// What it must never do: allocate or panic per packet (descriptor, address
// and key buffers are owned by the Worker and reused), allow a frame when
// there is no ruleset, or re-inject a frame before its cache entry is
// written.
package worker
