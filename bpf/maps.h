/* maps.h - kernel only, included by relay.c: the relay's maps.
 *
 * Every map is pinned under PIN_DIR (-DPIN_DIR="/sys/fs/bpf/icegate/<relay>", passed by
 * controlplane/loader.py): bcc reuses a pinned map when it exists, so a control-plane
 * restart keeps flows, counters and the event ring. Sizes come from -D flags with the
 * defaults in shared.h; the loader checks reused maps against the configuration.
 * Keys and values are the structs of shared.h (mirrored in controlplane/layout.py).
 */
#ifndef ICEGATE_MAPS_H
#define ICEGATE_MAPS_H

#include "csum.h"
#include "shared.h"

#ifndef PIN_DIR
#error "PIN_DIR must be defined (-DPIN_DIR=\"/sys/fs/bpf/icegate/<relay>\"); the loader does"
#endif

/* rate_sources is only written by the datapath; userspace at most empties it. */
struct rate_source_key {
	__u8 addr[16];
};

/* Per-CPU {packets, bytes}, indexed by enum stat. */
BPF_TABLE_PINNED("percpu_array", __u32, struct counter, counters, STAT_MAX, PIN_DIR "/counters");

BPF_TABLE_PINNED("hash", struct vip_key, struct vip_value, vips, MAX_VIPS, PIN_DIR "/vips");
BPF_TABLE_PINNED("hash", struct backend_key, struct backend_value, backends, MAX_BACKENDS,
		 PIN_DIR "/backends");
BPF_TABLE_PINNED("array", __u32, struct route_key, route_keys, MAX_ROUTE_KEYS, PIN_DIR "/route_keys");
BPF_TABLE_PINNED("array", __u32, struct relay_config, config, 1, PIN_DIR "/config");

/* Confirmed flows, and flows waiting for the transceiver's STUN success response: two
 * LRU maps so a flood of first checks can only evict pending entries (docs/DATAPATH.md §2). */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_value, flows, MAX_FLOWS, PIN_DIR "/flows");
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_value, pending, MAX_PENDING,
		 PIN_DIR "/pending");

/* GCRA buckets (docs/DATAPATH.md section 5): one theoretical arrival time each. */
BPF_TABLE_PINNED("lru_hash", struct rate_source_key, __u64, rate_sources, MAX_RATE_SOURCES,
		 PIN_DIR "/rate_sources");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, rate_global, 1, PIN_DIR "/rate_global");
BPF_TABLE_PINNED("lru_hash", struct rate_tag_key, __u64, rate_tags, MAX_RATE_SOURCES, PIN_DIR "/rate_tags");
/* Slow-path buckets per source (/64 for IPv6): junk from many addresses cannot spend the
 * budget of a client whose flow the relay lost (docs/SECURITY.md). */
BPF_TABLE_PINNED("lru_hash", struct rate_source_key, __u64, rate_slow_sources, MAX_RATE_SOURCES,
		 PIN_DIR "/rate_slow_sources");
/* Every VIP's address, any port: fragments and IPv6 extension headers to these are
 * dropped (§1 r3), so the kernel never reassembles relay traffic behind XDP's back. */
struct vip_addr_key {
	__u8 addr[16];
};
BPF_TABLE_PINNED("hash", struct vip_addr_key, __u32, vip_addrs, MAX_VIPS, PIN_DIR "/vip_addrs");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, rate_slow, 1, PIN_DIR "/rate_slow");

/* Scratch for the IPv6 outer checksum (csum.h); holds nothing between packets, so it
 * is not pinned. */
BPF_TABLE("percpu_array", __u32, struct csum_scratch, csum_scratch, 1);

/* Flow events for the control plane. bcc's BPF_RINGBUF_OUTPUT cannot pin; this is the
 * same declaration with a pinned section, so events written while the control plane
 * restarts wait in the ring for the next one. */
struct events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
__attribute__((section("maps/ringbuf:" PIN_DIR "/events"))) struct events_table_t events = {
	.max_entries = EVENTS_PAGES * PAGE_SIZE,
};

#endif /* ICEGATE_MAPS_H */
