// Package source delivers the cluster state the agent enforces as a stream
// of complete *model.Cluster snapshots behind one interface, Source. Dir
// watches directories of YAML (the lab's control source); a Kubernetes
// informer source will implement the same interface.
//
// What it must never do: deliver a partial state. A file that does not load
// is logged and the last good snapshot stays in force; snapshots are
// delivered level-triggered and coalesced (one per settled change).
package source
