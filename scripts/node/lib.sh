# shellcheck shell=bash
# Shared functions of the real-node run (scripts/node/*.sh): a single-node
# Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd + runc, kubelet, kube-proxy) running on this machine inside a
# network namespace of its own, so that nothing it starts listens on or sends
# to the host's interfaces:
#
#   netns xdpn-ID   lo + xdpn0 (an ifb device: a "dummy" that drops whatever
#                   is sent through it) carrying NODE_IP/24 and the default
#                   route; pods' host veths (ptp) or the bridge (bridge CNI),
#                   kube-proxy's and CNI's iptables/nftables rules and the
#                   per-netns sysctls all live here and go with `ip netns del`.
#   STATE           $XDPN_ROOT/ID (/var/lib/xdpolicy-node/ID): PKI,
#                   kubeconfigs, etcd (on a tmpfs), containerd root/state/
#                   socket, runc root, kubelet root dir, pod logs, CNI config
#                   and IPAM data, and rec/ (what the run changed on the host,
#                   read back by the teardown, also by down.sh after a crash).
#   LOGS            $XDPN_LOGS (/tmp/xdpolicy-node-logs/ID): every daemon's
#                   log and the e2e report; kept after the teardown.
#   host paths      what cannot be configured away: kubelet's
#                   /var/lib/kubelet/device-plugins and /var/log/containers
#                   symlinks, libcni's /var/lib/cni/results, bpffs at
#                   /sys/fs/bpf (mounted when missing, as systemd does), /sys
#                   and /run/netns made shared, the agent's
#                   /sys/fs/bpf/xdpolicy/NODE and /var/lib/xdpolicy, the
#                   sysctls kubelet sets (kernel.panic, kernel.panic_on_oops,
#                   vm.overcommit_memory...): recorded before, undone by
#                   node_down (scripts/node/down.sh after a crash), which ends
#                   with "left behind: none" or the list.
#
# Processes join the netns with `nsenter --net` only (`ip netns exec` would
# also remount /sys in a new mount namespace): they share the host's mount
# namespace, cgroups and PIDs, like a node's daemons do.

XDPN_ROOT=${XDPN_ROOT:-/var/lib/xdpolicy-node}
XDPN_LOGROOT=${XDPN_LOGROOT:-/tmp/xdpolicy-node-logs}
NODE_IP=192.168.254.1
NODE_GW=192.168.254.254 # nobody: the default route ends in the ifb device
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
SVC_IP=10.96.0.1
API_PORT=6443
CONTAINERD_VERSION=v2.4.2
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# --- what the run changed, recorded under STATE/rec -------------------------
rec() { printf '%s\n' "$2" >"$STATE/rec/$1"; }
recget() { cat "$STATE/rec/$1" 2>/dev/null || true; }

# load_state DIR: the variables of the node whose state dir is DIR.
load_state() {
	STATE=$1
	ID=$(recget id)
	NETNS=$(recget netns)
	NODE=$(recget node)
	CACHE=$(recget cache)
	LOGS=$(recget logs)
	SOCK="$STATE/containerd/containerd.sock"
	KUBECONFIG_ADMIN="$STATE/kubeconfig/admin"
}

new_state() {
	ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	STATE="$XDPN_ROOT/$ID"
	NETNS="xdpn-$ID"
	NODE="xdpn-$ID"
	LOGS="${XDPN_LOGS:-$XDPN_LOGROOT/$ID}"
	SOCK="$STATE/containerd/containerd.sock"
	KUBECONFIG_ADMIN="$STATE/kubeconfig/admin"
	mkdir -p "$STATE"/{rec,pids,pki,kubeconfig,cni/net.d,cni/ipam,etcd,containerd,kubelet,pod-logs,images,runc} "$LOGS"
	chmod 700 "$STATE"
	rec id "$ID"
	rec netns "$NETNS"
	rec node "$NODE"
	rec cache "$CACHE"
	rec logs "$LOGS"
}

# --- processes ----------------------------------------------------------------
ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

