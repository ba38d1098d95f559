#!/usr/bin/env bash
# Builds (once) the Kubernetes binaries xdpolicy's tests and the real node run,
# all from k8s.io/kubernetes at one version (this folder's go.mod), into a
# cache outside the repository:
#   $XDPOLICY_K8S_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/xdpolicy/k8s-v1.37.2)
#
#   build.sh            kube-apiserver, kubectl and etcd (the API-server tests)
#   build.sh node       also kubelet, kube-proxy, kube-scheduler,
#                       kube-controller-manager, agnhost, e2e.test
#
# Every binary is static (CGO_ENABLED=0), -trimpath and version-stamped, so
# `kubelet --version` says v1.37.2 and not v0.0.0-master. etcd is Debian's
# etcd-server (installed when missing and root). Prints the cache directory on
# stdout; skips whatever is already built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=v1.37.2
cache="${XDPOLICY_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xdpolicy/k8s-$version}"
mkdir -p "$cache"
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod CGO_ENABLED=0

major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	stamp+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	stamp+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-proxy-$version"
	stamp+=" -X $pkg.buildDate=2026-10-27T12:01:04Z"
done
ldflags="-s -w$stamp"

want=(kube-apiserver kubectl)
[ "${1:-}" = node ] && want+=(kube-controller-manager kube-scheduler kube-proxy kubelet agnhost e2e.test)

missing=()
for b in "${want[@]}"; do [ -x "$cache/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
	echo "building ${missing[*]} ($version) into $cache (first time: minutes)" >&2
	start=$(date +%s)
	pkgs=()
	for b in "${missing[@]}"; do
		case $b in
		e2e.test) ;;
		agnhost) pkgs+=(k8s.io/kubernetes/test/images/agnhost) ;;
		*) pkgs+=("k8s.io/kubernetes/cmd/$b") ;;
		esac
	done
	tmp="$cache/.build"
	rm -rf "$tmp" && mkdir -p "$tmp"
	cd "$here"
	if [ ${#pkgs[@]} -gt 0 ]; then
		go build -trimpath -ldflags="$ldflags" -o "$tmp/" "${pkgs[@]}"
	fi
	if [[ " ${missing[*]} " == *" e2e.test "* ]]; then
		go test -c -trimpath -ldflags="$ldflags" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e
	fi
	mv "$tmp"/* "$cache/"
	rmdir "$tmp"
	echo "built ${missing[*]} in $(($(date +%s) - start))s" >&2
fi

if [ ! -x "$cache/etcd" ]; then
	if ! command -v etcd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
		# Debian starts a system etcd on 2379; ours use their own ports.
		systemctl disable --now etcd >/dev/null 2>&1 || true
	fi
	command -v etcd >/dev/null || { echo "etcd not found: install Debian's etcd-server" >&2; exit 1; }
	ln -sf "$(command -v etcd)" "$cache/etcd"
fi
echo "$cache"
