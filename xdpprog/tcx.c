// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* Fast path of xdpolicy: a flow-verdict cache on the host end (H) of every
 * pod veth. Cached verdicts are applied here; everything else is punted to
 * userspace through the punt veth with its hook encoded in one Ethernet
 * address (see punt()). This program never decides policy itself. */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdpolicy.h"

/* Pass without ending the chain: with tcx this is TCX_NEXT, with clsact
 * TC_ACT_UNSPEC, so a CNI program attached after ours still runs. */
#define ACT_PASS TC_ACT_UNSPEC

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define IPPROTO_SCTP 132

/* ICMP and ICMPv6 errors: they carry the header of the packet they answer. */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PARAMPROB 4

/* How long a first fragment's ports serve its later fragments: the IPv6
 * reassembly timeout (IPv4's is 30 s). */
#define FRAG_TTL_NS (60 * 1000 * 1000 * 1000ULL)

#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 8
/* last_seen is read by a userspace expiry with seconds of slack; writing it
 * less often keeps hot flows from bouncing a cache line between CPUs. */
#define LAST_SEEN_GRANULARITY_NS (100 * 1000 * 1000ULL)

/* With the fast path off, a frame a worker re-injects on the pod end comes
 * back through tcx ingress; the worker marks the flow's entry with this bit
 * just before, and the first frame to find it takes it and passes, so the
 * re-injected frame is not punted again. */
#define LAST_SEEN_REINJECT (1ULL << 63)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* The ports of fragmented datagrams, written at their first fragment and
 * read at the later ones (see struct frag_val). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frags SEC(".maps");

/* Fast-path drops per pod (H ifindex), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} pod_drops SEC(".maps");

/* Verdict requests: flow keys of GSO packets that missed the cache. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} requests SEC(".maps");

/* Wire headers, declared here because the uapi ones drag in arch headers. */
struct ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct vlanhdr {
	__be16 tci;
	__be16 proto;
};

