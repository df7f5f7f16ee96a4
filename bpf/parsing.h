/* parsing.h - kernel only, included by relay.c: one parse_* helper per header.
 *
 * Each helper reads at an offset from the frame start, checks `ptr + n > data_end`
 * before it touches a byte, and returns CONTINUE or the enum stat that ends the packet
 * (docs/DATAPATH.md section 1 for the outer headers, section 3 for the inner ones).
 * Offsets are bounded by MAX_HEADER_OFF so the verifier can track packet pointers with
 * a variable part (IPv4 options, Geneve options, STUN attributes).
 */
#ifndef ICEGATE_PARSING_H
#define ICEGATE_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>

#include "shared.h"

/* Not a verdict: the packet goes on to the next rule. */
#define CONTINUE STAT_MAX

/* The verifier accepts pkt + var only when var <= 0xffff; a linear XDP frame is far
 * smaller, so anything past this offset is treated as truncated. pkt_at() masks with it. */
#define MAX_HEADER_OFF 0x3fff

#define VLAN_HLEN 4
#define ETH_P_8021Q_BE 0x0081 /* htons(ETH_P_8021Q) */
#define ETH_P_IP_BE 0x0008    /* htons(ETH_P_IP) */
#define ETH_P_IPV6_BE 0xdd86  /* htons(ETH_P_IPV6) */
#define IPV4_MF_OFFSET_BE 0xff3f /* htons(IP_MF | IP_OFFSET) */
#define NEXTHDR_FRAGMENT 44

#define GENEVE_HLEN 8
#define GENEVE_FLAG_OAM 0x80
#define GENEVE_FLAG_CRITICAL 0x40
#define GENEVE_PROTO_IPV4_BE 0x0008 /* htons(0x0800) */
#define GENEVE_PROTO_IPV6_BE 0xdd86 /* htons(0x86dd) */

#define STUN_HLEN 20
#define STUN_COOKIE_BE 0x42a41221 /* htonl(STUN_COOKIE) */
#define STUN_BINDING_REQUEST_BE 0x0100
#define STUN_BINDING_SUCCESS_BE 0x0101
#define STUN_ATTR_USERNAME_BE 0x0600

/* An IP packet carrying UDP, as parse_ip_udp() found it. Addresses are 16 bytes,
 * IPv4 mapped (::ffff:a.b.c.d), the form every map key uses. */
struct ip_udp {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u16 ip_off;      /* IP header, from the frame start */
	__u16 ip_len;      /* IPv4 total length, or 40 + IPv6 payload length */
	__u16 udp_off;     /* UDP header */
	__u16 udp_len;     /* the UDP length field */
	__u16 payload_off; /* UDP payload */
	__u8 family;       /* 4 or 6 */
	__u8 proto;        /* protocol / next header, also for PASS_FRAGMENT and PASS_NOT_UDP */
};

/* Forget what the compiler knows about `var` (the kernel's barrier_var()). */
#define barrier_var(var) asm volatile("" : "+r"(var))

/* `len` (a constant) bytes at frame offset `off`, or NULL when they are not all there.
 * The verifier only tracks pkt + var when var is provably small, and clang likes to do
 * the pointer arithmetic on a copy made before the bounds check; masking inside asm,
 * after the check, bounds the very register the access uses (a no-op at run time). */
#define pkt_at(data, data_end, off, len)                                                    \
	({                                                                                  \
		__u64 __off = (off);                                                        \
		void *__p = NULL;                                                           \
		if (__off <= MAX_HEADER_OFF) {                                              \
			asm volatile("%0 &= 0x3fff" : "+r"(__off));                         \
			if ((data) + __off + (len) <= (data_end))                           \
				__p = (data) + __off;                                       \
		}                                                                           \
		__p;                                                                        \
	})

struct geneve_hdr {
	__u8 ver_opt_len; /* version (2 bits) | option length in 4-byte words (6 bits) */
	__u8 flags;       /* O | C | reserved */
	__be16 protocol;
	__u8 vni[3];
	__u8 reserved;
};

