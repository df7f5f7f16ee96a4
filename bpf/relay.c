/* relay.c - the XDP program: docs/DATAPATH.md, rule by rule (rules cited as `§2 r8`: rule 8 of section 2).
 *
 * xdp_relay() classifies every packet (section 1), then hands it to from_client()
 * (section 2: route by flow or by the token in the first STUN check, encapsulate) or to
 * from_transceiver() (section 3: check the sender, decapsulate). Each returns the
 * enum stat of its verdict; the single exit, finish(), charges the slow-path bucket for
 * SLOW verdicts, counts the packet and turns the stat into the XDP action.
 *
 * Compiled by bcc at load time (controlplane/kernel/loader.py) with -I pointing here.
 */
#include "shared.h"

#include "forward.h"
#include "maps.h"
#include "nexthop.h"
#include "parsing.h"
#include "policy.h"
#include "ratelimit.h"
#include "token.h"

struct packet {
	struct ip_udp l3;           /* the IP/UDP headers as received */
	struct bpf_fib_lookup fib;  /* next hop, valid once cached_next_hop() returned CONTINUE */
	struct nexthop_work nh;     /* cached_next_hop()'s key and new entry (nexthop.h) */
	__u32 frame_len;            /* bytes as received: what the counters count */
	__u32 now_precise;          /* `now` is bpf_ktime_get_ns(), not the coarse clock */
	__u64 now;                  /* read at most once, only where a map needs it: see below */
	/* Kept between packets (nexthop.h). Last: the fields every packet writes stay in the
	 * first cache lines (and page) of the scratch; the memo's lines only on a forward. */
	struct nexthop_memo memo[NEXTHOP_MEMO_SLOTS];
};

/* The packet's time. A new flow, a check and a rate bucket need the precise clock: the
 * GCRA intervals of section 5 are as short as 1 ms, and a pending entry's created_ns
 * (§2 r5) is read against it. An established packet only stamps last_seen_ns (idle
 * expiry, seconds) and ages next hops (NEXTHOP_MAX_AGE_NS, 1 s): the coarse clock
 * (CLOCK_MONOTONIC_COARSE, one tick behind at most: 4 ms at HZ=250) is enough there and
 * costs a load instead of a TSC read, which a KVM guest pays dearly (issue 15: 11 % of a
 * flow hit). Both clocks are CLOCK_MONOTONIC, so every age is a signed difference
 * (nexthop_usable(), pending_expired()): a coarse `now` up to one tick behind a precise
 * stamp reads as "just now", never as an age of 2^64 ns. */
static __always_inline __u64 precise_now(struct packet *pkt)
{
	if (!pkt->now_precise) {
		pkt->now = bpf_ktime_get_ns();
		pkt->now_precise = 1;
	}
	return pkt->now;
}

static __always_inline __u64 coarse_now(struct packet *pkt)
{
	if (!pkt->now)
		pkt->now = bpf_ktime_get_coarse_ns();
	return pkt->now;
}

/* Per-packet scratch for struct packet: the 512-byte stack cannot hold it beside the
 * route and the STUN scratch since the issue-12 checks (clang 14, bcc 0.26). Only the
 * next-hop copies (memo) outlive a packet, and a new program refills them from the
 * pinned nexthops map, so it is not pinned. */
BPF_TABLE("percpu_array", __u32, struct packet, packet_scratch, 1);

static __always_inline __u64 outer_len(const struct backend_value *be)
{
	return be->family == 4 ? OUTER4_LEN : OUTER6_LEN;
}

static __always_inline const __u8 *tunnel_source(const struct relay_config *cfg,
						 const struct backend_value *be)
{
	return be->family == 4 ? cfg->tunnel_addr4 : cfg->tunnel_addr6;
}

/* DATAPATH.md section 6 through the next-hop cache (nexthop.h): bpf_fib_lookup only on a
 * miss or a stale entry. `memo`: look in (and fill) the per-CPU copy first; the forward
 * direction's transceivers only. Here rather than in nexthop.h because bcc rewrites map
 * calls in the main file only. */
