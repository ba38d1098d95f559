// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* Slow-path entry of xdpolicy: on dp1, the far end of the punt veth, hand
 * every frame to the AF_XDP socket bound to its RX queue. With no socket
 * there is no one to decide, so the frame is dropped (fail closed). */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xdpolicy.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PCNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} punt_counters SEC(".maps");

SEC("xdp")
int xdp_punt(struct xdp_md *ctx)
{
	long ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
	__u32 idx = ret == XDP_REDIRECT ? PCNT_REDIRECT : PCNT_NO_SOCKET;
	__u64 *c = bpf_map_lookup_elem(&punt_counters, &idx);

	if (c)
		*c += 1;
	return ret;
}

char __license[] SEC("license") = "Dual BSD/GPL";
