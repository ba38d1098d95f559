// Package ruleset is the compiled form of NetworkPolicy that the dataplane
// reads for every new flow: per enforcement point (a pod and a direction) a
// table of clauses, a prefix trie over the peer address whose entries carry
// the bitmap of clauses that admit that address, and per-protocol port
// interval tables carrying bitmaps; a flow is allowed iff the two bitmaps
// intersect, and the set bits name the policies and rules that allowed it.
//
// A Ruleset is immutable once built and is published through a Publisher
// (an atomic.Pointer with a generation number). Lookups take no locks, never
// allocate, never evaluate a selector and never iterate a map. Pods with the
// same policy set share one Table.
//
// This package must never import control/: the compiler builds rulesets with
// the Builder API below, the dataplane only reads them.
package ruleset