static __always_inline __u32 cached_next_hop(struct xdp_md *ctx, struct packet *pkt, const __u8 *src,
					     const __u8 *dst, __u32 tot_len, int memo)
{
	struct nexthop_work *w = &pkt->nh;
	struct nexthop_memo *slot = NULL;
	struct nexthop_value *hop;
	__u32 zero = 0, generation = 0, which, stat;
	__u32 *current_generation;
	__u64 now, *count;

	if (!NEXTHOP_CACHE) /* compiled out: the benchmarks' "before" (bench/lab/netlab.py) */
		return next_hop(ctx, addr_family(dst), src, dst, tot_len, &pkt->fib);
	current_generation = nexthop_generation.lookup(&zero);
	now = coarse_now(pkt);
	if (current_generation)
		generation = *current_generation;
	__builtin_memcpy(w->key.addr, dst, 16);
	w->key.ifindex = ctx->ingress_ifindex;
	if (memo) {
		slot = &pkt->memo[nexthop_memo_slot(&w->key)];
		if (nexthop_key_eq(&slot->key, &w->key) && nexthop_usable(&slot->value, generation, tot_len, now)) {
			nexthop_to_fib(&slot->value, &pkt->fib);
			stat = CONTINUE;
			which = NEXTHOP_STAT_HIT;
			goto count;
		}
	}
	hop = nexthops.lookup(&w->key);
	if (hop && nexthop_usable(hop, generation, tot_len, now)) {
		nexthop_to_fib(hop, &pkt->fib);
		stat = CONTINUE;
		which = NEXTHOP_STAT_HIT;
		if (slot) {
			slot->key = w->key;
			slot->value = *hop;
		}
	} else {
		which = hop ? NEXTHOP_STAT_STALE : NEXTHOP_STAT_MISS;
		stat = next_hop(ctx, addr_family(dst), src, dst, tot_len, &pkt->fib);
		if (stat == CONTINUE) {
			nexthop_from_fib(&w->value, &pkt->fib, hop, generation, tot_len, now);
			nexthops.update(&w->key, &w->value); /* best effort: a failed update costs a lookup */
			if (slot) {
				slot->key = w->key;
				slot->value = w->value;
			}
		}
	}
count:
	count = nexthop_stats.lookup(&which);
	if (count)
		*count += 1;
	return stat;
}

/* §1 r6: our Geneve endpoint, config.tunnel_addr4|6 : config.tunnel_port. */
static __always_inline int is_tunnel(const struct ip_udp *l3, const struct relay_config *cfg)
{
	if (cfg->tunnel_port == 0 || l3->dport != cfg->tunnel_port)
		return 0;
	return addr_eq(l3->dst, l3->family == 4 ? cfg->tunnel_addr4 : cfg->tunnel_addr6);
}

/* §1 r3: is `l3->dst` one of our addresses (any VIP, on any port, or the tunnel)? */
static __always_inline int to_our_address(struct ip_udp *l3, const struct relay_config *cfg)
{
	if (vip_addrs.lookup((struct vip_addr_key *)l3->dst))
		return 1;
	return addr_eq(l3->dst, l3->family == 4 ? cfg->tunnel_addr4 : cfg->tunnel_addr6);
}

/* §2 r8: only an active transceiver takes new flows (and ICE restarts). */
static __always_inline __u32 backend_takes_new_flows(const struct backend_value *be)
{
	if (!be)
		return STAT_DROP_BACKEND_UNKNOWN;
	if (be->state == BACKEND_ACTIVE)
		return CONTINUE;
	if (be->state == BACKEND_DRAINING)
		return STAT_DROP_BACKEND_DRAINING;
	if (be->state == BACKEND_DEAD)
		return STAT_DROP_BACKEND_DEAD;
	return STAT_DROP_BACKEND_UNKNOWN; /* a state this program does not know */
}

/* Section 4, the keyed part: route_keys[key id] must be valid and the MAC must match. */
static __always_inline __u32 verify_token(const struct route_token *tok)
{
	__u32 id = tok->key_id;

	return token_verify(tok, route_keys.lookup(&id));
}

/* Section 8: a record for the control plane's Redis flow cache. A full ring loses the
 * event, not the packet; the control plane's periodic sync reads the maps anyway. */
