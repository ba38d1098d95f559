#!/usr/bin/env bash
# Drives the kernel's pktgen (samples/pktgen style, /proc/net/pktgen) against
# a real NIC: 64-byte UDP to the node running xdpolicy, one thread per CPU.
#
#   scripts/pktgen.sh -i IFACE -d DST_IP -m DST_MAC [-s SRC_IP] [-p DST_PORT]
#                     [-n COUNT] [-t THREADS] [-f FLOWS] [-r RATE_PPS]
#
# -f 0 (default) varies the UDP source port over 1024-65535 on every packet,
# like `xdpolicy bench --scenario new-flows`; -f N cycles over N flows
# (established). Where the pktgen module does not exist (as on the machine
# this project is developed on), use the AF_XDP generator: xdpolicy bench.
set -euo pipefail

iface= dst= dmac= src= dport=5000 count=10000000 threads=1 flows=0 rate=0
while getopts "i:d:m:s:p:n:t:f:r:h" o; do
	case $o in
	i) iface=$OPTARG ;; d) dst=$OPTARG ;; m) dmac=$OPTARG ;; s) src=$OPTARG ;;
	p) dport=$OPTARG ;; n) count=$OPTARG ;; t) threads=$OPTARG ;; f) flows=$OPTARG ;;
	r) rate=$OPTARG ;; *) sed -n '2,13p' "$0"; exit 2 ;;
	esac
done

if [ ! -d /proc/net/pktgen ] && ! modprobe pktgen 2>/dev/null; then
	echo "pktgen: the kernel pktgen module is missing on this machine (no /proc/net/pktgen, modprobe pktgen failed)." >&2
	echo "Use the AF_XDP generator instead, which needs no module:" >&2
	echo "  sudo xdpolicy bench --scenario new-flows --policies 1000 --pods 10000 --duration 5s -o table" >&2
	exit 1
fi
if [ -z "$iface" ] || [ -z "$dst" ] || [ -z "$dmac" ]; then
	echo "pktgen: -i IFACE, -d DST_IP and -m DST_MAC are required (see -h)" >&2
	exit 2
fi
[ -n "$src" ] || src=$(ip -4 -o addr show dev "$iface" | awk '{split($4,a,"/"); print a[1]; exit}')

pg() { echo "$2" > "/proc/net/pktgen/$1"; }
pg pgctrl reset
for ((t = 0; t < threads; t++)); do
	dev="$iface@$t"
	pg "kpktgend_$t" rem_device_all
	pg "kpktgend_$t" "add_device $dev"
	pg "$dev" "count $((count / threads))"
	pg "$dev" "pkt_size 60"
	pg "$dev" "dst $dst"
	pg "$dev" "src_min $src"
	pg "$dev" "src_max $src"
	pg "$dev" "dst_mac $dmac"
	pg "$dev" "udp_dst_min $dport"
	pg "$dev" "udp_dst_max $dport"
	pg "$dev" "udp_src_min 1024"
	pg "$dev" "udp_src_max 65535"
	pg "$dev" "queue_map_min $t"
	pg "$dev" "queue_map_max $t"
	if [ "$flows" -gt 0 ]; then
		pg "$dev" "flows $flows"
		pg "$dev" "flowlen 1000"
		pg "$dev" "flag UDPSRC_RND"
	fi
	[ "$rate" -gt 0 ] && pg "$dev" "ratep $((rate / threads))"
	pg "$dev" "burst 32"
done
echo "pktgen: sending $count packets from $iface ($threads threads) to $dst/$dport..."
pg pgctrl start
for ((t = 0; t < threads; t++)); do
	grep -E "^Result|pps" "/proc/net/pktgen/$iface@$t" || true
done
