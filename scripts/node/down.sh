#!/usr/bin/env bash
# Tears down every real-node run left in /var/lib/xdpolicy-node (a crashed or
# killed e2e.sh, or up.sh): processes, containers, mounts, cgroups, the
# netns, CNI state, the agent's pins, sysctls and mount propagation, from what
# the run recorded in STATE/rec. Prints "left behind: none" or the list;
# exits non-zero when something is left.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
rc=0
found=""
for d in "$XDPN_ROOT"/*/; do
	[ -d "$d/rec" ] || continue
	found=1
	load_state "${d%/}"
	node_down || rc=1
	set -e
done
[ -n "$found" ] || log "no node in $XDPN_ROOT"
exit $rc
