/* shared.h - included by the XDP program (relay.c) and mirrored in Python by
 * controlplane/datapath/layout.py; tests/bpf/test_layout.py checks the mirror against what bcc
 * compiled. Kernel and userspace: fixed-width types only, explicit padding, no pointers.
 *
 * Addresses are 16 bytes everywhere: IPv6 as is, IPv4 as ::ffff:a.b.c.d. Ports are in
 * network byte order (__be16) as they appear on the wire.
 */
#ifndef ICEGATE_SHARED_H
#define ICEGATE_SHARED_H

#include <linux/types.h>

/* ---- Limits. Defaults here; the loader passes -D values from the relay config. ---- */
#ifndef MAX_FLOWS
#define MAX_FLOWS 262144 /* confirmed flows (LRU) */
#endif
#ifndef MAX_PENDING
#define MAX_PENDING 16384 /* flows waiting for the transceiver's STUN success (LRU) */
#endif
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 4096
#endif
#ifndef MAX_VIPS
#define MAX_VIPS 64
#endif
#ifndef MAX_RATE_SOURCES
#define MAX_RATE_SOURCES 65536 /* per-source new-flow buckets (LRU) */
#endif
#ifndef EVENTS_PAGES
#define EVENTS_PAGES 64 /* ring buffer of flow events, in pages */
#endif
#define MAX_ROUTE_KEYS 16 /* key id is 4 bits */
#define MAX_ROLE_IFACES 4 /* interfaces per role in relay_config (public, private) */

#define MAX_STUN_ATTRS 16    /* attributes walked looking for USERNAME */
#define MAX_USERNAME_LEN 508 /* RFC 8489 section 14.3: fewer than 509 bytes */
#define MAX_UFRAG_LEN 32     /* ':' is searched for in the first MAX_UFRAG_LEN + 1 bytes */
#define TOKEN_CHARS 24
#define TOKEN_BYTES 18
#define TOKEN_VERSION 1


/* ---- RFC 7983 first-byte classes (icegate/rfc7983.py is the Python twin). ---- */
enum packet_kind {
	PACKET_UNKNOWN = 0,
	PACKET_STUN = 1,         /* 0-3 */
	PACKET_ZRTP = 2,         /* 16-19 */
	PACKET_DTLS = 3,         /* 20-63 */
	PACKET_TURN_CHANNEL = 4, /* 64-79 */
	PACKET_RTP = 5,          /* 128-191, RTP and RTCP */
};

/* ---- Counters: one table of verdicts and reasons. ----
 * STAT_TABLE holds, for each counter, its name, its verdict and its help text, in value
 * order: the enum stat below (the index of the per-CPU `counters` array), the verdict
 * finish() in relay.c acts on (the masks below and is_slow()), and Python's Stat
 * (controlplane/datapath/layout.py reads this table) all come from it, so a stat is
 * classified once, by its row, wherever it is appended. Prometheus exports each as
 * icegate_relay_packets_total{verdict=..., reason=...}. Append only: a counter's value
 * is its position, and renumbering breaks dashboards. */
enum verdict {
	VERDICT_PASS = 0,    /* not relay traffic: handed to the kernel untouched (XDP_PASS) */
	VERDICT_FORWARD = 1, /* forwarded in the kernel (XDP_TX or a redirect) */
	VERDICT_SLOW = 2,    /* to the control plane's sockets (XDP_PASS), rate limited */
	VERDICT_DROP = 3,    /* XDP_DROP */
};

