#!/usr/bin/env bash
# Installs the Debian packages `make test` and `make demo` use when their
# commands are missing (a fresh machine has none of them). Needs root for
# apt-get; without root it only lists what is missing. The real-node run
# installs its own (scripts/node/lib.sh).
set -euo pipefail
want=()
# (gcc and libc6-dev: `go test -race` needs cgo.)
for pair in ip:iproute2 iperf3:iperf3 nft:nftables unshare:util-linux mountpoint:util-linux gcc:gcc \
	/usr/include/stdlib.h:libc6-dev; do
	cmd=${pair%%:*} pkg=${pair#*:}
	if [[ $cmd == /* ]]; then
		[ -e "$cmd" ] && continue
	else
		command -v "$cmd" >/dev/null && continue
	fi
	[[ " ${want[*]} " == *" $pkg "* ]] || want+=("$pkg")
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "missing Debian packages: ${want[*]} (install them, or run as root on Debian)" >&2
	exit 0
fi
echo "installing Debian packages: ${want[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >&2
