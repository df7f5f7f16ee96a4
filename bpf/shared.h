/* shared.h - included by the XDP program (relay.c) and mirrored in Python by
 * controlplane/layout.py; tests/bpf/test_layout.py checks the mirror against what bcc
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

#define MAX_STUN_ATTRS 16    /* attributes walked looking for USERNAME */
#define MAX_USERNAME_LEN 508 /* RFC 8489 section 14.3: fewer than 509 bytes */
#define MAX_UFRAG_LEN 32     /* ':' is searched for in the first MAX_UFRAG_LEN + 1 bytes */
#define MAX_GENEVE_OPT_WORDS 63
#define TOKEN_CHARS 24
#define TOKEN_BYTES 18
#define TOKEN_VERSION 1

#define STUN_COOKIE 0x2112A442
#define STUN_BINDING_REQUEST 0x0001
#define STUN_BINDING_SUCCESS 0x0101
#define STUN_ATTR_USERNAME 0x0006
#define GENEVE_DEFAULT_PORT 6081

/* ---- RFC 7983 first-byte classes (icegate/rfc7983.py is the Python twin). ---- */
enum packet_kind {
	PACKET_UNKNOWN = 0,
	PACKET_STUN = 1,         /* 0-3 */
	PACKET_ZRTP = 2,         /* 16-19 */
	PACKET_DTLS = 3,         /* 20-63 */
	PACKET_TURN_CHANNEL = 4, /* 64-79 */
	PACKET_RTP = 5,          /* 128-191, RTP and RTCP */
};

/* ---- Counters: one enum of verdicts and reasons, the index of the per-CPU
 * `counters` array. Prometheus exports each as
 * icegate_relay_packets_total{verdict=..., reason=...}; the Python mirror is
 * controlplane.layout.Stat. Append only: renumbering breaks dashboards. ---- */
enum stat {
	/* XDP_PASS, not relay traffic */
	STAT_PASS_NOT_IP = 0,     /* not IPv4/IPv6: ARP, LLDP, ... */
	STAT_PASS_NOT_UDP = 1,    /* IP but not UDP (or an IPv6 extension header chain) */
	STAT_PASS_NOT_RELAY = 2,  /* UDP, but neither a VIP:port nor our tunnel address:port */
	STAT_PASS_FRAGMENT = 3,   /* IP fragment: the kernel reassembles, the slow path sees the datagram */
	/* forwarded in the kernel, client -> transceiver */
	STAT_FWD_FLOW = 4,        /* confirmed flow */
	STAT_FWD_PENDING = 5,     /* pending flow (checks and DTLS before the transceiver confirmed) */
	STAT_FWD_NEW_FLOW = 6,    /* valid first STUN: pending flow created */
	STAT_FWD_REROUTE = 7,     /* known client, new valid token (ICE restart): flow moved */
	/* forwarded in the kernel, transceiver -> client */
	STAT_FWD_RETURN = 8,      /* confirmed flow */
	STAT_FWD_RETURN_PENDING = 9, /* pending flow, not a STUN success */
	STAT_FWD_CONFIRM = 10,    /* STUN success response: pending flow confirmed */
	/* XDP_PASS to the control plane's sockets (slow path), rate limited */
	STAT_SLOW_NO_FLOW = 11,   /* client packet without flow, not a binding request: Redis recovery */
	STAT_SLOW_RETURN_NO_FLOW = 12, /* transceiver packet without flow: Redis recovery */
	STAT_SLOW_NO_NEIGH = 13,  /* next hop has no neighbour entry: a userspace send resolves it */
	/* XDP_DROP */
	STAT_DROP_MALFORMED_IP = 14,    /* truncated header, bad version/IHL/total length */
	STAT_DROP_MALFORMED_UDP = 15,   /* truncated UDP header, UDP length disagrees with IP */
	STAT_DROP_NOT_WEBRTC = 16,      /* empty payload or first byte outside STUN/DTLS/RTP */
	STAT_DROP_STUN_MALFORMED = 17,  /* bad cookie, bad length, attribute past the end */
	STAT_DROP_USERNAME_MISSING = 18,
	STAT_DROP_USERNAME_TOO_LONG = 19,
	STAT_DROP_USERNAME_NO_COLON = 20,
	STAT_DROP_TOKEN_LENGTH = 21,    /* server ufrag is not 24 characters */
	STAT_DROP_TOKEN_ALPHABET = 22,  /* character outside [A-Za-z0-9+/] */
	STAT_DROP_TOKEN_VERSION = 23,
	STAT_DROP_TOKEN_KEY = 24,       /* key id not in route_keys */
	STAT_DROP_TOKEN_MAC = 25,       /* forged or corrupted token */
	STAT_DROP_BACKEND_UNKNOWN = 26, /* token verifies, but no such transceiver */
	STAT_DROP_BACKEND_DRAINING = 27,/* new flow refused: transceiver draining */
	STAT_DROP_BACKEND_DEAD = 28,    /* new flow refused: heartbeat expired */
	STAT_DROP_RATE_SOURCE = 29,     /* new-flow rate limit of this source address */
	STAT_DROP_RATE_GLOBAL = 30,     /* new-flow rate limit of this relay */
	STAT_DROP_RATE_SLOW_PATH = 31,  /* slow-path rate limit */
	STAT_DROP_GENEVE_MALFORMED = 32,/* truncated header, options past the end */
	STAT_DROP_GENEVE_UNSUPPORTED = 33, /* version != 0, OAM, critical options, non-IP payload */
	STAT_DROP_INNER_MALFORMED = 34, /* inner IP/UDP of a return packet malformed or fragmented */
	STAT_DROP_RETURN_NOT_VIP = 35,  /* inner source is not one of our VIP:ports (no open reflector) */
	STAT_DROP_RETURN_WRONG_BACKEND = 36, /* sender is not the transceiver that owns the flow */
	STAT_DROP_FIB = 37,             /* no route to the transceiver or client */
	STAT_DROP_FRAG_NEEDED = 38,     /* encapsulated packet exceeds the egress MTU */
	STAT_DROP_INTERNAL = 39,        /* adjust_head or a map update failed */
	STAT_MAX = 40,
};

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
	__u64 last_seen_ns;
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
};

/* events: ring buffer records for the control plane (flow cache in Redis). */
enum flow_event_kind {
	FLOW_EVENT_CREATED = 1,  /* pending flow confirmed */
	FLOW_EVENT_REROUTED = 2, /* ICE restart moved a flow to another transceiver */
};

struct flow_event {
	struct flow_key key;
	struct backend_key backend;
	__u32 kind;      /* enum flow_event_kind */
	__u32 token_tag;
	__u64 ts_ns;
};

#endif /* ICEGATE_SHARED_H */