struct stun_hdr {
	__be16 type;
	__be16 length;
	__be32 cookie;
	__u8 transaction[12];
};

struct stun_attr {
	__be16 type;
	__be16 length;
};

/* What parse_stun() learned about a message in the STUN range. */
struct stun_info {
	__u8 name[MAX_UFRAG_LEN + 1]; /* the start of USERNAME, copied out of the packet */
	__u8 binding_request;         /* 1: name starts with a token-sized server ufrag */
};

static __always_inline void addr_from_ipv4(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

/* Ethernet with at most one 802.1Q tag (§1 r1). Returns the EtherType (network
 * order) and sets *l3_off, or 0 for a frame too short to hold one. */
static __always_inline __be16 parse_ethhdr(void *data, void *data_end, __u16 *l3_off)
{
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return 0;
	proto = eth->h_proto;
	*l3_off = ETH_HLEN;
	if (proto == ETH_P_8021Q_BE) {
		__be16 *inner = (void *)(eth + 1) + 2; /* TCI, then the EtherType */

		if ((void *)(inner + 1) > data_end)
			return 0;
		proto = *inner;
		*l3_off = ETH_HLEN + VLAN_HLEN;
	}
	return proto;
}

/* IPv4 or IPv6 header at `off`, with `limit` the end of the bytes that belong to it
 * (the frame, or the Geneve payload for an inner packet). §1 r2-r5; the caller
 * applies §1 r6 and then udp_length_ok() (§1 r7). */
static __always_inline __u32 parse_ip_udp(void *data, void *data_end, __u32 off, __u32 limit,
					  __u8 family, struct ip_udp *out)
{
	struct udphdr *udp;
	__u32 hlen, total;
	__u8 proto;

	if (limit < off)
		return STAT_DROP_MALFORMED_IP;
	out->ip_off = off;
	out->family = family;
	if (family == 4) {
		struct iphdr *ip = pkt_at(data, data_end, off, sizeof(*ip));

		if (!ip || limit - off < sizeof(*ip))
			return STAT_DROP_MALFORMED_IP;
		hlen = ip->ihl * 4;
		total = bpf_ntohs(ip->tot_len);
		if (ip->version != 4 || hlen < sizeof(*ip) || total < hlen || total > limit - off)
			return STAT_DROP_MALFORMED_IP;
		proto = ip->protocol;
		out->proto = proto;
		addr_from_ipv4(out->src, ip->saddr);
		addr_from_ipv4(out->dst, ip->daddr);
		if (ip->frag_off & IPV4_MF_OFFSET_BE)
			return STAT_PASS_FRAGMENT; /* out->dst is set: §1 r3 checks it */
	} else {
		struct ipv6hdr *ip6 = pkt_at(data, data_end, off, sizeof(*ip6));

		if (!ip6 || limit - off < sizeof(*ip6))
			return STAT_DROP_MALFORMED_IP;
		hlen = sizeof(*ip6);
		total = hlen + bpf_ntohs(ip6->payload_len);
		if (ip6->version != 6 || total > limit - off)
			return STAT_DROP_MALFORMED_IP;
		proto = ip6->nexthdr; /* extension headers are not walked (§1 r4) */
		out->proto = proto;
		__builtin_memcpy(out->src, &ip6->saddr, 16);
		__builtin_memcpy(out->dst, &ip6->daddr, 16);
		if (proto == NEXTHDR_FRAGMENT)
			return STAT_PASS_FRAGMENT;
	}
	if (proto != IPPROTO_UDP)
		return STAT_PASS_NOT_UDP;
	out->ip_len = total;
	if (total - hlen < sizeof(*udp)) /* §1 r5, counted within the IP length */
		return STAT_DROP_MALFORMED_UDP;
	off += hlen;
	udp = pkt_at(data, data_end, off, sizeof(*udp));
	if (!udp)
		return STAT_DROP_MALFORMED_UDP;
	out->udp_off = off;
	out->payload_off = off + sizeof(*udp);
	out->sport = udp->source;
	out->dport = udp->dest;
	out->udp_len = bpf_ntohs(udp->len);
	return CONTINUE;
}

/* RFC 8200 section 4 (and IANA's list): next-header values that are extension headers,
 * not upper layers. A VIP is only for UDP; the relay never walks these (§1 r3). */
static __always_inline int ipv6_extension(__u8 proto)
{
	return proto == 0 || proto == 43 || proto == 44 || proto == 50 || proto == 51 || proto == 60 ||
	       proto == 135 || proto == 139 || proto == 140 || proto == 253 || proto == 254;
}

/* §1 r7: the UDP length covers exactly the IP payload. */
static __always_inline int udp_length_ok(const struct ip_udp *l3)
{
	return l3->udp_len >= sizeof(struct udphdr) && l3->udp_off + l3->udp_len == l3->ip_off + l3->ip_len;
}

static __always_inline __u32 payload_len(const struct ip_udp *l3)
{
	return l3->udp_len - sizeof(struct udphdr);
}

/* RFC 7983 section 7: the first byte tells STUN, DTLS and RTP/RTCP apart. */
static __always_inline __u8 classify(__u8 first)
{
	if (first <= 3)
		return PACKET_STUN;
	if (first >= 16 && first <= 19)
		return PACKET_ZRTP;
	if (first >= 20 && first <= 63)
		return PACKET_DTLS;
	if (first >= 64 && first <= 79)
		return PACKET_TURN_CHANNEL;
	if (first >= 128 && first <= 191)
		return PACKET_RTP;
	return PACKET_UNKNOWN;
}

/* The first payload byte's class, PACKET_UNKNOWN for an empty payload. */
static __always_inline __u8 payload_kind(void *data, void *data_end, const struct ip_udp *l3)
{
	__u8 *first;

	if (payload_len(l3) == 0)
		return PACKET_UNKNOWN;
	first = pkt_at(data, data_end, l3->payload_off, 1);
	if (!first)
		return PACKET_UNKNOWN;
	return classify(*first);
}

/* STUN header rule 1 of icegate/stun.py: at least 20 bytes, the magic cookie, and a
 * message length that is a multiple of 4 and covers the payload exactly. */
static __always_inline struct stun_hdr *parse_stun_header(void *data, void *data_end, __u32 off,
							  __u32 len)
{
	struct stun_hdr *stun;
	__u16 msg_len;

	if (len < STUN_HLEN)
		return NULL;
	stun = pkt_at(data, data_end, off, sizeof(*stun));
	if (!stun)
		return NULL;
	msg_len = bpf_ntohs(stun->length);
	if (stun->cookie != STUN_COOKIE_BE || (msg_len & 3) || STUN_HLEN + msg_len != len)
		return NULL;
	return stun;
}

/* A well-formed Binding success response (icegate.stun.is_binding_success). */
static __always_inline int stun_is_binding_success(void *data, void *data_end, __u32 off, __u32 len)
{
	struct stun_hdr *stun = parse_stun_header(data, data_end, off, len);

	return stun && stun->type == STUN_BINDING_SUCCESS_BE;
}

/* Rule 4 (RFC 8445 §7.2.2): USERNAME is "<server ufrag>:<client ufrag>" and a
 * route token is exactly TOKEN_CHARS long, so the colon must be at TOKEN_CHARS;
 * otherwise a colon within the first MAX_UFRAG_LEN + 1 bytes is a wrong length.
 * The bytes are copied to the stack (bpf_xdp_load_bytes, kernel 5.18): the rest of the
 * program then holds no packet pointer whose range depends on which attribute held
 * USERNAME, so the verifier can merge those paths instead of walking each. */
static __always_inline __u32 find_server_ufrag(struct xdp_md *ctx, __u32 value, __u32 value_len,
					       struct stun_info *info)
{
	__u8 *name = info->name;
	__u64 n = value_len < sizeof(info->name) ? value_len : sizeof(info->name);

	/* Two checks with a barrier between: merged into one range test on a copy of n,
	 * they would tell the verifier nothing about the register the helper gets. */
	barrier_var(n);
	if (n == 0)
		return STAT_DROP_USERNAME_NO_COLON;
	barrier_var(n);
	if (n > sizeof(info->name))
		return STAT_DROP_USERNAME_NO_COLON;
	if (bpf_xdp_load_bytes(ctx, value, name, n))
		return STAT_DROP_STUN_MALFORMED;
	if (value_len > TOKEN_CHARS && name[TOKEN_CHARS] == ':') {
		info->binding_request = 1;
		return CONTINUE;
	}
#pragma unroll
	for (int i = 0; i < (int)sizeof(info->name); i++) {
		if (name[i] == ':') /* bytes past n stay 0, never ':' */
			return STAT_DROP_TOKEN_LENGTH;
	}
	return STAT_DROP_USERNAME_NO_COLON;
}

/* A STUN payload (first byte 0-3) at `off`, `len` bytes: rules 1-4 of icegate/stun.py,
 * same order, same bounds. A Binding Request yields its server ufrag; any other
 * well-formed message leaves info->binding_request at 0. */
static __always_inline __u32 parse_stun(struct xdp_md *ctx, __u32 off, __u32 len, struct stun_info *info)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct stun_hdr *stun = parse_stun_header(data, data_end, off, len);
	__u32 pos = STUN_HLEN, value = 0, value_len = 0;
	int found = 0;

	if (!stun)
		return STAT_DROP_STUN_MALFORMED;
	if (stun->type != STUN_BINDING_REQUEST_BE)
		return CONTINUE;

	/* Rule 3: walk at most MAX_STUN_ATTRS attributes looking for USERNAME. */
	for (int i = 0; i < MAX_STUN_ATTRS; i++) {
		struct stun_attr attr;
		__u32 alen;

		if (pos == len)
			break;
		if (pos + sizeof(attr) > len || bpf_xdp_load_bytes(ctx, off + pos, &attr, sizeof(attr)))
			return STAT_DROP_STUN_MALFORMED;
		alen = bpf_ntohs(attr.length);
		if (pos + sizeof(attr) + alen > len)
			return STAT_DROP_STUN_MALFORMED;
		if (attr.type == STUN_ATTR_USERNAME_BE) {
			value = off + pos + sizeof(attr);
			value_len = alen;
			found = 1;
			break;
		}
		pos += sizeof(attr) + ((alen + 3) & ~3U); /* attributes are padded to 4 bytes */
	}
	if (!found)
		return STAT_DROP_USERNAME_MISSING;
	if (value_len > MAX_USERNAME_LEN)
		return STAT_DROP_USERNAME_TOO_LONG;
	return find_server_ufrag(ctx, value, value_len, info);
}