static __always_inline void emit_event(const struct flow_key *key, const struct backend_key *backend,
				       __u32 kind, __u32 tag, __u64 now)
{
	struct flow_event *e = events.ringbuf_reserve(sizeof(*e));

	if (!e)
		return;
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->backend = *backend;
	e->kind = kind;
	e->token_tag = tag;
	e->ts_ns = now;
	events.ringbuf_submit(e, 0);
}

/* What section 2 decided before anything changed: where the packet goes, and what to
 * write once it has gone (section 6: a packet that is not forwarded leaves no trace). */
struct route {
	struct flow_key key;        /* its client_addr doubles as the rate_sources key */
	struct backend_key backend; /* where the packet goes */
	__u32 tag;                  /* the token tag of a new or re-routed flow */
	struct flow_value *flow;    /* the known flow, NULL for a new one */
	struct backend_value *be;
	__u64 *source_tat;          /* new flow: the buckets to charge, and their new values */
	__u64 *global_tat;
	__u64 *tag_tat;
	__u64 source_next;
	__u64 global_next;
	__u64 tag_next;
	__u8 confirmed;
	__u8 rerouted;
	__u8 moving;                /* §2.1 r1: a check for the transceiver a confirmed flow may move to */
};

/* §2.1 r1-r2: a packet of a known (confirmed or pending) flow; `pend` is the pending
 * entry of the same key (a move in progress when the flow is confirmed), or NULL. */
static __always_inline __u32 route_known_flow(const struct stun_info *stun, struct route_token *tok,
					      struct flow_value *pend, struct route *r)
{
	__u32 stat;

	r->backend = r->flow->backend;
	/* §2.1 r1: a different server ufrag from a known client is an ICE restart (RFC 8445
	 * section 9). An unchanged tag is not re-verified: the flow's backend is used. */
	if (stun->binding_request) {
		stat = token_decode(stun->name, tok);
		if (stat != CONTINUE)
			return stat;
		if (r->confirmed && pend && tok->tag == pend->token_tag && tok->tag != r->flow->token_tag) {
			/* A retransmitted check of a move in progress: verified when it began. */
			r->flow = pend;
			r->backend = pend->backend;
			r->confirmed = 0;
			r->moving = 1;
		} else if (tok->tag != r->flow->token_tag) {
			stat = verify_token(tok);
			if (stat != CONTINUE)
				return stat;
			stat = backend_takes_new_flows(backends.lookup(&tok->backend));
			if (stat != CONTINUE)
				return stat;
			r->backend = tok->backend;
			r->tag = tok->tag;
			if (r->confirmed && !same_backend(&tok->backend, &r->flow->backend)) {
				/* A live flow moves only when the new transceiver answers (§3 r9): a
				 * spoofed check cannot take it. The check goes there as a pending entry. */
				r->flow = NULL;
				r->confirmed = 0;
				r->moving = 1;
			} else {
				r->rerouted = 1; /* same transceiver, or a flow not confirmed yet */
			}
		}
	}
	/* §2.1 r2: existing flows survive draining and dead transceivers, not removed ones. */
	r->be = backends.lookup(&r->backend);
	if (!r->be)
		return STAT_DROP_BACKEND_UNKNOWN;
	return CONTINUE;
}

/* Section 2, rules 7-9: a Binding Request with no flow; its token is the route. */
static __always_inline __u32 route_new_flow(const struct stun_info *stun, struct route_token *tok,
					    struct packet *pkt, const struct relay_config *cfg,
					    struct route *r)
{
	__u32 zero = 0, stat;

