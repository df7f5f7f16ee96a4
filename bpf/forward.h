/* forward.h - kernel only, included by relay.c: how a packet leaves the relay.
 *
 * next_hop() is docs/DATAPATH.md section 6 (bpf_fib_lookup before any change, so a
 * packet that is not forwarded leaves no trace); encapsulate() is §2.2 (outer
 * IP/UDP/Geneve in front of the client's untouched IP packet); decapsulate() is the
 * output of section 3 (Ethernet in front of the transceiver's inner packet).
 */
#ifndef ICEGATE_FORWARD_H
#define ICEGATE_FORWARD_H

#include "csum.h"
#include "parsing.h"
#include "shared.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define OUTER_TTL 64
#define IPV4_DF_BE 0x0040 /* htons(IP_DF) */
#define OUTER4_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + GENEVE_HLEN)   /* 36 */
#define OUTER6_LEN (sizeof(struct ipv6hdr) + sizeof(struct udphdr) + GENEVE_HLEN) /* 56 */
#define ENTROPY_PORT_BASE 0xc000 /* RFC 8926 section 3.3: ephemeral range */

/* Section 6: resolve the next hop for a packet of `tot_len` IP bytes from src to dst.
 * On success `fib` holds the MACs and the egress ifindex. */
static __always_inline __u32 next_hop(struct xdp_md *ctx, __u8 family, const __u8 *src, const __u8 *dst,
				      __u32 tot_len, struct bpf_fib_lookup *fib)
{
	int rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	fib->ifindex = ctx->ingress_ifindex;
	if (family == 4) {
		fib->family = AF_INET;
		__builtin_memcpy(&fib->ipv4_src, src + 12, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst + 12, 4);
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return CONTINUE;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return STAT_SLOW_NO_NEIGH; /* userspace sends it; the kernel resolves the neighbour */
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return STAT_DROP_FRAG_NEEDED; /* the private MTU must carry public MTU + outer headers */
	return STAT_DROP_FIB; /* no route, blackhole, forwarding disabled on the ingress device */
}

/* The outer UDP source port of a flow: icegate.geneve.entropy_port(), stable per flow
 * and spread for ECMP/RSS on the private network (RFC 8926 section 3.3). */
static __always_inline __u16 entropy_port(const __u8 *client, __be16 client_port, __be16 vip_port)
{
	__u32 w[4], h;

	__builtin_memcpy(w, client, 16);
	h = bpf_ntohl(w[0]) ^ bpf_ntohl(w[1]) ^ bpf_ntohl(w[2]) ^ bpf_ntohl(w[3]) ^
	    (((__u32)bpf_ntohs(client_port) << 16) | bpf_ntohs(vip_port));
	h ^= h >> 16;
	return ENTROPY_PORT_BASE | (h & 0x3fff);
}

/* Drop what follows the IP packet (Ethernet padding): it is not forwarded (section 1). */
static __always_inline int trim_to(struct xdp_md *ctx, __u32 frame_len, __u32 end)
{
	if (frame_len <= end)
		return 0;
	return bpf_xdp_adjust_tail(ctx, -(int)(frame_len - end));
}

static __always_inline void write_eth(struct ethhdr *eth, const struct bpf_fib_lookup *fib, __be16 proto)
{
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	eth->h_proto = proto;
}

static __always_inline void write_geneve(struct geneve_hdr *gnv, __u8 inner_family, __u16 vni)
{
	gnv->ver_opt_len = 0; /* version 0, no options */
	gnv->flags = 0;       /* O = C = 0 */
	gnv->protocol = inner_family == 4 ? GENEVE_PROTO_IPV4_BE : GENEVE_PROTO_IPV6_BE;
	gnv->vni[0] = 0;      /* VNI = transceiver index (16 bits of 24) */
	gnv->vni[1] = vni >> 8;
	gnv->vni[2] = vni;
	gnv->reserved = 0;
}

/* §2.2, first half: the client's IP packet (`l3`) alone in the frame (`frame_len`
 * bytes now), with room for Ethernet and `outer_len` bytes of outer headers in front.
 * The only step of an encapsulation that can fail: relay.c records the flow between the
 * two halves (see from_client()). */
static __always_inline __u32 make_room(struct xdp_md *ctx, const struct ip_udp *l3, __u32 frame_len,
				       __u32 outer_len)
{
	if (trim_to(ctx, frame_len, l3->ip_off + l3->ip_len))
		return STAT_DROP_INTERNAL;
	if (bpf_xdp_adjust_head(ctx, (int)l3->ip_off - (int)(ETH_HLEN + outer_len)))
		return STAT_DROP_INTERNAL;
	return CONTINUE;
}

/* §2.2, second half, into the room make_room() left: Ethernet | outer IP | outer UDP |
 * Geneve | the client's IP packet (`l3`, byte for byte). `inner_sum` is the packet_sum()
 * of the client's IP packet, needed only for an IPv6 outer header, whose UDP checksum is
 * mandatory (RFC 8200 section 8.1). The headroom written here is cold: only stores, no
 * read of what was written (ipv4_outer_csum()). */
static __always_inline __u32 encapsulate(struct xdp_md *ctx, const struct ip_udp *l3,
					 const struct backend_key *bk, const struct backend_value *be,
					 const struct relay_config *cfg, const struct bpf_fib_lookup *fib,
					 __u64 inner_sum)
{
	__u16 udp_len = sizeof(struct udphdr) + GENEVE_HLEN + l3->ip_len;
	__u16 sport = entropy_port(l3->src, l3->sport, l3->dport);
	void *data, *data_end;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	struct ethhdr *eth = data;

	if (be->family == 4) {
		struct iphdr *ip = (void *)(eth + 1);
		struct udphdr *udp = (void *)(ip + 1);
		struct geneve_hdr *gnv = (void *)(udp + 1);

		if ((void *)(gnv + 1) > data_end)
			return STAT_DROP_INTERNAL;
		__be16 tot_len = bpf_htons(sizeof(*ip) + udp_len);
		__be32 saddr, daddr;

		__builtin_memcpy(&saddr, cfg->tunnel_addr4 + 12, 4);
		__builtin_memcpy(&daddr, be->addr + 12, 4);
		write_eth(eth, fib, ETH_P_IP_BE);
		*(__u8 *)ip = 0x45; /* version 4, IHL 5 */
		ip->tos = 0;
		ip->tot_len = tot_len;
		ip->id = 0;
		ip->frag_off = IPV4_DF_BE;
		ip->ttl = OUTER_TTL;
		ip->protocol = IPPROTO_UDP;
		ip->saddr = saddr;
		ip->daddr = daddr;
		ip->check = ipv4_outer_csum(tot_len, IPV4_DF_BE, OUTER_TTL, saddr, daddr); /* stores only */
		udp->source = bpf_htons(sport);
		udp->dest = be->port;
		udp->len = bpf_htons(udp_len);
		udp->check = 0; /* RFC 8926 section 3.3: zero checksum over IPv4 */
		write_geneve(gnv, l3->family, bk->index);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct udphdr *udp = (void *)(ip6 + 1);
		struct geneve_hdr *gnv = (void *)(udp + 1);

		if ((void *)(gnv + 1) > data_end)
			return STAT_DROP_INTERNAL;
		write_eth(eth, fib, ETH_P_IPV6_BE);
		*(__be32 *)ip6 = bpf_htonl(6 << 28); /* version 6, traffic class 0, flow label 0 */
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = OUTER_TTL;
		__builtin_memcpy(&ip6->saddr, cfg->tunnel_addr6, 16);
		__builtin_memcpy(&ip6->daddr, be->addr, 16);
		udp->source = bpf_htons(sport);
		udp->dest = be->port;
		udp->len = bpf_htons(udp_len);
		write_geneve(gnv, l3->family, bk->index);

		__u32 *g = (__u32 *)gnv;
		__u16 check = csum_fold64(csum_pseudo(6, cfg->tunnel_addr6, be->addr, udp_len) + udp->source +
					  udp->dest + udp->len + g[0] + g[1] + inner_sum);

		udp->check = check ? check : 0xffff; /* 0 would mean "no checksum" */
	}
	return CONTINUE;
}

/* Section 3 output: Ethernet | the inner packet (`inner`), as the transceiver wrote it. */
static __always_inline __u32 decapsulate(struct xdp_md *ctx, const struct ip_udp *inner, __u32 frame_len,
					 const struct bpf_fib_lookup *fib)
{
	void *data, *data_end;
	struct ethhdr *eth;

	if (trim_to(ctx, frame_len, inner->ip_off + inner->ip_len))
		return STAT_DROP_INTERNAL;
	if (bpf_xdp_adjust_head(ctx, (int)inner->ip_off - ETH_HLEN))
		return STAT_DROP_INTERNAL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return STAT_DROP_INTERNAL;
	write_eth(eth, fib, inner->family == 4 ? ETH_P_IP_BE : ETH_P_IPV6_BE);
	return CONTINUE;
}

#endif /* ICEGATE_FORWARD_H */
