"""The Redis flow cache: confirmed flows, written so any relay behind the VIP can recover them.

Flow events (``CREATED`` when the transceiver confirms a flow, ``REROUTED`` on an ICE
restart; from the kernel ring buffer or the userspace twin) become
:class:`~icegate.schema.CachedFlow` records under ``Keys.flow(vip, port, client, port)``
with TTL ``flow_cache.ttl_s``; ``EXPIRED`` (the control plane's expiry sweep,
``controlplane/node/expiry.py``) shortens the record's TTL to :meth:`FlowCache.removal_ttl_s`
(two refresh intervals) instead of deleting it: a call that moved to another relay node
(ECMP change) went idle *here*, but the node now carrying it refreshes the TTL within
``refresh_s`` and keeps the record; a call that really ended is gone from Redis soon after.
:meth:`FlowCache.record` never blocks: it queues the write (one entry per flow, the newest
event wins, at most ``queue_max`` flows) and a writer task sends the queue as pipelined
batches.

Every ``refresh_s`` the TTLs of flows that carried packets in the last ``idle_s``
(``last_seen_ns``, CLOCK_MONOTONIC like ``bpf_ktime_get_ns``) are refreshed in one
pipeline, so a live flow never expires from the cache; a key that vanished (Redis
restarted empty) is rewritten from the map.

While Redis is down, writes stay queued. When it returns, the queue is flushed; if it
overflowed meanwhile, every live flow is re-published from the maps instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from controlplane.cluster.redisio import FlowAddr, RedisStore
from controlplane.config import FlowCacheConfig
from controlplane.datapath.layout import FlowEventKind
from controlplane.datapath.store import Flow, FlowEvent, FlowKeyT, MapStore, Vip
from icegate.errors import StoreError
from icegate.inet import from_addr16
from icegate.schema import CachedFlow

log = logging.getLogger(__name__)

QUEUE_MAX = 65536


class VipTable:
    """vip index -> VIP, re-read from the maps when an unknown index shows up."""

    def __init__(self, maps: MapStore) -> None:
        self._maps = maps
        self._by_index: dict[int, Vip] = {}

    def get(self, index: int) -> Vip | None:
        vip = self._by_index.get(index)
        if vip is None:
            self._by_index = {v.index: v for v in self._maps.vips()}
            vip = self._by_index.get(index)
        return vip

    def addr(self, key: FlowKeyT) -> FlowAddr | None:
        vip = self.get(key[2])
        if vip is None:
            return None
        return (vip.address, vip.port, from_addr16(key[0]), key[1])


class FlowCache:
    def __init__(
        self,
        redis: RedisStore,
        maps: MapStore,
        cfg: FlowCacheConfig,
        *,
        queue_max: int = QUEUE_MAX,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.maps = maps
        self.cfg = cfg
        self.queue_max = queue_max
        self._clock_ns = clock_ns
        self._wall = wall_clock
        self.vips = VipTable(maps)
        self._queue: dict[FlowKeyT, FlowEvent] = {}
        self._overflowed = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.events_total = 0
        self.writes_total = 0  # flows written (events, re-publish, rewritten on refresh)
        self.refreshes_total = 0  # TTLs refreshed
        self.dropped_total = 0  # events dropped from a full queue (recovered by a re-publish)
        self.republishes_total = 0
        self.removals_total = 0  # records shortened for expired flows

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ---- producers ----
    def record(self, update: FlowEvent) -> None:
        """Queue a flow event; call from the event loop's thread. Never blocks, never raises."""
        self.events_total += 1
        if update.key not in self._queue and len(self._queue) >= self.queue_max:
            self.dropped_total += 1
            self._overflowed = True
            return
        self._queue[update.key] = update
        self._wake.set()

    def record_threadsafe(self, update: FlowEvent) -> None:
        """:meth:`record` from another thread (a ring-buffer poller)."""
        if self._loop is None:
            raise RuntimeError("FlowCache.run() has not started")
        self._loop.call_soon_threadsafe(self.record, update)

    @property
    def removal_ttl_s(self) -> int:
        """TTL left to the record of a flow that expired here: long enough that any node
        still carrying the flow refreshes it first (``touch_flows`` raises it again)."""
        return int(2 * self.cfg.refresh_s) + 1

    # ---- conversions ----
    def _cached(self, cluster: int, index: int, token_tag: int, created_ns: int) -> CachedFlow:
        age_s = max(0, self._clock_ns() - created_ns) / 1e9
        return CachedFlow(cluster, index, token_tag, int((self._wall() - age_s) * 1000))

    # ---- Redis side ----
    async def flush(self) -> int:
        """Write every queued event; on failure they stay queued (unless newer ones replaced them)."""
        if not self._queue:
            return 0
        batch, self._queue = self._queue, {}
        items: list[tuple[FlowAddr, CachedFlow]] = []
        gone: list[str] = []  # EXPIRED (controlplane/node/expiry.py): the record goes soon
        for update in batch.values():
            addr = self.vips.addr(update.key)
            if addr is None:
                log.warning("flow event for unknown vip_index=%d dropped", update.key[2])
                continue
            if update.kind is FlowEventKind.EXPIRED:
                gone.append(self.redis.flow_key(addr))
                continue
            items.append((addr, self._cached(update.cluster, update.index, update.token_tag, update.ts_ns)))
        try:
            await self.redis.put_flows(items, self.cfg.ttl_s)
            self.removals_total += await self.redis.shorten_flows(gone, self.removal_ttl_s)
        except StoreError:
            for key, update in batch.items():
                self._queue.setdefault(key, update)
            raise
        self.writes_total += len(items)
        return len(items)

    def live_flows(self) -> list[tuple[FlowAddr, Flow]]:
        """Confirmed flows that carried packets in the last ``idle_s``."""
        horizon = self._clock_ns() - int(self.cfg.idle_s * 1e9)
        out = []
        for key, flow in self.maps.flows():
            if flow.last_seen_ns >= horizon:
                addr = self.vips.addr(key)
                if addr is not None:
                    out.append((addr, flow))
        return out

    async def refresh(self) -> tuple[int, int]:
        """Refresh the TTLs of live flows; rewrite the ones Redis lost. Returns (refreshed, rewritten)."""
        live = self.live_flows()
        found = await self.redis.touch_flows([addr for addr, _ in live], self.cfg.ttl_s)
        lost = [
            (addr, self._cached(f.cluster, f.index, f.token_tag, f.created_ns))
            for (addr, f), ok in zip(live, found, strict=True)
            if not ok
        ]
        if lost:
            await self.redis.put_flows(lost, self.cfg.ttl_s)
            self.writes_total += len(lost)
        self.refreshes_total += len(live) - len(lost)
        return len(live) - len(lost), len(lost)

    async def republish(self) -> int:
        """Write every live flow from the maps (after events were lost)."""
        items = [
            (addr, self._cached(f.cluster, f.index, f.token_tag, f.created_ns))
            for addr, f in self.live_flows()
        ]
        await self.redis.put_flows(items, self.cfg.ttl_s)
        self.writes_total += len(items)
        self.republishes_total += 1
        log.info("flow cache re-published flows=%d", len(items))
        return len(items)

    async def on_restore(self) -> None:
        """Restore hook: Redis is back, write what was missed."""
        if self._overflowed:
            self._overflowed = False
            try:
                await self.republish()
            except StoreError:
                self._overflowed = True
                raise
        await self.flush()

    # ---- tasks ----
    async def run(self) -> None:
        """Writer and TTL refresher, forever."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._writer())
            group.create_task(self._refresher())

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            await self.redis.wait_up()  # while down, writes stay queued; the restore hook flushes
            self._wake.clear()
            try:
                await self.flush()
            except StoreError as exc:
                log.debug("flow cache writes queued queued=%d error=%s", len(self._queue), exc)

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.refresh_s)
            if self.redis.degraded:
                continue
            try:
                refreshed, rewritten = await self.refresh()
            except StoreError as exc:
                log.debug("flow cache refresh skipped error=%s", exc)
                continue
            log.debug("flow cache refreshed=%d rewritten=%d", refreshed, rewritten)