	/* §2 r7 */
	stat = token_decode(stun->name, tok);
	if (stat == CONTINUE)
		stat = verify_token(tok);
	if (stat != CONTINUE)
		return stat;
	/* §2 r8 */
	r->backend = tok->backend;
	r->tag = tok->tag;
	r->be = backends.lookup(&r->backend);
	stat = backend_takes_new_flows(r->be);
	if (stat != CONTINUE)
		return stat;
	/* §2 r9: only verified tokens reach the buckets, so forged junk cannot spend the
	 * budget of legitimate clients. Source (a /64 for IPv6), token tag, then global. */
	r->source_tat = rate_sources.lookup(source_bucket_key(&pkt->l3));
	if (!gcra_admit(r->source_tat ? *r->source_tat : 0, pkt->now, cfg->source_interval_ns,
			cfg->source_tolerance_ns, &r->source_next))
		return STAT_DROP_RATE_SOURCE;
	{
		struct rate_tag_key tk = {.backend = tok->backend, .tag = tok->tag};

		r->tag_tat = rate_tags.lookup(&tk);
		if (!gcra_admit(r->tag_tat ? *r->tag_tat : 0, pkt->now, cfg->tag_interval_ns,
				cfg->tag_tolerance_ns, &r->tag_next))
			return STAT_DROP_RATE_TOKEN;
	}
	r->global_tat = rate_global.lookup(&zero);
	if (!r->global_tat)
		return STAT_DROP_INTERNAL;
	if (!gcra_admit(*r->global_tat, pkt->now, cfg->global_interval_ns, cfg->global_tolerance_ns,
			&r->global_next))
		return STAT_DROP_RATE_GLOBAL;
	return CONTINUE;
}

/* The pending entry a new flow or a move starts as, having seen this one packet.
 * Non-zero when the map refused it. */
static __always_inline int add_pending(const struct packet *pkt, const struct route *r)
{
	struct flow_value value = {
		.backend = r->backend,
		.token_tag = r->tag,
		.created_ns = pkt->now,
		.last_seen_ns = pkt->now,
		.packets_in = 1,
		.bytes_in = pkt->l3.ip_len,
	};

	return pending.update(&r->key, &value);
}

/* §2.1 r4 and §2 r11, once the packet has its room for the outer headers (nothing can
 * stop it after that): record it. */
static __always_inline __u32 commit_route(struct packet *pkt, const struct relay_config *cfg,
					  struct route *r)
{
	struct flow_value *flow = r->flow;

	if (!flow && r->moving) {
		/* §2.1 r1: a move towards another transceiver starts as a pending entry. */
		if (add_pending(pkt, r))
			return STAT_DROP_INTERNAL;
		return STAT_FWD_MOVE_PENDING;
	}
	if (!flow) {
		if (add_pending(pkt, r))
			return STAT_DROP_INTERNAL;
		if (cfg->source_interval_ns) {
			if (r->source_tat)
				*r->source_tat = r->source_next;
			else
				rate_sources.update(source_bucket_key(&pkt->l3), &r->source_next);
		}
		if (cfg->tag_interval_ns) {
			struct rate_tag_key tk = {.backend = r->backend, .tag = r->tag};

			if (r->tag_tat)
				*r->tag_tat = r->tag_next;
			else
				rate_tags.update(&tk, &r->tag_next);
		}
		if (r->global_tat)
			*r->global_tat = r->global_next;
		return STAT_FWD_NEW_FLOW;
	}
	if (r->rerouted) {
		flow->backend = r->backend;
		flow->token_tag = r->tag;
		/* Pending flows are not in the flow cache yet: their confirmation reports them. */
		if (r->confirmed)
			emit_event(&r->key, &r->backend, FLOW_EVENT_REROUTED, r->tag, pkt->now);
	}
	flow->last_seen_ns = pkt->now;
	__sync_fetch_and_add(&flow->packets_in, 1);
	__sync_fetch_and_add(&flow->bytes_in, pkt->l3.ip_len);
	if (r->rerouted)
		return STAT_FWD_REROUTE;
	if (r->moving)
		return STAT_FWD_MOVE_PENDING;
	return r->confirmed ? STAT_FWD_FLOW : STAT_FWD_PENDING;
}

/* Section 2, rules 1-9: classify, then route by flow or by token. The STUN and token
 * scratch lives only here, so the compiler can reuse its stack for what follows. */