#define STAT_TABLE(X) \
	X(PASS_NOT_IP,               PASS,    "not IPv4/IPv6: ARP, LLDP, ...") \
	X(PASS_NOT_UDP,              PASS,    "IP but not UDP (or an IPv6 extension header chain)") \
	X(PASS_NOT_RELAY,            PASS,    "UDP, but neither a VIP:port nor our tunnel address:port") \
	X(PASS_FRAGMENT,             PASS,    "IP fragment: the kernel reassembles, the slow path sees the datagram") \
	X(FWD_FLOW,                  FORWARD, "confirmed flow") \
	X(FWD_PENDING,               FORWARD, "pending flow (checks and DTLS before the transceiver confirmed)") \
	X(FWD_NEW_FLOW,              FORWARD, "valid first STUN: pending flow created") \
	X(FWD_REROUTE,               FORWARD, "known client, new valid token (ICE restart): flow moved") \
	X(FWD_RETURN,                FORWARD, "confirmed flow") \
	X(FWD_RETURN_PENDING,        FORWARD, "pending flow, not a STUN success") \
	X(FWD_CONFIRM,               FORWARD, "STUN success response: pending flow confirmed") \
	X(SLOW_NO_FLOW,              SLOW,    "client packet without flow, not a binding request: Redis recovery") \
	X(SLOW_RETURN_NO_FLOW,       SLOW,    "transceiver packet without flow: Redis recovery") \
	X(SLOW_NO_NEIGH,             SLOW,    "next hop has no neighbour entry: a userspace send resolves it") \
	X(DROP_MALFORMED_IP,         DROP,    "truncated header, bad version/IHL/total length") \
	X(DROP_MALFORMED_UDP,        DROP,    "truncated UDP header, UDP length disagrees with IP") \
	X(DROP_NOT_WEBRTC,           DROP,    "empty payload or first byte outside STUN/DTLS/RTP") \
	X(DROP_STUN_MALFORMED,       DROP,    "bad cookie, bad length, attribute past the end") \
	X(DROP_USERNAME_MISSING,     DROP,    "STUN Binding Request without USERNAME") \
	X(DROP_USERNAME_TOO_LONG,    DROP,    "USERNAME longer than MAX_USERNAME_LEN") \
	X(DROP_USERNAME_NO_COLON,    DROP,    "USERNAME without ':' between the ufrags") \
	X(DROP_TOKEN_LENGTH,         DROP,    "server ufrag is not 24 characters") \
	X(DROP_TOKEN_ALPHABET,       DROP,    "character outside [A-Za-z0-9+/]") \
	X(DROP_TOKEN_VERSION,        DROP,    "route token of an unknown version") \
	X(DROP_TOKEN_KEY,            DROP,    "key id not in route_keys") \
	X(DROP_TOKEN_MAC,            DROP,    "forged or corrupted token") \
	X(DROP_BACKEND_UNKNOWN,      DROP,    "token verifies, but no such transceiver") \
	X(DROP_BACKEND_DRAINING,     DROP,    "new flow refused: transceiver draining") \
	X(DROP_BACKEND_DEAD,         DROP,    "new flow refused: heartbeat expired") \
	X(DROP_RATE_SOURCE,          DROP,    "new-flow rate limit of this source address") \
	X(DROP_RATE_GLOBAL,          DROP,    "new-flow rate limit of this relay") \
	X(DROP_RATE_SLOW_PATH,       DROP,    "slow-path rate limit") \
	X(DROP_GENEVE_MALFORMED,     DROP,    "truncated header, options past the end") \
	X(DROP_GENEVE_UNSUPPORTED,   DROP,    "version != 0, OAM, critical options, non-IP payload") \
	X(DROP_INNER_MALFORMED,      DROP,    "inner IP/UDP of a return packet malformed or fragmented") \
	X(DROP_RETURN_NOT_VIP,       DROP,    "inner source is not one of our VIP:ports (no open reflector)") \
	X(DROP_RETURN_WRONG_BACKEND, DROP,    "sender is not the transceiver that owns the flow") \
	X(DROP_FIB,                  DROP,    "no route to the transceiver or client") \
	X(DROP_FRAG_NEEDED,          DROP,    "encapsulated packet exceeds the egress MTU") \
	X(DROP_INTERNAL,             DROP,    "adjust_head or a map update failed") \
	X(DROP_MARTIAN,              DROP,    "client source unspecified, loopback, multicast, reserved, IPv4-mapped in IPv6 or ours") \
	X(DROP_FRAGMENT_TO_VIP,      DROP,    "IP fragment or IPv6 extension header to a VIP or tunnel address") \
	X(DROP_RATE_TOKEN,           DROP,    "new-flow rate limit of this token tag (one session's ufrag)") \
	X(DROP_PENDING_NOT_STUN,     DROP,    "pending flow: only STUN until the transceiver's success response") \
	X(DROP_PENDING_CAP,          DROP,    "pending flow: packet cap reached before confirmation") \
	X(DROP_WRONG_IFACE,          DROP,    "client traffic on a private interface, or Geneve on a public one") \
	X(DROP_EGRESS_ROLE,          DROP,    "next hop on the wrong side: a return into the private network, a tunnel out of the public one") \
	X(FWD_MOVE_PENDING,          FORWARD, "ICE restart towards another transceiver: check forwarded, the flow moves once it answers") \
	X(FWD_MOVE_CONFIRM,          FORWARD, "the new transceiver's STUN success response moved a confirmed flow") \
	X(DROP_RATE_SLOW_SOURCE,     DROP,    "slow-path rate limit of this source address (/64 for IPv6)")

