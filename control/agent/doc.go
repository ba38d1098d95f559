// Package agent wires the node agent together: a control Source feeds
// cluster snapshots; each is compiled, published to the workers, pushed
// into the kernel (pods map, generation) and followed by an eager walk of
// the flow cache; the punt port, the pod wiring, the slow-path workers, the
// requests consumer, the deny sweeper and the ops HTTP server run beside
// it until the context ends, and then everything is torn down (or, with
// KeepOnExit, left pinned and attached for the next agent).
//
// What it must never do: enforce a snapshot other than the newest one it
// compiled, report ready before the first snapshot is enforced, or touch
// interfaces other than dp0/dp1 and the host veths of local pods.
package agent