static __always_inline __u32 decide_route(struct xdp_md *ctx, struct packet *pkt,
					       const struct vip_value *vip, const struct relay_config *cfg,
					       struct route *r)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 kind = payload_kind(data, data_end, &pkt->l3);
	struct stun_info stun = {};
	struct route_token tok = {};
	struct flow_value *pend;
	__u32 stat;

	/* §2 r1: RFC 7983 first byte; ZRTP and TURN channels never reach icegate. */
	if (kind != PACKET_STUN && kind != PACKET_DTLS && kind != PACKET_RTP)
		return STAT_DROP_NOT_WEBRTC;
	/* §2 r2-r3: a malformed STUN message is never forwarded, flow or not. */
	if (kind == PACKET_STUN) {
		stat = parse_stun(ctx, pkt->l3.payload_off, payload_len(&pkt->l3), &stun);
		if (stat != CONTINUE)
			return stat;
	}
	__builtin_memcpy(r->key.client_addr, pkt->l3.src, 16);
	r->key.client_port = pkt->l3.sport;
	r->key.vip_index = vip->index;

	/* §2 r4-r5; a pending entry past config.pending_timeout_ns is gone. A confirmed
	 * flow's DTLS and RTP need no pending entry (only a check can be part of a move). */
	r->flow = flows.lookup(&r->key);
	r->confirmed = r->flow != NULL;
	pend = NULL;
	if (!r->flow || stun.binding_request) {
		precise_now(pkt); /* the timeout and the rate buckets need it */
		pend = pending.lookup(&r->key);
		if (pend && pending_expired(pend, pkt->now, cfg))
			pend = NULL;
	}
	if (!r->flow)
		r->flow = pend;
	if (r->flow) {
		stat = route_known_flow(&stun, &tok, pend, r);
		if (stat != CONTINUE || r->confirmed)
			return stat;
		/* §2.1 r0: a pending flow carries only STUN, and only so many packets, until the
		 * transceiver's success response proves the client answers at that address. */
		if (kind != PACKET_STUN)
			return STAT_DROP_PENDING_NOT_STUN;
		if (r->flow && cfg->pending_max_packets && r->flow->packets_in >= cfg->pending_max_packets)
			return STAT_DROP_PENDING_CAP;
		return CONTINUE;
	}
	if (!stun.binding_request)
		return STAT_SLOW_NO_FLOW; /* §2 r6: the slow path may know it from the Redis flow cache */
	return route_new_flow(&stun, &tok, pkt, cfg, r);
}

/* Section 2: client -> transceiver, the packet is for one of our VIPs. */
static __always_inline __u32 from_client(struct xdp_md *ctx, struct packet *pkt, const struct vip_value *vip,
					 const struct relay_config *cfg)
{
	struct route r = {};
	__u64 inner_sum = 0;
	__u32 zero = 0, stat;

	/* §2 r0 */
	if (is_martian(&pkt->l3, cfg))
		return STAT_DROP_MARTIAN;
	stat = decide_route(ctx, pkt, vip, cfg, &r);
	if (stat != CONTINUE)
		return stat;
	coarse_now(pkt); /* precise already on a check or a new flow */
	if (!r.be)
		return STAT_DROP_INTERNAL; /* cannot happen: both routes checked it */
	/* §2 r10 and §2.1 r3 */
	stat = cached_next_hop(ctx, pkt, tunnel_source(cfg, r.be), r.be->addr, outer_len(r.be) + pkt->l3.ip_len, 1);
	if (stat == CONTINUE) /* §2.2: tunnels leave by a private interface */
		stat = check_role(cfg, pkt->fib.ifindex, 0, STAT_DROP_EGRESS_ROLE);
	if (stat != CONTINUE)
		return stat;
	/* §2 r11 and §2.1 r4 */
	if (r.be->family == 6) {
		struct csum_scratch *scratch = csum_scratch.lookup(&zero);

		if (!scratch || packet_sum(ctx, pkt->l3.ip_off, pkt->l3.ip_len, scratch->bytes, &inner_sum))
			return STAT_DROP_INTERNAL;
	}
	stat = make_room(ctx, &pkt->l3, pkt->frame_len, outer_len(r.be));
	if (stat != CONTINUE)
		return stat;
	/* Recorded before the outer headers are written, once nothing can stop the packet:
	 * the flow's counters are locked adds, full barriers on x86 that would wait for the
	 * stores into the cold headroom (issue 15: 11 % of a flow hit in place). */
	stat = commit_route(pkt, cfg, &r);
	if (!STAT_IS(STAT_FORWARD_MASK, stat))
		return stat;
	/* The new-flow buckets masked the source to its /64 (policy.h); the entropy port
	 * hashes the full address. */
	__builtin_memcpy(pkt->l3.src, r.key.client_addr, 16);
	if (encapsulate(ctx, &pkt->l3, &r.backend, r.be, cfg, &pkt->fib, inner_sum) != CONTINUE)
		return STAT_DROP_INTERNAL; /* cannot happen: make_room() made the room */
	return stat;
}

