/* csum.h - kernel only, included by forward.h: RFC 1071 Internet checksums.
 *
 * Sums are 64-bit accumulators of words loaded from memory in host order, folded at the
 * end; one's-complement addition commutes with byte swapping, so the folded result is
 * stored back without a swap (RFC 1071 section 2(B)). Values computed here rather than
 * loaded (lengths, protocol) are added in their network-order memory form.
 */
#ifndef ICEGATE_CSUM_H
#define ICEGATE_CSUM_H

#include "parsing.h"

/* The complemented 16-bit one's-complement sum: what a checksum field holds. */
static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

static __always_inline __u64 csum_addr16(const __u8 *addr)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	return (__u64)w[0] + w[1] + w[2] + w[3];
}

/* The UDP pseudo header (RFC 768; RFC 8200 section 8.1) for 16-byte addresses. */
static __always_inline __u64 csum_pseudo(__u8 family, const __u8 *src, const __u8 *dst, __u32 udp_len)
{
	__u32 s, d;

	if (family == 6)
		return csum_addr16(src) + csum_addr16(dst) + bpf_htonl(udp_len) + bpf_htonl(IPPROTO_UDP);
	__builtin_memcpy(&s, src + 12, 4);
	__builtin_memcpy(&d, dst + 12, 4);
	return (__u64)s + d + bpf_htonl((IPPROTO_UDP << 16) | udp_len);
}

/* IPv4 header checksum of a 20-byte header whose check field is 0. */
static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *words = (const __u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += words[i];
	return csum_fold64(sum);
}

/* The one's-complement sum of the whole IP packet `l3` (header and UDP segment), for the
 * outer UDP checksum over IPv6, without reading the payload: a UDP segment whose
 * checksum verifies sums to the negation of its pseudo header, so the segment adds
 * csum_fold64(pseudo) (Linux calls this local checksum offload,
 * Documentation/networking/checksum-offloads.rst). Returns -1 when the inner checksum
 * is 0 (IPv4 "no checksum"): the segment's sum is then unknown without a loop over the
 * payload that the verifier cannot afford on every path. */
static __always_inline int inner_packet_sum(struct xdp_md *ctx, const struct ip_udp *l3, __u64 *sum)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 *check = pkt_at(data, data_end, l3->udp_off + 6, 2);
	__u64 acc = 0;

	if (!check || *check == 0)
		return -1;
	if (l3->family == 6) {
		__u32 *w = pkt_at(data, data_end, l3->ip_off, sizeof(struct ipv6hdr));

		if (!w)
			return -1;
#pragma unroll
		for (int i = 0; i < (int)sizeof(struct ipv6hdr) / 4; i++)
			acc += w[i];
	} else {
		__u32 *w = pkt_at(data, data_end, l3->ip_off, sizeof(struct iphdr));
		__u32 words = (__u32)(l3->udp_off - l3->ip_off) / 4; /* IHL */

		if (!w)
			return -1;
#pragma unroll
		for (int i = 0; i < (int)sizeof(struct iphdr) / 4; i++)
			acc += w[i];
		/* Options (IHL > 5, rare): one word at a time through the stack, a fixed loop. */
#pragma unroll
		for (int i = sizeof(struct iphdr) / 4; i < 15; i++) {
			__u32 opt = 0;

			if (i < words && bpf_xdp_load_bytes(ctx, l3->ip_off + i * 4, &opt, 4))
				return -1;
			acc += opt;
		}
	}
	*sum = acc + csum_fold64(csum_pseudo(l3->family, l3->src, l3->dst, l3->udp_len));
	return 0;
}

#endif /* ICEGATE_CSUM_H */
