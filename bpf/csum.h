/* csum.h - kernel only, included by forward.h and maps.h: RFC 1071 Internet checksums.
 *
 * Sums are 64-bit accumulators of words loaded from memory in host order, folded at the
 * end; one's-complement addition commutes with byte swapping, so the folded result is
 * stored back without a swap (RFC 1071 section 2(B)). Values computed here rather than
 * loaded (lengths, protocol) are added in their network-order memory form.
 */
#ifndef ICEGATE_CSUM_H
#define ICEGATE_CSUM_H

#include "parsing.h"

#define CSUM_CHUNK 512     /* bpf_csum_diff() sums at most 512 bytes per call */
#define CSUM_MAX_CHUNKS 8  /* 4 KiB: more than a linear XDP frame holds */

/* The per-CPU buffer packet_sum() copies through (maps.h declares the map). */
struct csum_scratch {
	__u8 bytes[CSUM_CHUNK + 4];
};

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

/* IPv4 header checksum of the outer header encapsulate() writes (forward.h): version 4,
 * IHL 5, TOS 0, ID 0, DF, `ttl`, UDP; the values (network byte order) are summed where
 * they are, never read back from the packet: the headroom the header goes to is cold, and
 * reading a line the stores are still fetching stalled a flow hit for a quarter of its
 * in-place time (issue 15, perf at 30 kpps). Stores alone retire into the store buffer. */
static __always_inline __u16 ipv4_outer_csum(__be16 tot_len, __be16 frag_off, __u8 ttl, __be32 saddr, __be32 daddr)
{
	__u64 sum = (__u64)bpf_htons(0x4500) + tot_len + frag_off + bpf_htons(((__u16)ttl << 8) | IPPROTO_UDP) +
		    saddr + daddr;

	return csum_fold64(sum);
}

/* Sum of `len` packet bytes at frame offset `off`, through `buf` (a CSUM_CHUNK + 4 byte
 * per-CPU scratch buffer): bpf_xdp_load_bytes() copies a chunk, bpf_csum_diff() sums
 * it. The verifier would walk a byte loop over the packet once per path into it; this
 * loop has at most CSUM_MAX_CHUNKS short iterations. Chunks are even-sized, so only the
 * last may be odd: it is padded with zero bytes (RFC 768). Returns -1 if the bytes are
 * not all in the frame. */
static __always_inline int packet_sum(struct xdp_md *ctx, __u32 off, __u32 len, __u8 *buf, __u64 *sum)
{
	__u32 done = 0;

	for (int i = 0; i < CSUM_MAX_CHUNKS; i++) {
		__u64 n = len - done, padded;

		if (n == 0)
			break;
		if (n > CSUM_CHUNK)
			n = CSUM_CHUNK;
		barrier_var(n);
		if (n == 0 || n > CSUM_CHUNK) /* for the verifier: bounds on this very register */
			return -1;
		if (bpf_xdp_load_bytes(ctx, off + done, buf, n))
			return -1;
		__builtin_memset(buf + n, 0, 4); /* zero padding up to a multiple of 4 */
		padded = (n + 3) & ~3ULL;
		barrier_var(padded);
		if (padded > CSUM_CHUNK)
			return -1;
		*sum += (__u32)bpf_csum_diff(NULL, 0, (__be32 *)buf, padded, 0);
		done += n;
	}
	return done == len ? 0 : -1;
}

#endif /* ICEGATE_CSUM_H */
