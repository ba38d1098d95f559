// Package afxdp is xdpolicy's AF_XDP layer: a UMEM (the mmapped frame area
// shared with the kernel), its fill and completion rings, and AF_XDP sockets
// with RX and/or TX rings, written directly on golang.org/x/sys/unix.
//
// The dataplane receives punted frames on RX sockets bound to every RX queue
// of the punt veth (dp1; see RxQueues) and re-injects allowed frames, without
// copying them, on TX-only sockets bound to pod veths, possibly inside the
// pod's network namespace (SocketOptions.Netns). All those sockets share one
// UMEM (XDP_SHARED_UMEM; a socket on another device or queue gets its own
// fill and completion rings, kernel >= 5.10), so a received descriptor can be
// handed to any socket's Transmit as it is.
//
// What it must never do: allocate or panic per packet. Receive, Transmit,
// Fill, Complete, Kick, Poll, Frame and the FreeList fill or drain
// caller-owned slices; ring indices are read and written with sync/atomic
// and descriptors are viewed with unsafe.Slice over the mmapped rings. Kick
// errors are returned or counted, never raised. Besides xdpprog's loader this
// is the one package that talks to the kernel through x/sys/unix for AF_XDP;
// the rest of the dataplane uses its typed API.
//
// Ownership: every frame is owned by exactly one party at a time: a
// FreeList, the kernel (after Fill or Transmit), or the caller (after
// Receive or Complete). A free frame goes back to the FreeList it was
// given to at the start (see FreeList), whoever completes it. Each ring is single-producer single-consumer, so one
// goroutine at a time may call each of Receive, Transmit/Kick, Fill and
// Complete on a socket.
//
// Modes: veths give copy mode (XDP_COPY); UMEMConfig.BindFlags chooses. In
// copy mode the kernel sends at most a small batch of TX descriptors per
// kick, so Kick repeats while the kernel makes progress and otherwise leaves
// the rest for the next call. Frames re-injected on a veth reach the peer's
// stack whether or not the peer has an XDP program, but as raw frames: their
// L4 checksum must be complete (a veth pod's partial checksum is dropped).
//
// # Sizing for 250 pods per node
//
// Re-injection needs a TX-only socket per pod and direction: one on the pod
// end P (leaving the pod), one on the host end H (entering it), T = 500
// sockets. With F frames of S bytes:
//
//   - UMEM: F*S bytes of user memory, pinned once however many sockets
//     share it: F=4096, S=2048 → 8 MiB.
//   - RX sockets, one per punt queue (one on a default veth): rx 2048*16 +
//     fill 2048*8 bytes of rings = 48 KiB, plus the kernel buffer pool below.
//   - Each TX-only socket: rings tx 256*16 + completion 256*8 + fill 8*8
//     bytes, 4 pages = 16 KiB. But every socket on its own device/queue also
//     gets a kernel buffer pool with one descriptor (~126 bytes, measured on
//     6.18 as unreclaimable slab) per UMEM frame, whatever its ring sizes:
//     F=4096 → 504 KiB per socket.
//
// So T=500, F=4096: 8 MiB + 500*(16+504) KiB ≈ 262 MiB of kernel memory,
// dominated by the per-socket pools, not by rings or frames. F=1024
// (2 MiB UMEM, enough for a 512-entry fill ring plus 512 frames in flight):
// 2 MiB + 500*(16+126) KiB ≈ 71 MiB. Keep F as small as the punt rate allows
// and open TX sockets lazily for pods that actually have punted traffic.
// A socket created in a pod's netns pins that netns until it is closed:
// close it when the pod goes (Kick then reports ENETDOWN).
package afxdp
