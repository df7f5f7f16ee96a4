/* nexthop.h - kernel only, included by relay.c after maps.h: the next-hop cache.
 *
 * bpf_fib_lookup gives the same answer for every packet to one destination, and it was
 * about 450 of the 572 ns a flow-hit forward cost (issue 15). cached_next_hop() answers
 * from the `nexthops` map instead and calls next_hop() (forward.h, DATAPATH.md section 6)
 * only on a miss or a stale entry, then stores what it said. An entry is stale when
 *   - its generation differs from nexthop_generation[0], which the control plane bumps
 *     on every route, neighbour, address or link change it hears from netlink
 *     (controlplane/kernel/nexthopwatch.py): the refresh bound is the netlink delivery;
 *   - it is older than NEXTHOP_MAX_AGE_NS: the bound when no control plane is running;
 *   - the packet is longer than any the FIB accepted for it: section 6's MTU check
 *     (FRAG_NEEDED) is never skipped for a packet the cache has not seen fit.
 * The map operations are in relay.c (bcc rewrites `map.lookup()` in the main file only);
 * the decisions are here. Only successful lookups are stored; NO_NEIGH, FRAG_NEEDED and no-route answers are
 * recomputed every time, exactly as before. The key is (destination, ingress ifindex):
 * the cache assumes destination-based routing (no `ip rule` choosing by source).
 */
#ifndef ICEGATE_NEXTHOP_H
#define ICEGATE_NEXTHOP_H

#include "forward.h"
#include "shared.h"

#ifndef NEXTHOP_CACHE
#define NEXTHOP_CACHE 1 /* 0: every packet asks bpf_fib_lookup, as before the cache (benchmarks) */
#endif
#ifndef NEXTHOP_MAX_AGE_NS
#define NEXTHOP_MAX_AGE_NS 1000000000ULL /* 1 s */
#endif

BPF_TABLE_PINNED("lru_hash", struct nexthop_key, struct nexthop_value, nexthops, MAX_NEXTHOPS,
		 PIN_DIR "/nexthops");
BPF_TABLE_PINNED("array", __u32, __u32, nexthop_generation, 1, PIN_DIR "/nexthop_generation");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, nexthop_stats, NEXTHOP_STAT_MAX, PIN_DIR "/nexthop_stats");

/* The lookup's key and the new value: part of relay.c's per-CPU struct packet (its
 * packet_scratch), not the stack, which xdp_relay() has used up (clang 14, bcc 0.26). */
struct nexthop_work {
	struct nexthop_key key;
	struct nexthop_value value;
};

/* The forward direction's next hops (the transceivers: a few per relay) also live in a
 * small per-CPU table in relay.c's struct packet, a copy of their `nexthops` entries
 * that skips the hash lookup (jhash of the 20-byte key and the bucket walk were a
 * quarter of a flow hit in place, issue 15). A copy is used only under the same rules
 * as the entry it copies (nexthop_usable(): generation, age, length), so it is never
 * truer or staler than the map; a slot two transceivers share falls back to the map.
 * Returns (one destination per client) do not use it: it would only thrash. */
#define NEXTHOP_MEMO_SLOTS 32

struct nexthop_memo {
	struct nexthop_key key;
	struct nexthop_value value;
};

static __always_inline __u32 nexthop_memo_slot(const struct nexthop_key *key)
{
	const __u32 *w = (const __u32 *)key->addr;

	return (w[3] ^ (w[3] >> 16) ^ key->ifindex) & (NEXTHOP_MEMO_SLOTS - 1);
}

static __always_inline int nexthop_key_eq(const struct nexthop_key *a, const struct nexthop_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* An address of shared.h's form is IPv4 when it is ::ffff:a.b.c.d. */
static __always_inline __u8 addr_family(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return (w[0] | w[1]) == 0 && w[2] == bpf_htonl(0xffff) ? 4 : 6;
}

/* Whether a cached answer still holds for a packet of `tot_len` IP bytes (see the top). */
static __always_inline int nexthop_usable(const struct nexthop_value *hop, __u32 generation, __u32 tot_len,
					  __u64 now)
{
	return hop->generation == generation && tot_len <= hop->max_len &&
	       (__s64)(now - hop->updated_ns) < (__s64)NEXTHOP_MAX_AGE_NS;
}

/* The fields of a bpf_fib_lookup answer that write_eth() and finish() read. */
static __always_inline void nexthop_to_fib(const struct nexthop_value *hop, struct bpf_fib_lookup *fib)
{
	fib->ifindex = hop->ifindex;
	__builtin_memcpy(fib->smac, hop->smac, ETH_ALEN);
	__builtin_memcpy(fib->dmac, hop->dmac, ETH_ALEN);
}

/* The entry to store after a successful lookup. A longer packet that fits raises the
 * bound of a current entry (`old`, may be NULL); a stale entry starts again from this packet. */
static __always_inline void nexthop_from_fib(struct nexthop_value *v, const struct bpf_fib_lookup *fib,
					     const struct nexthop_value *old, __u32 generation, __u32 tot_len,
					     __u64 now)
{
	v->ifindex = fib->ifindex;
	v->generation = generation;
	__builtin_memcpy(v->smac, fib->smac, ETH_ALEN);
	__builtin_memcpy(v->dmac, fib->dmac, ETH_ALEN);
	v->max_len = tot_len;
	v->pad = 0;
	if (old && old->generation == generation && old->ifindex == fib->ifindex && old->max_len > tot_len)
		v->max_len = old->max_len;
	v->updated_ns = now;
}

#endif /* ICEGATE_NEXTHOP_H */
