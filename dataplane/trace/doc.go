// Package trace records every slow-path verdict in a fixed-size, lock-free
// ring and turns the records back into named, filterable entries for
// `xdpolicy trace`.
//
// Writers are the slow-path workers and the requests consumer. They share one
// multi-producer ring: a writer claims a ticket with one atomic add, then
// owns the ticket's slot through a per-slot sequence word (a seqlock: odd
// while being written, 2×ticket once complete) and stores the record as
// atomic words, so readers never see torn records and the race detector sees
// no data race. One shared ring rather than one per worker because readers
// then see a single order without merging, and the extra cost (a contended
// atomic add among a handful of workers) is paid only while someone listens,
// next to a slow path whose cache writes are system calls. The oldest
// records are overwritten; each reader keeps its own cursor and learns from
// the tickets how many records it lost.
//
// A record holds numbers only: addresses, ports, hook, verdict, reason, the
// direction and clause index of the deciding table, and the snapshot
// generation. Pods, policies and rules are named when a record is read,
// against the snapshot of that generation kept by a History.
//
// What it must never do: allocate, block or take a lock when recording
// (Ring.Record), or cost a worker more than one atomic load while nobody
// listens (Ring.Enabled).
package trace
