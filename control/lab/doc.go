// Package lab builds and tears down a local multi-node cluster made of
// network namespaces, for the end-to-end tests and the demo
// (`xdpolicy lab`): node namespaces joined by a bridged underlay, one
// namespace per pod wired the way routed CNIs (Calico) wire pods, a server
// in every pod on every containerPort, an `external` namespace on the
// underlay, and optionally the real agent in every node namespace.
//
// It also observes reachability: Probe makes real connections from every
// pod (and external) to every pod and reports them in the JSON schema of
// `xdpolicy probe` (query.Result), so observation and prediction compare
// cell by cell.
//
// It must never touch the root network namespace: every link, address,
// route and sysctl it makes lives in a namespace it created and removes.
// It drives the kernel through the `ip` command (iproute2) and, where a
// thread must enter a namespace, setns on a locked OS thread that is never
// returned to the Go scheduler.
package lab
