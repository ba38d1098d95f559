# shellcheck shell=bash
# Cluster-wide operations from a workstation, shown on the real node:
# `xdpolicy trace --kubeconfig` and `xdpolicy explain --live --kubeconfig`
# reach the DaemonSet's agents through the API server (port-forward, as
# kubectl does). Sourced by e2e.sh after lib.sh; uses its ns, kc, log, die.

OPS_NS=xdpn-ops
AGNHOST=registry.k8s.io/e2e-test-images/agnhost:2.66.1

# check_cluster_ops XDPOLICY_BINARY: a client and a server pod, a policy
# denying the server's ingress, one denied connection; the trace through
# the kubeconfig must show it (naming the node) and explain must say why.
check_cluster_ops() {
	local bin=$1 node out ip denied=""
	node=$(kc get nodes -o jsonpath='{.items[0].metadata.name}')
	kc create namespace "$OPS_NS" >/dev/null
	kc -n "$OPS_NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  containers: [{name: c, image: $AGNHOST, args: [netexec, --http-port=8080], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers: [{name: c, image: $AGNHOST, args: [pause]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-deny-ingress}
spec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress]}
EOF
	kc -n "$OPS_NS" wait --for=condition=Ready pod/server pod/client --timeout=90s >/dev/null ||
		die "cluster ops check: pods not ready"
	ip=$(kc -n "$OPS_NS" get pod server -o jsonpath='{.status.podIP}')

	out="$LOGS/ops-trace.txt"
	ns "$bin" trace --kubeconfig "$KUBECONFIG_ADMIN" --namespace "$OPS_NS" --follow >"$out" 2>"$LOGS/ops-trace.err" &
	local tracer=$!
	for _ in $(seq 20); do
		grep -q following "$LOGS/ops-trace.err" 2>/dev/null && break
		sleep 0.5
	done
	for _ in 1 2 3 4 5; do
		if ! kc -n "$OPS_NS" exec client -- /agnhost connect "$ip:8080" --timeout=2s --protocol=tcp >/dev/null 2>&1; then
			denied=1
			break
		fi
		sleep 1
	done
	sleep 1
	kill "$tracer" 2>/dev/null || true
	wait "$tracer" 2>/dev/null || true
	[ -n "$denied" ] || die "cluster ops check: client reached the server through a deny-all-ingress policy"
	log "xdpolicy trace --kubeconfig --namespace $OPS_NS --follow (reached node $node's agent through the API server):"
	sed 's/^/    /' "$out" | head -3 >&2
	grep -q " $node ingress TCP .*$OPS_NS/client → $OPS_NS/server  DENY " "$out" ||
		die "cluster ops check: no DENY of $OPS_NS/client → $OPS_NS/server naming node $node in the trace (stderr: $(cat "$LOGS/ops-trace.err"))"

	log "xdpolicy explain --live --kubeconfig --from $OPS_NS/client --to $OPS_NS/server --port 8080/TCP:"
	ns "$bin" explain --live --kubeconfig "$KUBECONFIG_ADMIN" --from "$OPS_NS/client" --to "$OPS_NS/server" --port 8080/TCP >"$LOGS/ops-explain.txt" ||
		die "cluster ops check: explain --live --kubeconfig failed"
	sed 's/^/    /' "$LOGS/ops-explain.txt" >&2
	if ! grep -q "^node $node:" "$LOGS/ops-explain.txt" || ! grep -q "DENIED" "$LOGS/ops-explain.txt"; then
		die "cluster ops check: explain did not answer DENIED under node $node"
	fi
	kc delete namespace "$OPS_NS" --wait=true --timeout=60s >/dev/null
}

CRASH_NS=xdpn-crash

# check_agent_crash: SIGKILL the DaemonSet's agent, as the OOM killer or a
# panic would. Its programs and maps are pinned in the node's bpffs (the
# init container mounted it there if the node had none), so the node stays
# enforced while it is down: a client the policy denies stays denied. Then
# kubelet restarts the container and the new agent takes the pins over:
# the allowed client connects, the denied one still does not, and the new
# agent reports the generation it took over.
check_agent_crash() {
	local ip pid restarts i
	kc create namespace "$CRASH_NS" >/dev/null
	kc -n "$CRASH_NS" apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  containers: [{name: c, image: $AGNHOST, args: [netexec, --http-port=8080], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers: [{name: c, image: $AGNHOST, args: [pause]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: other}}
spec:
  containers: [{name: c, image: $AGNHOST, args: [pause]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
EOF2
	kc -n "$CRASH_NS" wait --for=condition=Ready pod/server pod/client pod/other --timeout=90s >/dev/null ||
		die "agent crash check: pods not ready"
	ip=$(kc -n "$CRASH_NS" get pod server -o jsonpath='{.status.podIP}')
	conn() { kc -n "$CRASH_NS" exec "$1" -- /agnhost connect "$ip:8080" --timeout=2s --protocol=tcp >/dev/null 2>&1; }
	for i in $(seq 10); do
		conn client && ! conn other && break
		[ "$i" = 10 ] && die "agent crash check: the policy was not enforced within 10 attempts"
		sleep 1
	done
	ls "/sys/fs/bpf/xdpolicy/$NODE" | grep -q '^tcx-' ||
		die "agent crash check: no tcx link pinned in /sys/fs/bpf/xdpolicy/$NODE while the agent runs"
	restarts=$(kc -n xdpolicy-system get pods -l app.kubernetes.io/name=xdpolicy -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
	pid=$(pgrep -f '^/xdpolicy agent' | head -1)
	[ -n "$pid" ] || die "agent crash check: no agent process"
	log "agent crash check: kill -KILL $pid (the DaemonSet's agent)"
	kill -KILL "$pid"
	if conn other; then
		die "agent crash check: a denied client connected after the agent was killed"
	fi
	for i in $(seq 60); do
		[ "$(kc -n xdpolicy-system get pods -l app.kubernetes.io/name=xdpolicy -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')" -gt "$restarts" ] &&
			kc -n xdpolicy-system wait --for=condition=Ready pod -l app.kubernetes.io/name=xdpolicy --timeout=1s >/dev/null 2>&1 && break
		[ "$i" = 60 ] && die "agent crash check: the agent was not restarted and ready within 60 s"
		sleep 1
	done
	for i in $(seq 10); do
		conn client && break
		[ "$i" = 10 ] && die "agent crash check: the allowed client cannot connect after the restart"
		sleep 1
	done
	if conn other; then
		die "agent crash check: a denied client connected after the restart"
	fi
	kc -n xdpolicy-system logs ds/xdpolicy | grep 'loaded programs' | grep -v 'previous_generation=0 ' >&2 ||
		die "agent crash check: the restarted agent did not take over the pinned generation"
	log "agent crash check: the denied client stayed denied; the restarted agent took the pins over"
	kc delete namespace "$CRASH_NS" --wait=true --timeout=60s >/dev/null
}