struct ipv4hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 proto;
	__u16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct ipv6hdr {
	__u8 ver_tc;
	__u8 tc_flow[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ipv6_opt {
	__u8 nexthdr;
	__u8 len;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

enum parse_result {
	PARSE_OK,
	PARSE_NONIP,
	PARSE_ND,
	PARSE_MALFORMED,
};

enum {
	FRAG_NONE,  /* not fragmented (an atomic IPv6 fragment included) */
	FRAG_FIRST, /* offset 0, more fragments follow: has the L4 header */
	FRAG_LATER, /* no L4 header: ports come from "frags" */
};

/* What parse() finds besides the flow key. */
struct parse_info {
	__u8 frag;
	/* An ICMP or ICMPv6 error whose embedded header was read: related is
	 * the key, at this hook, of the replies of the flow it answers. */
	__u8 icmp_error;
	__u32 frag_id;
	struct flow_key related;
};

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	/* bpf_skb_load_bytes also reads paged data, so headers past the linear
	 * area are parsed rather than mistaken for truncation. */
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH ||
	       nexthdr == IPPROTO_FRAGMENT;
}

/* Reads the header embedded in an ICMP error at off (the outer ICMP header,
 * in a packet ending at end) into pi->related, reversed: the key its flow's replies have at this hook.
 * Only headers of the outer family whose ports (or ICMP) directly follow the
 * IP header are read; anything else is no error of a known flow. */
static __always_inline void parse_icmp_error(struct __sk_buff *skb, __u32 off, __u32 end, int v6,
					     struct parse_info *pi)
{
	struct flow_key *r = &pi->related;
	__u8 proto;

	off += 8;
	if (v6) {
		struct ipv6hdr ip6;

		if (off + sizeof(ip6) > end || load(skb, off, &ip6, sizeof(ip6)) || ip6.ver_tc >> 4 != 6)
			return;
		__builtin_memcpy(r->saddr, ip6.daddr, 16);
		__builtin_memcpy(r->daddr, ip6.saddr, 16);
		proto = ip6.nexthdr;
		off += sizeof(ip6);
	} else {
		struct ipv4hdr ip;
		__u32 ihl;

		if (off + sizeof(ip) > end || load(skb, off, &ip, sizeof(ip)))
			return;
		ihl = (ip.ver_ihl & 0x0f) * 4;
		if (ip.ver_ihl >> 4 != 4 || ihl < sizeof(ip) || (ip.frag_off & bpf_htons(0x1fff)))
			return;
		r->saddr[10] = 0xff;
		r->saddr[11] = 0xff;
		__builtin_memcpy(&r->saddr[12], ip.daddr, 4);
		r->daddr[10] = 0xff;
		r->daddr[11] = 0xff;
		__builtin_memcpy(&r->daddr[12], ip.saddr, 4);
		proto = ip.proto;
		off += ihl;
	}
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 ports[2];

		if (off + sizeof(ports) > end || load(skb, off, ports, sizeof(ports)))
			return;
		r->sport = ports[1];
		r->dport = ports[0];
	} else if (proto != (v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP)) {
		return;
	}
	r->proto = proto;
	pi->icmp_error = 1;
}

/* Fills k->proto, ports and addresses from the frame, and pi. */
static __always_inline enum parse_result parse(struct __sk_buff *skb, struct flow_key *k,
					       struct parse_info *pi)
{
	struct ethhdr eth;
	__u32 off = sizeof(eth), end = skb->len; /* end of the IP packet */
	__u8 later_fragment = 0;
	__be16 proto;
	__u8 nexthdr;

	if (load(skb, 0, &eth, sizeof(eth)))
		return PARSE_MALFORMED;
	proto = eth.proto;

	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlanhdr vlan;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (load(skb, off, &vlan, sizeof(vlan)))
			return PARSE_MALFORMED;
		proto = vlan.proto;
		off += sizeof(vlan);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct ipv4hdr ip;
		__u32 ihl, tot_len;

		if (load(skb, off, &ip, sizeof(ip)))
			return PARSE_MALFORMED;
		ihl = (ip.ver_ihl & 0x0f) * 4;
		tot_len = bpf_ntohs(ip.tot_len);
		if (ip.ver_ihl >> 4 != 4 || ihl < sizeof(ip) || off + ihl > skb->len)
			return PARSE_MALFORMED;
		/* tot_len 0 is how IPv4 BIG TCP marks GSO packets over 64K. */
		if (tot_len != 0 || skb->gso_segs <= 1)
			if (tot_len < ihl || off + tot_len > skb->len)
				return PARSE_MALFORMED;
		if (tot_len != 0)
			end = off + tot_len;
		k->saddr[10] = 0xff;
		k->saddr[11] = 0xff;
		__builtin_memcpy(&k->saddr[12], ip.saddr, 4);
		k->daddr[10] = 0xff;
		k->daddr[11] = 0xff;
		__builtin_memcpy(&k->daddr[12], ip.daddr, 4);
		nexthdr = ip.proto;
		later_fragment = (ip.frag_off & bpf_htons(0x1fff)) != 0;
		if (later_fragment)
			pi->frag = FRAG_LATER;
		else if (ip.frag_off & bpf_htons(0x2000))
			pi->frag = FRAG_FIRST;
		pi->frag_id = bpf_ntohs(ip.id);
		off += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 plen;

		if (load(skb, off, &ip6, sizeof(ip6)))
			return PARSE_MALFORMED;
		plen = bpf_ntohs(ip6.payload_len);
		/* payload_len 0 is a jumbogram (IPv6 BIG TCP). */
		if (ip6.ver_tc >> 4 != 6 || off + sizeof(ip6) + plen > skb->len)
			return PARSE_MALFORMED;
		if (plen != 0 || skb->gso_segs <= 1)
			end = off + sizeof(ip6) + plen;
		__builtin_memcpy(k->saddr, ip6.saddr, 16);
		__builtin_memcpy(k->daddr, ip6.daddr, 16);
		nexthdr = ip6.nexthdr;
		off += sizeof(ip6);

		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			struct ipv6_opt opt;
			struct ipv6_frag frag;

			if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
			    nexthdr == IPPROTO_DSTOPTS) {
				if (load(skb, off, &opt, sizeof(opt)))
					return PARSE_MALFORMED;
				nexthdr = opt.nexthdr;
				off += (opt.len + 1) * 8;
			} else if (nexthdr == IPPROTO_AH) {
				if (load(skb, off, &opt, sizeof(opt)))
					return PARSE_MALFORMED;
				nexthdr = opt.nexthdr;
				off += (opt.len + 2) * 4;
			} else if (nexthdr == IPPROTO_FRAGMENT) {
				if (load(skb, off, &frag, sizeof(frag)))
					return PARSE_MALFORMED;
				nexthdr = frag.nexthdr;
				off += sizeof(frag);
				pi->frag_id = bpf_ntohl(frag.id);
				if (frag.frag_off & bpf_htons(0xfff8)) {
					later_fragment = 1;
					pi->frag = FRAG_LATER;
					break;
				}
				if (frag.frag_off & bpf_htons(1))
					pi->frag = FRAG_FIRST;
			} else {
				break;
			}
		}
		/* A chain longer than we follow fails closed rather than
		 * passing with a guessed protocol. */
		if (!later_fragment && is_ipv6_ext(nexthdr))
			return PARSE_MALFORMED;
	} else {
		return PARSE_NONIP;
	}

	/* Extension headers that claim more than the packet holds. */
	if (off > end)
		return PARSE_MALFORMED;
	k->proto = nexthdr;
	if (later_fragment)
		return PARSE_OK;

	switch (nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* Minimum header lengths, so a header cut short is dropped. */
		__u32 min = nexthdr == IPPROTO_TCP ? 20 : nexthdr == IPPROTO_UDP ? 8 : 12;
		__be16 ports[2];

		if (off + min > skb->len || load(skb, off, ports, sizeof(ports)))
			return PARSE_MALFORMED;
		k->sport = ports[0];
		k->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* ICMP keeps ports 0: NetworkPolicy cannot select ICMP by type,
		 * so one entry per address pair and hook is all it needs. */
		__u8 type;

		if (off + 4 > skb->len || load(skb, off, &type, sizeof(type)))
			return PARSE_MALFORMED;
		/* Router/neighbour solicitation and advertisement, redirect. */
		if (nexthdr == IPPROTO_ICMPV6 && type >= 133 && type <= 137)
			return PARSE_ND;
		if (nexthdr == IPPROTO_ICMPV6 ? type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB
					      : type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
						type == ICMP_PARAMETERPROB)
			parse_icmp_error(skb, off, end, nexthdr == IPPROTO_ICMPV6, pi);
		break;
	}
	}
	return PARSE_OK;
}

