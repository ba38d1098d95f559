#!/usr/bin/env bash
# Brings up the real node and the xdpolicy DaemonSet like e2e.sh, and leaves
# them running for a look around; scripts/node/down.sh removes them.
#
#   up.sh [--cni ptp|bridge] [--no-deploy]
#
# It prints how to reach the node: every command runs inside the node's
# network namespace, e.g.
#   nsenter --net=/run/netns/xdpn-ID -- ~/.cache/xdpolicy/k8s-v1.37.2/kubectl \
#     --kubeconfig=/var/lib/xdpolicy-node/ID/kubeconfig/admin get pods -A
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

cni=ptp deploy=1
while [ $# -gt 0 ]; do
	case $1 in
	--cni) cni=$2 && shift ;;
	--no-deploy) deploy="" ;;
	*) die "unknown argument $1" ;;
	esac
	shift
done
need_root
ensure_packages
ensure_binaries
fail() {
	local rc=$?
	[ $rc = 0 ] && return
	trap - EXIT
	log "bring-up failed: tearing down"
	node_down
	exit $rc
}
trap fail EXIT
node_up "$cni"
[ -z "$deploy" ] || deploy_xdpolicy
trap - EXIT
cat <<EOF
node $NODE is up (CNI $cni). Logs: $LOGS
  kubectl: nsenter --net=/run/netns/$NETNS -- $CACHE/kubectl --kubeconfig=$KUBECONFIG_ADMIN ...
  remove:  $REPO/scripts/node/down.sh
EOF