/* §3 r7: the sender is the flow's transceiver, address and Geneve source port. */
static __always_inline int sent_by(struct flow_value *flow, const struct packet *pkt)
{
	struct backend_value *be = backends.lookup(&flow->backend);

	return be && addr_eq(be->addr, pkt->l3.src) && be->port == pkt->l3.sport;
}

/* Section 3: transceiver -> client, Geneve to our tunnel endpoint. */
static __always_inline __u32 from_transceiver(struct xdp_md *ctx, struct packet *pkt,
					      const struct relay_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 end = pkt->l3.payload_off + payload_len(&pkt->l3);
	struct ip_udp inner = {};
	struct vip_key vk = {};
	struct flow_key key = {};
	struct flow_value *flow, *live = NULL;
	struct vip_value *vip;
	__u32 inner_off = 0, stat;
	__u8 family = 0, kind;
	int confirmed = 1, confirm, owner = 0;

	/* §3 r1-r2 */
	stat = parse_geneve(data, data_end, pkt->l3.payload_off, payload_len(&pkt->l3), &inner_off, &family);
	if (stat != CONTINUE)
		return stat;
	/* §3 r3: the inner packet must itself pass §1 r2-r7, within the Geneve payload. */
	stat = parse_ip_udp(data, data_end, inner_off, end, family, &inner);
	if (stat != CONTINUE || !udp_length_ok(&inner))
		return STAT_DROP_INNER_MALFORMED;
	/* §3 r4: only our VIPs may be the source, so the relay is no open reflector. */
	__builtin_memcpy(vk.addr, inner.src, 16);
	vk.port = inner.sport;
	vip = vips.lookup(&vk);
	if (!vip)
		return STAT_DROP_RETURN_NOT_VIP;
	/* §3 r5 */
	kind = payload_kind(data, data_end, &inner);
	if (kind != PACKET_STUN && kind != PACKET_DTLS && kind != PACKET_RTP)
		return STAT_DROP_NOT_WEBRTC;
	/* §3 r6: the confirmed flow, else (or when its owner did not send this) the pending
	 * entry: a new flow, or the transceiver a confirmed flow may move to (§2.1 r1). */
	__builtin_memcpy(key.client_addr, inner.dst, 16);
	key.client_port = inner.dport;
	key.vip_index = vip->index;
	coarse_now(pkt); /* a pending entry may expire one tick late: timeouts are seconds */
	flow = flows.lookup(&key);
	if (flow)
		owner = sent_by(flow, pkt);
	if (!owner) {
		struct flow_value *pend = pending.lookup(&key);

		if (pend && !pending_expired(pend, pkt->now, cfg) && (!flow || sent_by(pend, pkt))) {
			live = flow;
			flow = pend;
			confirmed = 0;
			owner = sent_by(pend, pkt);
		}
	}
	if (!flow)
		return STAT_SLOW_RETURN_NO_FLOW;
	/* §3 r7: only the transceiver that owns the flow may answer for it. */
	if (!owner)
		return STAT_DROP_RETURN_WRONG_BACKEND;
	/* §3 r8: a pending flow carries only STUN, and only so many packets (§2.1 r0). */
	if (!confirmed && kind != PACKET_STUN)
		return STAT_DROP_PENDING_NOT_STUN;
	if (!confirmed && cfg->pending_max_packets && flow->packets_out >= cfg->pending_max_packets)
		return STAT_DROP_PENDING_CAP;
	/* §3 r8 */
	stat = cached_next_hop(ctx, pkt, inner.src, inner.dst, inner.ip_len, 0);
	if (stat == CONTINUE) /* returns leave by a public interface, never into the private network */
		stat = check_role(cfg, pkt->fib.ifindex, 1, STAT_DROP_EGRESS_ROLE);
	if (stat != CONTINUE)
		return stat;
	/* §3 r9: the transceiver's Binding success response confirms a pending flow. */
	confirm = !confirmed && kind == PACKET_STUN &&
		  stun_is_binding_success(data, data_end, inner.payload_off, payload_len(&inner));
	stat = decapsulate(ctx, &inner, pkt->frame_len, &pkt->fib);
	if (stat != CONTINUE)
		return stat;
	if (confirm && live) {
		/* §3 r9: the new transceiver answered the moved check: the live flow follows. */
		live->backend = flow->backend;
		live->token_tag = flow->token_tag;
		live->last_seen_ns = pkt->now;
		__sync_fetch_and_add(&live->packets_out, 1);
		__sync_fetch_and_add(&live->bytes_out, inner.ip_len);
		emit_event(&key, &live->backend, FLOW_EVENT_REROUTED, live->token_tag, pkt->now);
		pending.delete(&key);
		return STAT_FWD_MOVE_CONFIRM;
	}
	if (confirm) {
		/* Updated in place, then copied into flows (a map value may be the source of an
		 * update), then removed from pending. */
		flow->last_seen_ns = pkt->now;
		flow->packets_out += 1;
		flow->bytes_out += inner.ip_len;
		if (flows.update(&key, flow))
			return STAT_DROP_INTERNAL;
		emit_event(&key, &flow->backend, FLOW_EVENT_CREATED, flow->token_tag, pkt->now);
		pending.delete(&key);
		return STAT_FWD_CONFIRM;
	}
	/* §3 r10 */
	flow->last_seen_ns = pkt->now;
	__sync_fetch_and_add(&flow->packets_out, 1);
	__sync_fetch_and_add(&flow->bytes_out, inner.ip_len);
	return confirmed ? STAT_FWD_RETURN : STAT_FWD_RETURN_PENDING;
}

