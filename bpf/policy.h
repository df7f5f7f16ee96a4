/* policy.h - kernel only, included by relay.c: the checks around the parser that
 * docs/SECURITY.md describes (issue 12): martian sources, interface roles, the keys of
 * the per-source buckets, pending-flow limits. Rules are cited as in relay.c. Map calls
 * stay in relay.c: bcc rewrites `map.lookup()` in the main file only.
 */
#ifndef ICEGATE_POLICY_H
#define ICEGATE_POLICY_H

#include "maps.h"
#include "parsing.h"
#include "shared.h"

/* §2 r0: a source no client on the internet can have (RFC 6890 special-purpose
 * addresses): this network (0/8), loopback (127/8), multicast and reserved (224/3,
 * which holds the broadcast address); IPv6 ::/96 (unspecified, loopback,
 * IPv4-compatible), ::ffff:0:0/96 inside an IPv6 header (it would alias an IPv4
 * client's flow key), ff00::/8; and our own VIP or tunnel address (a land attack). */
static __always_inline int is_martian(const struct ip_udp *l3, const struct relay_config *cfg)
{
	const __u8 *a = l3->src;
	__u64 hi;
	__u16 mid;

	if (l3->family == 4) {
		if (a[12] == 0 || a[12] == 127 || a[12] >= 224)
			return 1;
	} else {
		__builtin_memcpy(&hi, a, 8);
		__builtin_memcpy(&mid, a + 8, 2);
		if (a[0] == 0xff)
			return 1;
		if (hi == 0 && mid == 0 && ((a[10] == 0 && a[11] == 0) || (a[10] == 0xff && a[11] == 0xff)))
			return 1;
	}
	return addr_eq(a, l3->dst) || addr_eq(a, cfg->tunnel_addr4) || addr_eq(a, cfg->tunnel_addr6);
}

/* §1 r8: interface roles are enforced once any is configured. */
static __always_inline int roles_set(const struct relay_config *cfg)
{
	return cfg->public_ifindex[0] != 0 || cfg->private_ifindex[0] != 0;
}

static __always_inline int in_role(const __u32 *list, __u32 ifindex)
{
	return ifindex != 0 && (list[0] == ifindex || list[1] == ifindex || list[2] == ifindex ||
				list[3] == ifindex);
}

/* §1 r8 (ingress) and §2.2/§3 r8 (egress): `public` selects the list the interface
 * must be in. CONTINUE when roles are not configured. */
static __always_inline __u32 check_role(const struct relay_config *cfg, __u32 ifindex, int public,
					__u32 refusal)
{
	if (!roles_set(cfg))
		return CONTINUE;
	if (in_role(public ? cfg->public_ifindex : cfg->private_ifindex, ifindex))
		return CONTINUE;
	return refusal;
}

/* §5: the per-source buckets key IPv6 by its /64 (one subscriber's prefix: RFC 6177
 * assigns at least a /64 per site, so an attacker holds 2^64 addresses of it). Masks
 * `l3->src` in place, once the flow key holds the full address: the stack is full. */
static __always_inline struct rate_source_key *source_bucket_key(struct ip_udp *l3)
{
	if (l3->family == 6)
		__builtin_memset(l3->src + 8, 0, 8);
	return (struct rate_source_key *)l3->src;
}

/* §2 r5: a pending flow older than config.pending_timeout_ns is treated as absent. */
static __always_inline int pending_expired(const struct flow_value *flow, __u64 now,
					   const struct relay_config *cfg)
{
	return cfg->pending_timeout_ns != 0 && (__s64)(now - flow->created_ns) > (__s64)cfg->pending_timeout_ns;
}

static __always_inline int same_backend(const struct backend_key *a, const struct backend_key *b)
{
	return a->cluster == b->cluster && a->index == b->index;
}

#endif /* ICEGATE_POLICY_H */
