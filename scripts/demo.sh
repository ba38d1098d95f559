#!/usr/bin/env bash
# Runs `xdpolicy probe` over every step of every scenario in deploy/examples
# and prints the reachability matrix each step's policies imply.
set -euo pipefail
bin=${1:-bin/xdpolicy}
cd "$(dirname "$0")/.."
for scenario in deploy/examples/*/; do
	for step in "$scenario"[0-9]*/; do
		name=${step#deploy/examples/}
		echo "=== ${name%/}"
		for f in "$step"*.yaml; do
			[ -e "$f" ] && sed -n 's/^  name: /  policy: /p' "$f" | head -5
		done
		"$bin" probe --cluster "$scenario/cluster.yaml" --policies "$step"
	done
done
