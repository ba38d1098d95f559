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