/* Whether a stat's row in STAT_TABLE (shared.h) says SLOW, as a chain of comparisons
 * that clang folds to the SLOW rows: a variable shift of STAT_SLOW_MASK here costs the
 * verifier's 512-byte stack limit in xdp_relay() (clang 14, bcc 0.26). */
#define STAT_SLOW_TERM(name, verdict, help) || (VERDICT_##verdict == VERDICT_SLOW && stat == STAT_##name)
static __always_inline int is_slow(__u32 stat)
{
	return 0 STAT_TABLE(STAT_SLOW_TERM);
}
#undef STAT_SLOW_TERM

/* The one exit: slow-path budget, counter, action. */
static __always_inline int finish(struct xdp_md *ctx, __u32 stat, struct packet *pkt,
				  const struct relay_config *cfg)
{
	__u32 zero = 0;
	struct counter *counter;

	/* Section 5: every SLOW verdict is charged to its source's bucket (a /64 for IPv6;
	 * not a return without a flow: after a reboot one transceiver sends those for all
	 * its sessions), then to the slow-path bucket. */
	if (is_slow(stat) && cfg) {
		__u64 *tat = rate_slow.lookup(&zero), next, source_next = 0, *source_tat = NULL;
		__u64 now = precise_now(pkt); /* GCRA needs it; slow verdicts are rate limited */
		struct rate_source_key *source = source_bucket_key(&pkt->l3);

		if (cfg->slow_source_interval_ns && stat != STAT_SLOW_RETURN_NO_FLOW) {
			source_tat = rate_slow_sources.lookup(source);
			if (!gcra_admit(source_tat ? *source_tat : 0, now, cfg->slow_source_interval_ns,
					cfg->slow_source_tolerance_ns, &source_next))
				stat = STAT_DROP_RATE_SLOW_SOURCE; /* one source cannot spend everyone's budget */
		}
		if (stat != STAT_DROP_RATE_SLOW_SOURCE && tat) {
			if (gcra_admit(*tat, now, cfg->slow_interval_ns, cfg->slow_tolerance_ns, &next)) {
				*tat = next;
				if (source_tat)
					*source_tat = source_next;
				else if (cfg->slow_source_interval_ns && stat != STAT_SLOW_RETURN_NO_FLOW)
					rate_slow_sources.update(source, &source_next);
			} else {
				stat = STAT_DROP_RATE_SLOW_PATH; /* userspace is saturated: shed load here */
			}
		}
	}
	counter = counters.lookup(&stat);
	if (counter) {
		counter->packets += 1;
		counter->bytes += pkt->frame_len;
	}
	/* The verdict of each stat is its row in STAT_TABLE (shared.h). */
	if (STAT_IS(STAT_FORWARD_MASK, stat)) {
		if (pkt->fib.ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(pkt->fib.ifindex, 0);
	}
	if (STAT_IS(STAT_DROP_MASK, stat))
		return XDP_DROP;
	return XDP_PASS; /* not ours, or the slow path's */
}

int xdp_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet *pkt;
	struct vip_key vk = {};
	struct vip_value *vip;
	struct relay_config *cfg;
	__u32 zero = 0, stat;
	__u16 l3_off = 0;
	__be16 proto;
	int tunnel;

	pkt = packet_scratch.lookup(&zero);
	if (!pkt)
		return XDP_PASS; /* cannot happen (array of one): fail open, uncounted */
	/* Not one memset of the whole struct: clang turns that into a call to memset. */
	__builtin_memset(&pkt->l3, 0, sizeof(pkt->l3));
	pkt->fib.ifindex = 0;
	pkt->now = 0;
	pkt->now_precise = 0;
	pkt->frame_len = data_end - data;
	cfg = config.lookup(&zero);
	if (!cfg) {
		stat = STAT_PASS_NOT_RELAY; /* cannot happen (array of one): fail open */
		goto out;
	}
	/* §1 r1 */
	proto = parse_ethhdr(data, data_end, &l3_off);
	if (proto != ETH_P_IP_BE && proto != ETH_P_IPV6_BE) {
		stat = STAT_PASS_NOT_IP;
		goto out;
	}
	/* §1 r2-r5 */
	stat = parse_ip_udp(data, data_end, l3_off, pkt->frame_len, proto == ETH_P_IP_BE ? 4 : 6, &pkt->l3);
	/* §1 r3: fragments and IPv6 extension headers to our addresses are dropped: the
	 * kernel would reassemble or strip them and hand the slow path relay traffic that
	 * no XDP rule or bucket saw. */
	if ((stat == STAT_PASS_FRAGMENT ||
	     (stat == STAT_PASS_NOT_UDP && pkt->l3.family == 6 && ipv6_extension(pkt->l3.proto))) &&
	    to_our_address(&pkt->l3, cfg))
		stat = STAT_DROP_FRAGMENT_TO_VIP;
	if (stat != CONTINUE)
		goto out;
	/* §1 r6: the tunnel endpoint first, from the config: a return pays no `vips` lookup
	 * (no VIP is the tunnel endpoint: controlplane/config.py refuses one). */
	tunnel = is_tunnel(&pkt->l3, cfg);
	vip = NULL;
	if (!tunnel) {
		__builtin_memcpy(vk.addr, pkt->l3.dst, 16);
		vk.port = pkt->l3.dport;
		vip = vips.lookup(&vk);
	}
	if (!vip && !tunnel) {
		stat = STAT_PASS_NOT_RELAY;
		goto out;
	}
	/* §1 r7 */
	if (!udp_length_ok(&pkt->l3)) {
		stat = STAT_DROP_MALFORMED_UDP;
		goto out;
	}
	/* §1 r8: clients arrive on a public interface, transceivers on a private one. */
	stat = check_role(cfg, ctx->ingress_ifindex, vip != NULL, STAT_DROP_WRONG_IFACE);
	if (stat != CONTINUE)
		goto out;
	if (vip)
		stat = from_client(ctx, pkt, vip, cfg);
	else
		stat = from_transceiver(ctx, pkt, cfg);
out:
	return finish(ctx, stat, pkt, cfg);
}
