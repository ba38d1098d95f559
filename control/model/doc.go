// Package model is the spec side of xdpolicy: the Kubernetes objects a user
// wrote (Namespaces, Pods, NetworkPolicies as k8s.io/api types), loaded from
// YAML or JSON, defaulted the way the API server defaults them and validated
// the way it validates them.
//
// It never decides a verdict and never touches the kernel; the compiler in
// control/compile turns a Cluster into the immutable ruleset the dataplane
// reads.
package model
