// Package kubetest runs a real kube-apiserver and etcd on 127.0.0.1 for the
// tests of the Kubernetes control source, the deploy manifests and the lab
// on the API server (`xdpolicy lab up --apiserver`).
//
// The binaries come from the cache scripts/k8s/build.sh fills
// (kube-apiserver built from k8s.io/kubernetes, etcd from Debian or built);
// Start never builds. Each server gets a temporary directory with its own
// certificates (Go crypto), a service-account key, a static admin token,
// ephemeral ports and etcd data; Stop kills both processes and removes the
// directory. RBAC authorization is on, so ServiceAccounts get only what
// their roles grant. Nothing runs controllers: whoever creates pods sets
// their status (podIP, phase) itself, and namespaces are never finalized,
// so tests use unique namespace names.
//
// It must never listen on anything but 127.0.0.1 and never leave a process
// or a directory behind.
package kubetest
