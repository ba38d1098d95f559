#!/usr/bin/env bash
# Builds (once) the API server the Kubernetes-source tests and `lab up
# --apiserver` run against, into a cache outside the repository:
#   $XDPOLICY_APISERVER_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/xdpolicy/k8s-v1.36.3)
#     kube-apiserver   k8s.io/kubernetes v1.36.3, -trimpath, from this module
#     etcd             Debian's etcd-server when it serves kube-apiserver 1.36,
#                      else go.etcd.io/etcd/server/v3 built the same way
# Prints the cache directory on stdout. Skips whatever is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=v1.36.3
cache="${XDPOLICY_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xdpolicy/k8s-$version}"
mkdir -p "$cache"
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod

if [ ! -x "$cache/kube-apiserver" ]; then
	echo "building kube-apiserver $version into $cache (first time: several minutes)" >&2
	start=$(date +%s)
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" \
		-o "$cache/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
	mv "$cache/kube-apiserver.tmp" "$cache/kube-apiserver"
	echo "kube-apiserver built in $(( $(date +%s) - start ))s" >&2
fi

if [ ! -x "$cache/etcd" ]; then
	if ! command -v etcd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2 || true
		# Debian starts a system etcd on 2379; ours uses ephemeral ports.
		systemctl disable --now etcd >/dev/null 2>&1 || true
	fi
	if command -v etcd >/dev/null && [ -z "${XDPOLICY_BUILD_ETCD:-}" ]; then
		ln -sf "$(command -v etcd)" "$cache/etcd"
	else
		echo "building etcd into $cache" >&2
		(cd "$here/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" \
			-o "$cache/etcd.tmp" go.etcd.io/etcd/server/v3)
		mv "$cache/etcd.tmp" "$cache/etcd"
	fi
fi
echo "$cache"