static __always_inline int punt(struct __sk_buff *skb, const struct flow_key *k,
				const struct config_val *cfg)
{
	/* The origin goes where P's MAC stands (the source when leaving the
	 * pod, the destination when entering it), so the other address
	 * survives to re-injection: behind a bridge the destination of a frame
	 * leaving the pod is the gateway's or a peer pod's MAC. The source
	 * form has the group bit, which no real source address has. See
	 * PutPunt in types.go. */
	__u8 mac[6] = {
		k->hook == HOOK_EGRESS ? 0x03 : 0x02, k->hook,
		k->ifindex >> 24, k->ifindex >> 16, k->ifindex >> 8, k->ifindex,
	};
	__u32 off = k->hook == HOOK_EGRESS ? 6 : 0;

	if (!cfg->punt_ifindex) {
		count(CNT_DROP_NO_AGENT);
		return TC_ACT_SHOT;
	}
	/* A GSO super-packet cannot go through the punt veth's XDP in one
	 * piece. Drop it and ask userspace for a verdict; TCP retransmits. */
	if (skb->gso_segs > 1 || (cfg->max_punt_len && skb->len > cfg->max_punt_len)) {
		if (bpf_ringbuf_output(&requests, (void *)k, sizeof(*k), 0))
			count(CNT_REQUEST_LOST);
		count(CNT_DROP_GSO_MISS);
		return TC_ACT_SHOT;
	}
	if (bpf_skb_store_bytes(skb, off, mac, sizeof(mac), 0)) {
		count(CNT_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	count(CNT_PUNT);
	return bpf_redirect(cfg->punt_ifindex, 0);
}

static __always_inline void count_pod_drop(__u32 ifindex)
{
	__u64 *n = bpf_map_lookup_elem(&pod_drops, &ifindex), one = 1;

	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&pod_drops, &ifindex, &one, BPF_NOEXIST);
}

static __always_inline void frag_key_of(struct frag_key *fk, const struct flow_key *k, __u32 id)
{
	fk->hook = k->hook;
	fk->proto = k->proto;
	fk->ifindex = k->ifindex;
	fk->id = id;
	__builtin_memcpy(fk->saddr, k->saddr, 16);
	__builtin_memcpy(fk->daddr, k->daddr, 16);
}

static __always_inline void remember_fragment(const struct flow_key *k, __u32 id)
{
	struct frag_key fk = {};
	struct frag_val fv = { .sport = k->sport, .dport = k->dport, .seen_ns = bpf_ktime_get_ns() };

	frag_key_of(&fk, k, id);
	bpf_map_update_elem(&frags, &fk, &fv, BPF_ANY);
}

/* Gives k the ports of its datagram's first fragment, if seen lately. */
static __always_inline int fragment_ports(struct flow_key *k, __u32 id)
{
	struct frag_key fk = {};
	struct frag_val *fv;

	frag_key_of(&fk, k, id);
	fv = bpf_map_lookup_elem(&frags, &fk);
	if (!fv || bpf_ktime_get_ns() - fv->seen_ns > FRAG_TTL_NS)
		return 0;
	k->sport = fv->sport;
	k->dport = fv->dport;
	return 1;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 hook)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	struct flow_key k = { .hook = hook, .ifindex = ifindex };
	struct parse_info pi = {};
	struct pod_info *pod;
	struct config_val *cfg;
	struct flow_val *v;

	/* Pods no policy isolates are none of our business, malformed frames
	 * included: look them up before parsing anything. A pod isolated in
	 * one direction only still goes through the cache in the other: the
	 * flows it opens there must leave a reply entry behind, or their
	 * answers would be judged as new flows by the isolated direction.
	 * Userspace allows them as not isolated and caches both ways. */
	pod = bpf_map_lookup_elem(&pods, &ifindex);
	if (!pod || !(pod->flags & (POD_ISOLATED_INGRESS | POD_ISOLATED_EGRESS))) {
		count(CNT_PASS_NOT_ISOLATED);
		return ACT_PASS;
	}

	switch (parse(skb, &k, &pi)) {
	case PARSE_NONIP:
		count(CNT_PASS_NONIP);
		return ACT_PASS;
	case PARSE_ND:
		count(CNT_PASS_ND);
		return ACT_PASS;
	case PARSE_MALFORMED:
		count(CNT_DROP_MALFORMED);
		return TC_ACT_SHOT;
	case PARSE_OK:
		break;
	}

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return TC_ACT_SHOT;

	/* Every fragment of a datagram is keyed, and so decided, as its
	 * first: later ones take its ports, and without them they are
	 * dropped, since nothing says which flow they belong to. */
	if (pi.frag == FRAG_FIRST) {
		remember_fragment(&k, pi.frag_id);
	} else if (pi.frag == FRAG_LATER && !fragment_ports(&k, pi.frag_id)) {
		count(CNT_DROP_FRAG_ORPHAN);
		count_pod_drop(ifindex);
		return TC_ACT_SHOT;
	}

	if (cfg->flags & CONFIG_FASTPATH_OFF) {
		if (hook == HOOK_EGRESS) {
			v = bpf_map_lookup_elem(&flows, &k);
			if (v && v->verdict == VERDICT_ALLOW && v->generation == cfg->generation) {
				__u64 seen = v->last_seen_ns;

				if ((seen & LAST_SEEN_REINJECT) &&
				    __sync_val_compare_and_swap(&v->last_seen_ns, seen, seen & ~LAST_SEEN_REINJECT) == seen) {
					count(CNT_PASS_REINJECTED);
					return ACT_PASS;
				}
			}
		}
		return punt(skb, &k, cfg);
	}

	/* An ICMP error about a flow allowed here travels as its replies
	 * do, whatever its outer source (a router, for "fragmentation
	 * needed"): delivered as related, as conntrack does. Otherwise
	 * policy decides it as ICMP, below. */
	if (pi.icmp_error) {
		pi.related.hook = hook;
		pi.related.ifindex = ifindex;
		v = bpf_map_lookup_elem(&flows, &pi.related);
		if (v && v->verdict == VERDICT_ALLOW && v->generation == cfg->generation) {
			count(CNT_PASS_RELATED);
			return ACT_PASS;
		}
	}

	v = bpf_map_lookup_elem(&flows, &k);
	if (!v || v->generation != cfg->generation)
		return punt(skb, &k, cfg);

	if (v->verdict == VERDICT_ALLOW) {
		__u64 now = bpf_ktime_get_ns();

		if (now - v->last_seen_ns > LAST_SEEN_GRANULARITY_NS)
			v->last_seen_ns = now;
		count(CNT_PASS_CACHED);
		return ACT_PASS;
	}
	if (v->verdict == VERDICT_DENY) {
		/* last_seen stays put: a deny lives only as long as userspace
		 * gives it from its creation. */
		count(CNT_DROP_CACHED);
		count_pod_drop(ifindex);
		if (cfg->sample_every && bpf_get_prandom_u32() % cfg->sample_every == 0) {
			k.pad = REQUEST_SAMPLE;
			bpf_ringbuf_output(&requests, &k, sizeof(k), 0);
		}
		return TC_ACT_SHOT;
	}
	return punt(skb, &k, cfg);
}

/* Attach to tcx ingress (or clsact ingress) of H. */
SEC("tc")
int tcx_from_pod(struct __sk_buff *skb)
{
	return handle(skb, HOOK_EGRESS);
}

/* Attach to tcx egress (or clsact egress) of H. */
SEC("tc")
int tcx_to_pod(struct __sk_buff *skb)
{
	return handle(skb, HOOK_INGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
