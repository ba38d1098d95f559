/* Types and constants shared by the kernel programs and, through bpf2go
 * -type, by the Go side. Keep every struct free of implicit padding: the
 * kernel hashes keys byte by byte, and Go must see the same layout. */
#pragma once

#include <linux/bpf.h>

/* Hook ids. Named from the pod's point of view. */
enum {
	HOOK_EGRESS = 1,  /* tcx ingress on H: traffic leaving the pod */
	HOOK_INGRESS = 2, /* tcx egress on H: traffic entering the pod */
};

enum {
	VERDICT_ALLOW = 1,
	VERDICT_DENY = 2,
};

/* pod_info.flags */
enum {
	POD_ISOLATED_INGRESS = 1 << 0,
	POD_ISOLATED_EGRESS = 1 << 1,
};

/* config.flags */
enum {
	CONFIG_FASTPATH_OFF = 1 << 0,
};

/* Index into the per-CPU "counters" array of tcx.c. Append only: the Go
 * constants mirror these numbers and pinned maps outlive a restart. */
enum {
	CNT_PASS_NONIP,
	CNT_PASS_ND,
	CNT_PASS_NOT_ISOLATED,
	CNT_PASS_CACHED,
	CNT_DROP_CACHED,
	CNT_PUNT,
	CNT_DROP_MALFORMED,
	CNT_DROP_NO_AGENT,
	CNT_DROP_GSO_MISS,
	CNT_REQUEST_LOST,
	CNT_PASS_REINJECTED,
	CNT_PASS_RELATED,
	CNT_DROP_FRAG_ORPHAN,
	CNT_MAX,
};

/* Index into the per-CPU "punt_counters" array of punt.c. */
enum {
	PCNT_REDIRECT,
	PCNT_NO_SOCKET,
	PCNT_MAX,
};

/* A flow as one hook sees it. IPv4 addresses are v4-mapped IPv6
 * (::ffff:a.b.c.d). Ports are 0 for protocols without ports (ICMP, ICMPv6,
 * anything else); a later fragment carries the ports of its datagram's
 * first fragment (see struct frag_val). */
struct flow_key {
	__u8 hook;
	__u8 proto;
	__u16 pad;
	__u32 ifindex; /* H's ifindex */
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct flow_val {
	__u8 verdict;
	__u8 pad[3];
	__u32 generation;
	__u64 last_seen_ns; /* bpf_ktime_get_ns(); refreshed on allow hits only */
};

/* A fragmented datagram as one hook sees it: the key of "frags". id is the
 * IPv4 identification (16 bits) or the IPv6 fragment header's id. */
struct frag_key {
	__u8 hook;
	__u8 proto;
	__u16 pad;
	__u32 ifindex;
	__u32 id;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* The ports of the first fragment, so that later fragments, which carry no
 * L4 header, are keyed and decided as their datagram. */
struct frag_val {
	__be16 sport;
	__be16 dport;
	__u32 pad;
	__u64 seen_ns; /* when the first fragment was seen */
};

/* Value of "pods", keyed by H's ifindex (__u32). */
struct pod_info {
	__u32 flags;
	__u32 pod_id;
	__u8 pod_mac[6];  /* P's MAC */
	__u8 host_mac[6]; /* H's MAC */
};

/* The single entry of the "config" array. A zeroed entry (no agent ever
 * ran) punts nowhere and so fails closed for isolated pods. */
struct config_val {
	__u32 generation;
	__u32 punt_ifindex; /* dp0; 0 = no agent: drop what would be punted */
	__u32 flags;
	__u32 max_punt_len; /* larger skbs are not punted; 0 = no limit */
	/* 1 in sample_every cached denies is also reported through the
	 * requests ring buffer (flow_key.pad = REQUEST_SAMPLE) so that the
	 * agent can trace it; 0 = never. */
	__u32 sample_every;
};

/* flow_key.pad in a requests record: why it was sent. */
enum {
	REQUEST_VERDICT = 0, /* a GSO packet missed: decide and cache the flow */
	REQUEST_SAMPLE = 1,  /* a sampled fast-path drop: trace only */
};
