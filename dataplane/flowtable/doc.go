// Package flowtable decides flows and keeps the kernel's flow-verdict cache
// (the pinned "flows" LRU map of xdpprog) in step with the current ruleset.
//
// Decide is the one place that maps a flow seen at a hook to a ruleset
// verdict, with the hook-placement rules of the design: at the leaving
// hook the egress table of the pod owning the source decides, at the
// entering hook the ingress table of the pod owning the destination, and
// traffic from the node's own addresses to its pods is always allowed.
//
// Cache entries: an allow is written for the flow and for its reply as the
// opposite hook of the same veth sees it (FlowVal.Pad[0] = FlagReply marks
// the reply entry, so revalidation re-decides the original direction); a
// deny only for the flow itself, with last_seen = creation time, and the
// sweeper deletes denies older than DenyTTL. A policy change bumps the
// generation: Revalidate re-decides every entry (revalidate) or re-stamps
// every allow (keep).
//
// What it must never do: allocate or block in Decide or in a Writer's
// per-packet methods (they use Writer-owned scratch keys and values), or
// allow a flow when there is no ruleset.
package flowtable
