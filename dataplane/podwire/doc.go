// Package podwire finds the veths of a node's local pods and wires them to
// the dataplane: tcx programs on the host end H (pinned under the agent's
// bpffs directory, so a restarted agent replaces them in place), the pods
// map entry that says which hooks are isolated, and the TX-only AF_XDP
// sockets the workers re-inject allowed frames on (one on the pod end P,
// made inside the pod's netns, for traffic leaving the pod; one on H for
// traffic entering it). Sockets are opened only for hooks that are isolated.
//
// A pod's H is the interface of the node's route to the pod's address when
// that is a veth (routed CNIs: ptp, Calico), or, when the route goes out a
// bridge (the bridge plugin, flannel), the bridge port whose peer carries
// the address. P and the pod's netns come from the veth's IFLA_LINK and
// link-netnsid, matched against /var/run/netns/* and /proc/*/ns/net.
//
// A local pod that a policy isolates and that cannot be wired is never
// silently unenforced: Unwired lists it (with why) for the agent's log,
// metric, Event and /readyz.
//
// What it must never do: touch an interface it did not find through a local
// pod's route, detach anything but its own pinned attachments, or block the
// workers (they read the Target registry through an atomic pointer).
package podwire