#define STAT_ENUM_MEMBER(name, verdict, help) STAT_##name,
enum stat {
	STAT_TABLE(STAT_ENUM_MEMBER)
	STAT_MAX,
};
#undef STAT_ENUM_MEMBER

/* One bit per stat for each verdict, built from the table at compile time (constant
 * expressions: no map, no .rodata). enum stat stays below 64 stats. */
#define STAT_BIT_FORWARD(name, verdict, help) | ((VERDICT_##verdict == VERDICT_FORWARD) ? (1ULL << STAT_##name) : 0ULL)
#define STAT_BIT_SLOW(name, verdict, help) | ((VERDICT_##verdict == VERDICT_SLOW) ? (1ULL << STAT_##name) : 0ULL)
#define STAT_BIT_DROP(name, verdict, help) | ((VERDICT_##verdict == VERDICT_DROP) ? (1ULL << STAT_##name) : 0ULL)
#define STAT_FORWARD_MASK (0ULL STAT_TABLE(STAT_BIT_FORWARD))
#define STAT_SLOW_MASK (0ULL STAT_TABLE(STAT_BIT_SLOW))
#define STAT_DROP_MASK (0ULL STAT_TABLE(STAT_BIT_DROP))
#define STAT_IS(mask, stat) (((mask) >> (stat)) & 1)
_Static_assert(STAT_MAX <= 64, "the verdict masks hold 64 stats");

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* ---- Maps' keys and values. ---- */

/* vips: the relay's public addresses. Key and value. */
struct vip_key {
	__u8 addr[16];
	__be16 port;
	__u16 pad;
};

struct vip_value {
	__u16 index; /* small id used in flow keys; stable for the VIP's life */
	__u16 pad;
	__u32 flags; /* reserved, 0 */
};

/* backends: transceivers, by the ids a route token carries. */
struct backend_key {
	__u16 cluster;
	__u16 index;
};

enum backend_state {
	BACKEND_ACTIVE = 1,
	BACKEND_DRAINING = 2, /* existing flows kept, new flows refused */
	BACKEND_DEAD = 3,     /* heartbeat expired: existing flows kept, new flows refused */
};

struct backend_value {
	__u8 addr[16];   /* tunnel (Geneve) address */
	__be16 port;     /* tunnel UDP port */
	__u8 family;     /* 4 or 6 */
	__u8 state;      /* enum backend_state */
	__u32 generation; /* bumps on every re-registration */
};

/* flows (confirmed, LRU) and pending (LRU): one key/value pair for both. */
struct flow_key {
	__u8 client_addr[16];
	__be16 client_port;
	__u16 vip_index; /* vip_value.index */
};

struct flow_value {
	struct backend_key backend;
	__u32 token_tag;     /* low 32 bits of the token MAC: a change means ICE restart */
	__u64 created_ns;    /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 last_seen_ns;  /* CLOCK_MONOTONIC, coarse on established packets: a tick behind at most */
	__u64 packets_in;    /* client -> transceiver */
	__u64 bytes_in;      /* inner IP bytes */
	__u64 packets_out;   /* transceiver -> client */
	__u64 bytes_out;
};

/* route_keys: array indexed by key id; the current and the previous key are valid. */
struct route_key {
	__u64 k0; /* SipHash key, bytes 0-7 little endian */
	__u64 k1; /* bytes 8-15 little endian */
	__u32 valid;
	__u32 pad;
};

/* rate_tags: new-flow buckets per token tag (§2 r9): one session's ufrag cannot open
 * flows from many spoofed sources faster than a real ICE agent gathers candidates. */
struct rate_tag_key {
	struct backend_key backend;
	__u32 tag;
};