# starttime of a pid (field 22 of /proc/PID/stat), "" when gone or a zombie.
pid_start() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	[ "$1" = Z ] && return 0
	echo "${20}"
}

# start NAME BIN ARGS...: run in the node's netns, in a session of its own
# (a Ctrl-C reaches e2e.test and the script, whose teardown stops the
# daemons in order), log to LOGS/NAME.log, record the pid (setsid and
# nsenter exec: $! is the daemon's pid).
start() {
	local name=$1
	shift
	setsid nsenter --net="/run/netns/$NETNS" -- "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
	local pid=$!
	sleep 0.05
	echo "$pid $(pid_start "$pid")" >"$STATE/pids/$name"
}

# alive NAME: the recorded process still runs (same pid, same start time).
alive() {
	local pid st
	read -r pid st <"$STATE/pids/$1" 2>/dev/null || return 1
	[ -n "$pid" ] && [ -n "$st" ] && [ "$(pid_start "$pid")" = "$st" ]
}

# stop NAME [seconds]: SIGTERM, then SIGKILL after the grace period.
stop() {
	local name=$1 grace=${2:-10} pid st i
	[ -f "$STATE/pids/$name" ] || return 0
	read -r pid st <"$STATE/pids/$name"
	if alive "$name"; then
		kill -TERM "$pid" 2>/dev/null
		for ((i = 0; i < grace * 10; i++)); do
			alive "$name" || break
			sleep 0.1
		done
		if alive "$name"; then
			log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null
			sleep 0.2
		fi
	fi
	wait "$pid" 2>/dev/null || true
	rm -f "$STATE/pids/$name"
}

# wait_for SECONDS WHAT CMD...: poll CMD every half second.
wait_for() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 2; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.5
	done
	log "timed out after ${secs}s waiting for $what"
	return 1
}

kc() { ns "$CACHE/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" "$@"; }
ctr_() { "$CACHE/ctr" --address "$SOCK" -n k8s.io "$@"; }

# --- prerequisites ------------------------------------------------------------
need_root() { [ "$(id -u)" = 0 ] || die "the real-node run needs root (network namespace, cgroups, mounts)"; }

