#!/usr/bin/env bash
# make demo: for every scenario in deploy/examples, build a 2-node lab of
# network namespaces with the real agent, apply the scenario's policies step
# by step, and print the matrix observed with real connections next to the
# one `xdpolicy probe` predicts. Needs root (network namespaces, BPF).
set -euo pipefail
bin=${1:-bin/xdpolicy}
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root (it builds network namespaces and loads BPF programs); try: sudo make demo" >&2
	exit 1
fi
if ! command -v ip >/dev/null; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
fi
lab=demo$$
trap '"$bin" lab down --name "$lab" >/dev/null 2>&1 || true' EXIT

side_by_side() { # prediction observed
	local w
	w=$(awk '{ if (length($0) > w) w = length($0) } END { print w + 4 }' "$1")
	awk -v w="$w" 'NR == FNR { a[FNR] = $0; n = FNR; next }
		{ b[FNR] = $0; if (FNR > n) n = FNR }
		END { printf "%-*s%s\n", w, "predicted (xdpolicy probe)", "observed (xdpolicy lab probe)";
		      for (i = 1; i <= n; i++) printf "%-*s%s\n", w, a[i], b[i] }' "$1" "$2"
}

tmp=$(mktemp -d)
trap '"$bin" lab down --name "$lab" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
mismatches=0
for scenario in deploy/examples/*/; do
	echo "################ ${scenario#deploy/examples/}"
	"$bin" lab up --name "$lab" --cluster "$scenario/cluster.yaml" >"$tmp/up"
	sed -n 's/^  \(node\|pod\|external\)  */  \1 /p' "$tmp/up"
	external=$(awk '$1 == "external" { print $4 }' "$tmp/up")
	prev=
	for step in "$scenario"[0-9]*/; do
		if [ -n "$prev" ] && compgen -G "$prev*.yaml" >/dev/null; then
			"$bin" lab delete --name "$lab" -f "$prev" >/dev/null
		fi
		echo
		echo "=== step ${step#"$scenario"}"
		if compgen -G "$step*.yaml" >/dev/null; then
			"$bin" lab apply --name "$lab" -f "$step" | sed 's/^/  /'
		else
			echo "  (no policy)"
		fi
		# The agents pick the change up within a poll interval; retry the
		# comparison briefly before calling it a difference.
		ok=no
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			sleep 0.3
			if "$bin" lab probe --name "$lab" --expect >"$tmp/expect" 2>&1; then ok=yes; break; fi
		done
		# While the observed matrix is taken, follow the verdicts of every
		# node's agent: "why was this dropped?" answered live.
		tracers=()
		for node in $(awk '$1 == "node" { print $2 }' "$tmp/up"); do
			"$bin" trace --lab "$lab" --node "$node" --follow >"$tmp/trace-$node" 2>/dev/null &
			tracers+=($!)
		done
		sleep 0.3
		"$bin" probe --cluster "$scenario/cluster.yaml" --policies "$step" \
			--from '*/*' ${external:+--from "$external"} >"$tmp/pred" 2>/dev/null
		"$bin" lab probe --name "$lab" -o table >"$tmp/obs" 2>/dev/null
		sleep 0.2
		kill "${tracers[@]}" 2>/dev/null || true
		wait "${tracers[@]}" 2>/dev/null || true
		side_by_side "$tmp/pred" "$tmp/obs"
		if [ "$step" = deploy/examples/03-frontend-backend/1-backend-allow-frontend/ ]; then
			echo "  live verdicts (xdpolicy trace --follow), a few of them:"
			{ cat "$tmp"/trace-* | grep ' ALLOW .*ingress\[' | head -1
			  cat "$tmp"/trace-* | grep ' DENY ' | sort -u -k7,7 | head -3; } | cut -c1-240 | sed 's/^/    /'
		fi
		if [ "$ok" = yes ]; then
			echo "  => real traffic matches the prediction"
		else
			mismatches=$((mismatches + 1))
			grep '^differs' "$tmp/expect" | sed 's/^/  /' || true
		fi
		prev=$step
	done
	"$bin" lab down --name "$lab" >/dev/null
	echo
done
if [ "$mismatches" -gt 0 ]; then
	echo "$mismatches step(s) differ from the prediction" >&2
	exit 1
fi
echo "every step of every scenario: observed == predicted"