/* config: array of one. Rate limits are GCRA intervals so the datapath needs no
 * division: a bucket admits one new flow every interval_ns with a burst tolerance of
 * tolerance_ns. interval_ns == 0 disables that limit. The global and slow-path
 * buckets are per CPU; the control plane multiplies their interval by the CPU count. */
struct relay_config {
	__u8 tunnel_addr4[16]; /* outer source for IPv4 transceivers (::ffff:a.b.c.d) */
	__u8 tunnel_addr6[16]; /* outer source for IPv6 transceivers, or all zero */
	__be16 tunnel_port;    /* Geneve port the relay receives returns on */
	__u16 pad0;
	__u32 flags;           /* reserved, 0 */
	__u64 source_interval_ns;
	__u64 source_tolerance_ns;
	__u64 global_interval_ns;
	__u64 global_tolerance_ns;
	__u64 slow_interval_ns;
	__u64 slow_tolerance_ns;
	/* Appended for issue 12 (docs/SECURITY.md). Buckets keyed by token tag (§2 r9) and
	 * by slow-path source (§5); 0 disables each, like the others. */
	__u64 tag_interval_ns;
	__u64 tag_tolerance_ns;
	__u64 slow_source_interval_ns;
	__u64 slow_source_tolerance_ns;
	__u64 pending_timeout_ns;   /* a pending flow older than this is gone (§2 r5); 0: never */
	__u32 pending_max_packets;  /* per direction on a pending flow (§2.1 r0, §3 r9); 0: no cap */
	/* Interface roles (§1 r8): when any is set, client traffic is accepted only on a
	 * public interface and Geneve only on a private one, and next hops must leave by the
	 * matching side. All zero: no roles (socket mode, tests without a topology). */
	__u32 public_ifindex[MAX_ROLE_IFACES];
	__u32 private_ifindex[MAX_ROLE_IFACES];
	__u32 pad1;
};

/* events: ring buffer records for the control plane (flow cache in Redis). */
enum flow_event_kind {
	FLOW_EVENT_CREATED = 1,  /* pending flow confirmed */
	FLOW_EVENT_REROUTED = 2, /* ICE restart moved a flow to another transceiver */
	FLOW_EVENT_EXPIRED = 3,  /* idle past the timeout: the control plane's expiry removed it */
};

struct flow_event {
	struct flow_key key;
	struct backend_key backend;
	__u32 kind;      /* enum flow_event_kind */
	__u32 token_tag;
	__u64 ts_ns;
};

/* ---- Next-hop cache (bpf/nexthop.h; docs/BENCHMARKS.md "next-hop cache"). ----
 * nexthops: what bpf_fib_lookup answered for a destination seen on an ingress
 * interface, so established flows skip the lookup. An entry is used only while its
 * generation equals nexthop_generation[0] (bumped by the control plane on every route,
 * neighbour, address or link change: controlplane/kernel/nexthopwatch.py), it is younger
 * than NEXTHOP_MAX_AGE_NS, and the packet is no longer than one the FIB already
 * accepted (the MTU check of DATAPATH.md section 6). */
#ifndef MAX_NEXTHOPS
#define MAX_NEXTHOPS 65536 /* destinations: transceivers and recently active clients (LRU) */
#endif

struct nexthop_key {
	__u8 addr[16];   /* destination (the transceiver, or the client) */
	__u32 ifindex;   /* ingress: bpf_fib_lookup's answer depends on it */
};

struct nexthop_value {
	__u32 ifindex;    /* egress */
	__u32 generation; /* nexthop_generation[0] when filled */
	__u8 smac[6];
	__u8 dmac[6];
	__u16 max_len;    /* longest IP packet the FIB accepted (MTU) for this entry */
	__u16 pad;
	__u64 updated_ns; /* CLOCK_MONOTONIC (usually coarse: relay.c's packet time) of the lookup */
};

enum nexthop_stat {
	NEXTHOP_STAT_HIT = 0,   /* answered from the cache */
	NEXTHOP_STAT_MISS = 1,  /* no entry: bpf_fib_lookup */
	NEXTHOP_STAT_STALE = 2, /* entry of an older generation, too old, or packet too long */
	NEXTHOP_STAT_MAX = 3,
};

#endif /* ICEGATE_SHARED_H */
