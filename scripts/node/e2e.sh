#!/usr/bin/env bash
# The real-node run: brings up a single-node Kubernetes on this machine (see
# lib.sh: everything inside its own network namespace, state under
# /var/lib/xdpolicy-node/ID), applies the unchanged deploy/ with
# `kubectl apply -k deploy/`, waits for the xdpolicy DaemonSet, checks that
# `xdpolicy trace` and `explain --live` reach the agent through the API
# server with a kubeconfig and that a SIGKILLed agent leaves the node
# enforced and its successor takes over (ops.sh), runs the
# upstream e2e NetworkPolicy specs with e2e.test, prints ginkgo's summary and
# tears everything down (also on failure and Ctrl-C). Exits non-zero when a
# spec failed, the node or the DaemonSet did not come up, or the teardown
# left something behind. Needs root.
#
#   e2e.sh [--cni ptp|bridge] [--focus REGEX] [--skip REGEX] [--smoke]
#
#   --cni     CNI plugin of the pod network ($XDPN_CNI, default ptp)
#   --focus   ginkgo focus ($XDPN_FOCUS, default Netpol: every
#             NetworkPolicy spec)
#   --skip    extra ginkgo skip (SCTP specs are skipped when the kernel has
#             no SCTP)
#   --smoke   a few fast Netpol specs (CI)
#   $XDPN_E2E_ARGS  more e2e.test flags, split on spaces (e.g. --ginkgo.v)
#
# make e2e-node [CNI=ptp|bridge] [FOCUS=regex]; make e2e-node-smoke.
# Logs and the junit report stay in /tmp/xdpolicy-node-logs/ID.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=ops.sh
. "$(dirname "$0")/ops.sh"

SMOKE_FOCUS="Netpol NetworkPolicy between server and client should (support a 'default-deny-ingress' policy|enforce policy to allow traffic from pods within server namespace based on PodSelector|deny egress from pods based on PodSelector)|Netpol \[LinuxOnly\] NetworkPolicy between server and client using UDP should support a 'default-deny-ingress' policy|Netpol API should support creating NetworkPolicy API operations"

# The teardown, on any exit (trap EXIT), then ginkgo's summary (from its log,
# so also after a Ctrl-C) and the times.
finish() {
	local rc=$? drc summary failed
	trap - EXIT
	# A second Ctrl-C must not cut the teardown short.
	trap '' INT TERM
	set +e
	node_down
	drc=$?
	[ $rc = 0 ] && [ $drc != 0 ] && rc=1
	if [ -n "${LOGS:-}" ] && [ -s "$LOGS/e2e.log" ]; then
		summary=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs|(SUCCESS|FAIL)! .*Passed \|' "$LOGS/e2e.log")
		failed=$(sed -n '/^Summarizing [0-9]* Failure/,/^Ran [0-9]/p' "$LOGS/e2e.log" |
			grep -E '^ *\[(FAIL|PANICKED|TIMEDOUT|INTERRUPTED)\]')
		[ -n "$failed" ] && summary+=$'\nfailed specs:\n'"$failed"
		echo "=== e2e summary (CNI=$cni) ==="
		echo "${summary:-no ginkgo summary in $LOGS/e2e.log (e2e.test exit ${e2e_rc:-?})}"
	fi
	echo "=== wall time: $(($(date +%s) - T0))s total${T_UP:+, node+DaemonSet up in ${T_UP}s}${T_E2E:+, e2e.test ${T_E2E}s}; logs: ${LOGS:-none} ==="
	exit $rc
}

# All of it in a function: bash has read the whole script before it runs, so
# an edit of this file during a run cannot derail it.
main() {
	cni=${XDPN_CNI:-ptp} focus=${XDPN_FOCUS:-Netpol} skip="" args=() e2e_rc=""
	while [ $# -gt 0 ]; do
		case $1 in
		--cni) cni=$2 && shift ;;
		--focus) focus=$2 && shift ;;
		--skip) skip=$2 && shift ;;
		--smoke) focus=$SMOKE_FOCUS ;;
		-h | --help)
			sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
			exit 0
			;;
		*) die "unknown argument $1 (see --help)" ;;
		esac
		shift
	done
	case $cni in ptp | bridge) ;; *) die "--cni: ptp or bridge, not $cni" ;; esac

	need_root
	T0=$(date +%s)
	ensure_packages
	ensure_binaries
	log "binaries ready in $(($(date +%s) - T0))s ($CACHE)"

	if [ -e /proc/net/sctp ] || { modprobe -q sctp 2>/dev/null && [ -e /proc/net/sctp ]; }; then
		log "SCTP: the kernel has SCTP, SCTP specs run"
	else
		log "SCTP specs are skipped because the kernel has no SCTP (no /proc/net/sctp, modprobe sctp failed)"
		skip="\[Feature:SCTPConnectivity\]${skip:+|$skip}"
	fi

	trap finish EXIT
	trap 'log interrupted; exit 130' INT
	trap 'log terminated; exit 143' TERM

	T1=$(date +%s)
	node_up "$cni"
	deploy_xdpolicy || die "the xdpolicy DaemonSet did not become ready"
	T_UP=$(($(date +%s) - T1))
	check_cluster_ops "$REPO/bin/xdpolicy"
	check_agent_crash

	args=(--kubeconfig="$KUBECONFIG_ADMIN" --provider=skeleton --num-nodes=1
		"--ginkgo.focus=$focus" --ginkgo.no-color --ginkgo.silence-skips --ginkgo.timeout=3h
		--report-dir="$LOGS/report" --disable-log-dump)
	[ -n "$skip" ] && args+=("--ginkgo.skip=$skip")
	# shellcheck disable=SC2206
	[ -n "${XDPN_E2E_ARGS:-}" ] && args+=(${XDPN_E2E_ARGS})
	log "e2e.test --ginkgo.focus=\"$focus\"${skip:+ --ginkgo.skip=\"$skip\"} (output: $LOGS/e2e.log)"
	T2=$(date +%s)
	set +e
	(cd "$LOGS" && ns env PATH="$CACHE:$PATH" "$CACHE/e2e.test" "${args[@]}") 2>&1 | tee -i "$LOGS/e2e.log"
	e2e_rc=${PIPESTATUS[0]}
	set -e
	T_E2E=$(($(date +%s) - T2))

	[ "$e2e_rc" = 0 ] || exit "$e2e_rc"
}

main "$@"
