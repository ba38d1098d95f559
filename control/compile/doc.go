// Package compile turns the spec (control/model) into the immutable ruleset
// (dataplane/ruleset) the workers read: label selectors become address sets,
// ipBlocks become prefixes with their holes, ports become per-protocol
// intervals, named ports are resolved on the destination pod, and pods with
// the same policy set share one table.
//
// It is the only place where NetworkPolicy semantics are implemented for the
// dataplane; it never touches the kernel, and it never fails as a whole
// because one policy is bad: a policy that does not validate still isolates
// the pods it selects but admits nothing (fail closed), and is reported.
package compile