/* Geneve header (RFC 8926 section 3.4) at `off`, `len` bytes of UDP payload: section 3
 * rules 1-2. Sets *inner_off to the inner IP header and *family from the protocol type. */
static __always_inline __u32 parse_geneve(void *data, void *data_end, __u32 off, __u32 len,
					  __u32 *inner_off, __u8 *family)
{
	struct geneve_hdr *gnv;
	__u32 hlen;

	if (len < GENEVE_HLEN)
		return STAT_DROP_GENEVE_MALFORMED;
	gnv = pkt_at(data, data_end, off, sizeof(*gnv));
	if (!gnv)
		return STAT_DROP_GENEVE_MALFORMED;
	hlen = GENEVE_HLEN + (gnv->ver_opt_len & 0x3f) * 4;
	if (hlen > len)
		return STAT_DROP_GENEVE_MALFORMED;
	if ((gnv->ver_opt_len >> 6) != 0 || (gnv->flags & (GENEVE_FLAG_OAM | GENEVE_FLAG_CRITICAL)))
		return STAT_DROP_GENEVE_UNSUPPORTED;
	if (gnv->protocol == GENEVE_PROTO_IPV4_BE)
		*family = 4;
	else if (gnv->protocol == GENEVE_PROTO_IPV6_BE)
		*family = 6;
	else
		return STAT_DROP_GENEVE_UNSUPPORTED;
	*inner_off = off + hlen;
	return CONTINUE;
}

#endif /* ICEGATE_PARSING_H */