# Debian packages, installed when a command is missing. policy-rc.d keeps
# Debian from starting a system etcd.
ensure_packages() {
	local want=() pkg cmd
	for pair in runc:runc /usr/lib/cni/ptp:containernetworking-plugins /usr/lib/cni/bridge:containernetworking-plugins \
		etcd:etcd-server iptables:iptables nft:nftables conntrack:conntrack openssl:openssl \
		nsenter:util-linux findmnt:util-linux ip:iproute2 ss:iproute2 curl:curl; do
		cmd=${pair%%:*} pkg=${pair#*:}
		if [[ $cmd == /* ]]; then [ -x "$cmd" ] && continue; else command -v "$cmd" >/dev/null && continue; fi
		[[ " ${want[*]} " == *" $pkg "* ]] || want+=("$pkg")
	done
	[ ${#want[@]} -eq 0 ] && return 0
	log "installing Debian packages: ${want[*]}"
	local made_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		made_policy=1
	fi
	local rc=0
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"; } >&2 || rc=$?
	[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
	[ $rc = 0 ] || die "apt-get install ${want[*]} failed"
}

# Kubernetes binaries (scripts/k8s/build.sh), containerd, mkimage, the static
# xdpolicy binary and the three image tarballs. Sets CACHE.
ensure_binaries() {
	CACHE=$("$REPO/scripts/k8s/build.sh" node) || die "scripts/k8s/build.sh node failed"
	for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl agnhost e2e.test etcd; do
		[ -x "$CACHE/$b" ] || die "$CACHE/$b missing after scripts/k8s/build.sh node"
	done
	if [ ! -x "$CACHE/containerd" ] || [ ! -x "$CACHE/containerd-shim-runc-v2" ] || [ ! -x "$CACHE/ctr" ]; then
		log "building containerd $CONTAINERD_VERSION into $CACHE (~90 s)"
		(cd / && CGO_ENABLED=0 GOBIN="$CACHE" GOFLAGS='' go install -trimpath -ldflags='-s -w' \
			-tags no_btrfs,no_devmapper,no_zfs \
			github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr}@"$CONTAINERD_VERSION") >&2 ||
			die "building containerd failed"
	fi
	(cd "$REPO/scripts/node/mkimage" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$CACHE/mkimage" .) >&2 ||
		die "building scripts/node/mkimage failed"
	log "building bin/xdpolicy (CGO_ENABLED=0, for the image)"
	(cd "$REPO" && CGO_ENABLED=0 go build -o bin/xdpolicy ./cmd/xdpolicy) >&2 || die "go build ./cmd/xdpolicy failed"

	# agnhost serves as the e2e image and as the pause image (`agnhost
	# pause` sleeps until signalled and reaps children); rebuilt when agnhost
	# is newer than the tarball.
	mkdir -p "$CACHE/images"
	if [ ! -s "$CACHE/images/agnhost.tar" ] || [ "$CACHE/agnhost" -nt "$CACHE/images/agnhost.tar" ]; then
		"$CACHE/mkimage" -binary "$CACHE/agnhost" -path /agnhost -tag "$AGNHOST_IMAGE" -o "$CACHE/images/agnhost.tar"
	fi
	if [ ! -s "$CACHE/images/pause.tar" ] || [ "$CACHE/agnhost" -nt "$CACHE/images/pause.tar" ]; then
		"$CACHE/mkimage" -binary "$CACHE/agnhost" -path /agnhost -entrypoint /agnhost,pause -tag "$PAUSE_IMAGE" -o "$CACHE/images/pause.tar"
	fi
	# The image deploy/daemonset.yaml names (Dockerfile's final stage: FROM
	# scratch, /xdpolicy, ENTRYPOINT ["/xdpolicy"]).
	XDPOLICY_IMAGE=$(sed -n 's/^ *image: *//p' "$REPO/deploy/daemonset.yaml" | head -1)
	[ -n "$XDPOLICY_IMAGE" ] || die "no image: in deploy/daemonset.yaml"
}

# --- host preparation ---------------------------------------------------------
HOST_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
	net.ipv4.conf.all.route_localnet net.ipv4.conf.all.forwarding
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

# The host-netns values of every sysctl kubelet, kube-proxy or a CNI plugin
# may change (global ones like kernel.panic, and the host netns's own
# net.netfilter.nf_conntrack_*), as key=value lines.
snapshot_sysctls() {
	local k f
	for k in "${HOST_SYSCTLS[@]}"; do
		f=/proc/sys/${k//.//}
		[ -w "$f" ] && printf '%s=%s\n' "$k" "$(cat "$f")"
	done
	for f in /proc/sys/net/netfilter/nf_conntrack_*; do
		[ -w "$f" ] || continue
		k=${f#/proc/sys/}
		printf '%s=%s\n' "${k//\//.}" "$(cat "$f")"
	done
}

# Things the teardown must remove only when this run created them.
record_host() {
	snapshot_sysctls >"$STATE/rec/sysctls"
	local p
	for p in /var/log/containers /var/log/pods /var/lib/cni /run/containerd /var/lib/xdpolicy \
		/sys/fs/bpf/xdpolicy /etc/cdi /var/run/cdi /var/lib/kubelet /etc/kubernetes /run/netns /run/mount; do
		[ -e "$p" ] || echo "$p" >>"$STATE/rec/created"
	done
	mountpoint -q /run/netns || rec run_netns_unmounted 1
	# Propagation of every mount under /sys: made rshared below.
	findmnt -rn -R -o TARGET,PROPAGATION /sys >"$STATE/rec/sys_propagation"
}

# What systemd does on a real node and kubelet's HostToContainer volumes
# need: /sys shared (the DaemonSet's /sys/fs/bpf), bpffs at /sys/fs/bpf,
# /run/netns a shared mount (`ip netns add` makes it one).
#
# bpffs is left to the DaemonSet: on a node without one its init container
# (xdpolicy mount-bpffs) mounts it, through Bidirectional propagation.
prepare_mounts() {
	mount --make-rshared /sys
	if findmnt -rn -t bpf /sys/fs/bpf >/dev/null; then
		mount --make-shared /sys/fs/bpf
	else
		rec bpffs_mounted 1 # by the DaemonSet, during this run
	fi
	mount --make-shared /run/netns 2>/dev/null || true
}

make_netns() {
	ip netns add "$NETNS"
	ns ip link set lo up
	ns ip link add xdpn0 type ifb
	ns ip link set xdpn0 up
	ns ip addr add "$NODE_IP/24" dev xdpn0
	ns ip route add default via "$NODE_GW" dev xdpn0 onlink
}

# --- PKI and kubeconfigs ------------------------------------------------------
cert() { # NAME CN ORG SANS(or "")
	local d="$STATE/pki" n=$1 ext
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$d/$n.key" -out "$d/$n.csr" -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
	ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=${4:+serverAuth,}clientAuth"
	[ -n "$4" ] && ext+="
subjectAltName=$4"
	openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
		-days 2 -out "$d/$n.crt" -extfile <(echo "$ext") 2>/dev/null
	rm -f "$d/$n.csr"
}

kubeconfig() { # NAME CERT
	cat >"$STATE/kubeconfig/$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: xdpn
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $STATE/pki/$2.crt
    client-key: $STATE/pki/$2.key
contexts:
- name: xdpn
  context: {cluster: xdpn, user: $1}
current-context: xdpn
EOF
}

make_pki() {
	local d="$STATE/pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=xdpn-$ID-ca" 2>/dev/null
	openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
	openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
	cert apiserver kube-apiserver "" "IP:$NODE_IP,IP:$SVC_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
	cert admin admin system:masters ""
	cert controller-manager system:kube-controller-manager "" ""
	cert scheduler system:kube-scheduler "" ""
	cert kube-proxy system:kube-proxy "" ""
	cert kubelet "system:node:$NODE" system:nodes ""
	kubeconfig admin admin
	kubeconfig controller-manager controller-manager
	kubeconfig scheduler scheduler
	kubeconfig kube-proxy kube-proxy
	kubeconfig kubelet kubelet
}

# --- control plane ------------------------------------------------------------
start_control_plane() {
	# etcd's data on a tmpfs under STATE (fsync latency is not under test;
	# Debian's etcd 3.4 has no --unsafe-no-fsync).
	mount -t tmpfs -o size=1g,mode=0700 xdpn-etcd "$STATE/etcd"
	start etcd "$CACHE/etcd" --name=xdpn --data-dir="$STATE/etcd/data" \
		--listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
		--listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
		--initial-cluster=xdpn=http://127.0.0.1:2380 --listen-metrics-urls=http://127.0.0.1:2381 \
		--log-level=warn
	wait_for 30 etcd ns curl -fsS http://127.0.0.1:2379/health || die "etcd did not start (see $LOGS/etcd.log)"

	local p="$STATE/pki"
	start kube-apiserver "$CACHE/kube-apiserver" \
		--etcd-servers=http://127.0.0.1:2379 \
		--bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=$API_PORT \
		--cert-dir="$p/apiserver-certdir" \
		--tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
		--client-ca-file="$p/ca.crt" \
		--kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
		--service-cluster-ip-range="$SVC_CIDR" --allow-privileged=true \
		--profiling=false --v=1
	wait_for 90 "kube-apiserver /readyz" kc get --raw /readyz || die "kube-apiserver not ready (see $LOGS/kube-apiserver.log)"

	start kube-controller-manager "$CACHE/kube-controller-manager" \
		--kubeconfig="$STATE/kubeconfig/controller-manager" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--controllers='*,-nodeipam' --use-service-account-credentials=true \
		--service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
		--cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
		--service-cluster-ip-range="$SVC_CIDR" --profiling=false --v=1
	start kube-scheduler "$CACHE/kube-scheduler" \
		--kubeconfig="$STATE/kubeconfig/scheduler" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

# --- containerd, CNI, images --------------------------------------------------
write_cni_config() {
	local cni=$1 main
	case $cni in
	ptp)
		main='{"type": "ptp", "ipMasq": false, "mtu": 1500,'
		;;
	bridge)
		main='{"type": "bridge", "bridge": "xdpn-br0", "isGateway": true, "hairpinMode": true, "ipMasq": false, "mtu": 1500,'
		;;
	*) die "unknown CNI $cni (ptp or bridge)" ;;
	esac
	cat >"$STATE/cni/net.d/10-xdpn.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "xdpn-$ID",
  "plugins": [
    $main
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

start_containerd() {
	local c="$STATE/containerd"
	cat >"$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "$STATE/s"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$STATE/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
EOF
	# containerd v2 must find its own shim first on PATH.
	start containerd env PATH="$CACHE:$PATH" "$CACHE/containerd" --config "$c/config.toml"
	wait_for 30 containerd "$CACHE/ctr" --address "$SOCK" version || die "containerd did not start (see $LOGS/containerd.log)"
}

import_images() {
	"$CACHE/mkimage" -binary "$REPO/bin/xdpolicy" -path /xdpolicy -tag "$XDPOLICY_IMAGE" -o "$STATE/images/xdpolicy.tar"
	local t
	for t in "$CACHE/images/pause.tar" "$CACHE/images/agnhost.tar" "$STATE/images/xdpolicy.tar"; do
		ctr_ images import "$t" >>"$LOGS/images.log" 2>&1 || die "ctr images import $t failed (see $LOGS/images.log)"
	done
	log "images: $(ctr_ images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

# --- kubelet, kube-proxy ------------------------------------------------------
start_kubelet() {
	cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podCIDR: $POD_CIDR
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $STATE/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization:
  mode: Webhook
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# XDPN_SECCOMP_DEFAULT=true: RuntimeDefault seccomp for every container, as
# hardened nodes run.
seccompDefault: ${XDPN_SECCOMP_DEFAULT:-false}
EOF
	start kubelet "$CACHE/kubelet" --config="$STATE/kubelet/config.yaml" \
		--kubeconfig="$STATE/kubeconfig/kubelet" --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" \
		--hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
	wait_for 60 "node $NODE registered" kc get node "$NODE" || die "kubelet did not register (see $LOGS/kubelet.log)"
	kc wait --for=condition=Ready "node/$NODE" --timeout=90s >&2 || die "node not Ready (see $LOGS/kubelet.log)"
}

start_kube_proxy() {
	cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kubeconfig/kube-proxy
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
	start kube-proxy "$CACHE/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1
	wait_for 30 "kube-proxy healthz" ns curl -fsS http://127.0.0.1:10256/healthz ||
		die "kube-proxy not healthy (see $LOGS/kube-proxy.log)"
}

# --- containment --------------------------------------------------------------
# No process of the node may listen in the host's network namespace.
check_containment() {
	local pids="" f pid st bad
	for f in "$STATE"/pids/*; do
		read -r pid st <"$f"
		pids+=" $pid"
	done
	bad=$(ss -Hltunp 2>/dev/null | grep -E "pid=($(echo "$pids" | xargs | tr ' ' '|'))," || true)
	if [ -n "$bad" ]; then
		log "containment: node processes listen in the host netns:"
		echo "$bad" >&2
		return 1
	fi
	log "containment: nothing of the node listens in the host netns; in netns $NETNS: $(ns ss -Hltn | awk '{print $4}' | sort -u | xargs)"
}

# --- node up ------------------------------------------------------------------
node_up() { # CNI
	local cni=$1
	[ -z "$(ls -A "$XDPN_ROOT" 2>/dev/null)" ] ||
		die "a node is left over in $XDPN_ROOT: run scripts/node/down.sh first"
	local g
	for g in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
		[ -e "$g" ] && die "$g exists (another kubelet or a leftover): run scripts/node/down.sh first"
	done
	new_state
	log "node $NODE: state $STATE, logs $LOGS, netns $NETNS, CNI $cni"
	record_host
	make_netns
	prepare_mounts
	make_pki
	write_cni_config "$cni"
	start_control_plane
	start_containerd
	import_images
	start_kubelet
	start_kube_proxy
	check_containment
	log "node $NODE Ready ($(kc get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}'))"
}

# Applies the unchanged deploy/ and waits for the DaemonSet.
deploy_xdpolicy() {
	log "kubectl apply -k deploy/"
	kc apply -k "$REPO/deploy/" >&2
	if ! kc -n xdpolicy-system rollout status ds/xdpolicy --timeout=180s >&2; then
		log "DaemonSet xdpolicy not ready:"
		kc -n xdpolicy-system get pods -o wide >&2 || true
		kc -n xdpolicy-system describe pods >&2 || true
		log "agent log tail:"
		kc -n xdpolicy-system logs ds/xdpolicy --tail=60 >&2 || true
		log "kubelet log tail:"
		tail -n 30 "$LOGS/kubelet.log" >&2 || true
		return 1
	fi
	kc -n xdpolicy-system get pods -o wide >&2
}

save_agent_log() {
	[ -n "${CACHE:-}" ] && [ -x "$CACHE/kubectl" ] && alive kube-apiserver || return 0
	timeout 20 nsenter --net="/run/netns/$NETNS" -- "$CACHE/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" \
		-n xdpolicy-system logs ds/xdpolicy --tail=-1 >"$LOGS/xdpolicy-agent.log" 2>&1 || true
	# The agent's counters at the end of the run (its ops port is on the
	# node's loopback, inside our netns).
	timeout 10 nsenter --net="/run/netns/$NETNS" -- curl -sf http://127.0.0.1:9490/metrics \
		>"$LOGS/xdpolicy-metrics.txt" 2>/dev/null || true
}

# --- teardown -----------------------------------------------------------------
# Every cgroup directory named kubepods or k8s.io, in every hierarchy (v1
# controllers, the named systemd one, the unified cgroup2).
node_cgroups() {
	local h
	for h in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
		for n in kubepods k8s.io; do
			[ -d "$h/$n" ] && echo "$h/$n"
		done
	done
}

cgroup_pids() {
	local g
	for g in $(node_cgroups); do
		find "$g" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -un
}

shim_pids() {
	local p exe
	for p in /proc/[0-9]*; do
		exe=$(readlink "$p/exe" 2>/dev/null) || continue
		[ "$exe" = "$CACHE/containerd-shim-runc-v2" ] || continue
		tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$SOCK" && echo "${p#/proc/}"
	done
}

netns_pids() {
	[ -e "/run/netns/$NETNS" ] || return 0
	local want p
	want="net:[$(stat -L -c %i "/run/netns/$NETNS")]"
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$want" ] && [ -n "$(pid_start "${p#/proc/}")" ] && echo "${p#/proc/}"
	done
}

state_mounts() {
	awk -v s="$STATE/" '{ p = $5; gsub(/\\040/, " ", p); if (index(p "/", s) == 1) print p }' /proc/self/mountinfo | sort -r
}

# node_down: everything the run started or changed, in order; safe to repeat.
node_down() {
	set +e
	local p pid i
	if [ -z "${STATE:-}" ] || [[ $STATE != "$XDPN_ROOT"/* ]] || [ ! -d "$STATE/rec" ]; then
		log "teardown: no state"
		return 0
	fi
	log "teardown of $NODE ($STATE)"
	# Clients first (an e2e.test or kubectl left running after the script
	# was killed holds the API server's shutdown up).
	for pid in $(netns_pids); do
		case $(readlink "/proc/$pid/exe" 2>/dev/null) in
		"$CACHE/e2e.test" | "$CACHE/kubectl") kill -KILL "$pid" 2>/dev/null ;;
		esac
	done
	save_agent_log
	# kubelet first, so that it restarts nothing.
	stop kubelet 20
	# Containers: kill every task through containerd, then whatever is left
	# in the pod cgroups, then the shims.
	if alive containerd; then
		for i in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$i" >/dev/null 2>&1; done
		sleep 1
		for i in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$i" >/dev/null 2>&1; done
		for i in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$i" >/dev/null 2>&1; done
	fi
	for i in 1 2 3; do
		pid=$(cgroup_pids)
		[ -z "$pid" ] && break
		# shellcheck disable=SC2086
		kill -KILL $pid 2>/dev/null
		sleep 0.5
	done
	stop containerd 15
	for pid in $(shim_pids); do kill -KILL "$pid" 2>/dev/null; done
	for p in kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$p" 10; done
	for pid in $(netns_pids); do
		log "teardown: killing pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) left in $NETNS"
		kill -KILL "$pid" 2>/dev/null
	done
	sleep 0.3

	# What the agent left on purpose (it runs with --keep-on-exit): its
	# programs, punt veth and pins, removed the way an operator uninstalls,
	# and its state dir.
	if [ -n "$NODE" ] && [ -e "/run/netns/$NETNS" ] && [ -x "$REPO/bin/xdpolicy" ]; then
		nsenter --net="/run/netns/$NETNS" -- "$REPO/bin/xdpolicy" cleanup --node "$NODE" >&2 ||
			log "teardown: xdpolicy cleanup failed"
	fi
	if [ -n "$NODE" ] && [ -d "/sys/fs/bpf/xdpolicy/$NODE" ]; then
		rm -rf "/sys/fs/bpf/xdpolicy/$NODE"
	fi
	grep -qx /sys/fs/bpf/xdpolicy "$STATE/rec/created" 2>/dev/null && rmdir /sys/fs/bpf/xdpolicy 2>/dev/null
	if grep -qx /var/lib/xdpolicy "$STATE/rec/created" 2>/dev/null; then
		rm -rf /var/lib/xdpolicy
	else
		rm -f /var/lib/xdpolicy/agent.sock
	fi

	# Mounts under STATE (pods' volumes and netns, overlay rootfs, etcd's
	# tmpfs), deepest first.
	for i in 1 2 3; do
		local m
		m=$(state_mounts)
		[ -z "$m" ] && break
		while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null; done <<<"$m"
	done

	# cgroups, deepest first (a cgroup empties a moment after its last task).
	for i in 1 2 3 4 5 6 7 8 9 10; do
		local gs
		gs=$(node_cgroups)
		[ -z "$gs" ] && break
		for p in $gs; do find "$p" -depth -type d -exec rmdir {} + 2>/dev/null; done
		sleep 0.3
	done

	# The netns: the ifb, veths, bridge, iptables/nftables rules, per-netns
	# sysctls go with it.
	if [ -e "/run/netns/$NETNS" ]; then ip netns del "$NETNS"; fi
	if [ -n "$(recget run_netns_unmounted)" ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
		umount /run/netns
	fi
	grep -qx /run/netns "$STATE/rec/created" 2>/dev/null && rmdir /run/netns 2>/dev/null

	# Host sysctls back to their recorded values.
	local kv k v f cur
	while IFS= read -r kv; do
		k=${kv%%=*} v=${kv#*=}
		f=/proc/sys/${k//.//}
		cur=$(cat "$f" 2>/dev/null) || continue
		if [ "$cur" != "$v" ]; then
			echo "$v" >"$f" 2>/dev/null && log "teardown: sysctl $k restored: $cur -> $v"
		fi
	done < <(cat "$STATE/rec/sysctls" 2>/dev/null)

	# bpffs: unmounted when this run mounted it and nobody else uses it.
	if [ -n "$(recget bpffs_mounted)" ] && findmnt -rn -t bpf /sys/fs/bpf >/dev/null; then
		local others
		others=$(find /sys/fs/bpf -mindepth 1 -maxdepth 1 ! -name maps.debug ! -name progs.debug ! -name xdpolicy-mounted-this-bpffs -printf '%f ')
		if [ -z "$others" ]; then
			# (propagation may have stacked several mounts of it)
			for i in 1 2 3 4; do
				findmnt -rn -t bpf /sys/fs/bpf >/dev/null || break
				umount /sys/fs/bpf
			done
		else
			# Somebody else pinned there meanwhile: keep it, private like
			# the mounts around it.
			mount --make-private /sys/fs/bpf
			log "teardown: kept the bpffs this run mounted at /sys/fs/bpf: now in use by others ($others)"
		fi
	fi
	# Propagation of /sys and the mounts under it, as recorded.
	local t prop
	while read -r t prop; do
		mountpoint -q "$t" || continue
		case $prop in
		private) mount --make-private "$t" ;;
		shared) mount --make-shared "$t" ;;
		slave) mount --make-slave "$t" ;;
		unbindable) mount --make-unbindable "$t" ;;
		esac
	done < <(sort "$STATE/rec/sys_propagation" 2>/dev/null)

	# Host files kubelet, CNI and containerd write outside their configured
	# directories.
	if [ -d /var/log/containers ]; then
		for p in /var/log/containers/*; do
			[[ $(readlink "$p" 2>/dev/null) == "$STATE"/* ]] && rm -f "$p"
		done
	fi
	rm -rf /var/lib/cni/results/"xdpn-$ID"-* /var/lib/cni/cache/results/"xdpn-$ID"-* 2>/dev/null
	while read -r p; do
		case $p in
		/var/lib/cni | /run/containerd | /etc/cdi | /var/run/cdi | /var/lib/kubelet | /etc/kubernetes | /var/lib/xdpolicy)
			rm -rf "$p"
			;;
		/var/log/containers | /var/log/pods | /run/mount) rmdir "$p" 2>/dev/null ;;
		esac
	done <"$STATE/rec/created" 2>/dev/null

	leftovers
	local rc=$?
	rm -rf "$STATE"
	rmdir "$XDPN_ROOT" 2>/dev/null
	return $rc
}

# Prints "left behind: none" or what is; non-zero when something is.
leftovers() {
	local left=() p pid
	for p in "$STATE"/pids/*; do
		[ -e "$p" ] && alive "$(basename "$p")" && left+=("process $(basename "$p")")
	done
	for pid in $(shim_pids) $(cgroup_pids) $(netns_pids); do left+=("pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null))"); done
	for p in $(state_mounts); do left+=("mount $p"); done
	[ -e "/run/netns/$NETNS" ] && left+=("netns $NETNS")
	for p in $(node_cgroups); do left+=("cgroup $p"); done
	[ -e "/sys/fs/bpf/xdpolicy/$NODE" ] && left+=("pins /sys/fs/bpf/xdpolicy/$NODE")
	# (a bpffs this run mounted counts only when nobody else uses it)
	if [ -n "$(recget bpffs_mounted)" ] && findmnt -rn -t bpf /sys/fs/bpf >/dev/null &&
		[ -z "$(find /sys/fs/bpf -mindepth 1 -maxdepth 1 ! -name maps.debug ! -name progs.debug ! -name xdpolicy-mounted-this-bpffs -print -quit)" ]; then
		left+=("bpffs /sys/fs/bpf")
	fi
	local t prop now
	while read -r t prop; do
		now=$(findmnt -rn -o PROPAGATION --mountpoint "$t" 2>/dev/null | tail -1)
		[ -n "$now" ] && [ "$now" != "$prop" ] && left+=("propagation $t=$now (was $prop)")
	done <"$STATE/rec/sys_propagation" 2>/dev/null
	if [ -n "$(recget run_netns_unmounted)" ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
		left+=("mount /run/netns")
	fi
	while read -r p; do
		[ -e "$p" ] && [ "$p" != /run/netns ] && left+=("file $p")
	done <"$STATE/rec/created" 2>/dev/null
	for p in /var/log/containers/*; do
		[[ $(readlink "$p" 2>/dev/null) == "$STATE"/* ]] && left+=("file $p")
	done
	local kv k v cur
	while IFS= read -r kv; do
		k=${kv%%=*} v=${kv#*=}
		cur=$(cat "/proc/sys/${k//.//}" 2>/dev/null) || continue
		[ "$cur" != "$v" ] && left+=("sysctl $k=$cur (was $v)")
	done <"$STATE/rec/sysctls" 2>/dev/null
	if [ ${#left[@]} -eq 0 ]; then
		echo "left behind: none"
		return 0
	fi
	echo "left behind: ${left[*]}"
	return 1
}
