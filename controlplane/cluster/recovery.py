"""Flow recovery from the Redis flow cache: the slow path and the cold start.

Slow path. A packet for a VIP without a flow that is not a binding request
(``SLOW_NO_FLOW``: DTLS or SRTP after the relay lost its maps) or a transceiver reply
without a flow (``SLOW_RETURN_NO_FLOW``) reaches the control plane. The twin's hook
calls :meth:`Recovery.recover_key` with the flow key it has; the lookups of one burst
are sent as one pipelined round trip, the flows found are installed with one
``MapStore.put_flows``, and the caller re-processes its packet (now a flow hit).
Nothing waits on a dead Redis: while it is down, ``recover`` answers ``False`` at once.
Misses are remembered for ``negative_ttl_s`` so a client without a cached flow costs one
lookup, not one per packet.

Cold start. ``relay run --preload`` calls :meth:`Recovery.preload` before attaching: the
cached flows of the relay's VIPs are read from Redis and written into the maps in one
batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.cluster.flowcache import VipTable
from controlplane.cluster.redisio import RedisStore
from controlplane.datapath.store import Flow, FlowKeyT, MapStore, Vip
from icegate.errors import StoreError
from icegate.inet import addr16
from icegate.schema import CachedFlow

log = logging.getLogger(__name__)

RESULTS = ("recovered", "present", "miss", "stale_backend", "unknown_vip", "degraded", "error")
MAX_BATCH = 512
NEGATIVE_TTL_S = 1.0
NEGATIVE_MAX = 65536


@dataclass(frozen=True)
class PreloadReport:
    scanned: int
    installed: int
    skipped: int
    redis_s: float  # SCAN + HGETALL of the cached flows
    prepare_s: float  # turning records into map entries
    map_s: float  # MapStore.put_flows: the map part of a restore (target: 10k flows in ≤ 20 ms)


class Recovery:
    def __init__(
        self,
        redis: RedisStore,
        maps: MapStore,
        *,
        max_batch: int = MAX_BATCH,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.redis = redis
        self.maps = maps
        self.max_batch = max_batch
        self.negative_ttl_s = negative_ttl_s
        self._clock_ns = clock_ns
        self._waiting: dict[FlowKeyT, asyncio.Future[bool]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._misses: dict[FlowKeyT, float] = {}
        self.vips = VipTable(maps)
        self.results: Counter[str] = Counter({r: 0 for r in RESULTS})
        self.lookups_total = 0  # pipelined round trips

    # ---- slow path ----
    async def recover_key(self, key: FlowKeyT) -> bool:
        """Install the cached flow of ``key`` (client addr16, client port, vip index), the key
        the twin's hook has; True if the packet can now be re-processed. The key is turned
        into text only for the Redis lookup (``schema.Keys`` names flows by address)."""
        if self.vips.get(key[2]) is None:
            self.results["unknown_vip"] += 1
            return False
        if self.redis.degraded:
            self.results["degraded"] += 1
            return False
        miss_until = self._misses.get(key)
        if miss_until is not None:
            if miss_until > time.monotonic():
                self.results["miss"] += 1
                return False
            del self._misses[key]
        future = self._waiting.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.create_task(self._drain())
        return await asyncio.shield(future)

    async def recover(self, client: str, client_port: int, vip: str, vip_port: int) -> bool:
        """:meth:`recover_key` for text addresses (operators and tests)."""
        vip_index = self.maps.vip_index(addr16(vip), vip_port)
        if vip_index is None:
            self.results["unknown_vip"] += 1
            return False
        return await self.recover_key((addr16(client), client_port, vip_index))

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of this burst queue up behind the first packet
        while self._waiting:
            batch = dict(list(self._waiting.items())[: self.max_batch])
            for key in batch:
                del self._waiting[key]
            try:
                outcome = await self._lookup_and_install(list(batch))
            except StoreError as exc:
                log.debug("recovery lookup failed flows=%d error=%s", len(batch), exc)
                outcome = ["degraded" if self.redis.degraded else "error"] * len(batch)
            for (key, future), result in zip(batch.items(), outcome, strict=True):
                self.results[result] += 1
                if result == "miss":
                    self._remember_miss(key)
                if not future.done():
                    future.set_result(result in ("recovered", "present"))

    def _remember_miss(self, key: FlowKeyT) -> None:
        if len(self._misses) >= NEGATIVE_MAX:
            self._misses.clear()
        self._misses[key] = time.monotonic() + self.negative_ttl_s

    async def _lookup_and_install(self, keys: list[FlowKeyT]) -> list[str]:
        addrs = {key: self.vips.addr(key) for key in keys}
        known = [key for key in keys if addrs[key] is not None]
        found = await self.redis.get_flows([addr for addr in addrs.values() if addr is not None])
        self.lookups_total += 1
        cached = dict(zip(known, found, strict=True))
        now = self._clock_ns()
        outcome: list[str] = []
        install: list[tuple[FlowKeyT, Flow]] = []
        for key in keys:
            result, item = self._plan(key, cached, now)
            outcome.append(result)
            if item is not None:
                install.append(item)
        if install:
            self.maps.put_flows(install)
            log.debug("recovered flows=%d", len(install))
        return outcome

    def _plan(
        self, key: FlowKeyT, cached: dict[FlowKeyT, CachedFlow | None], now: int
    ) -> tuple[str, tuple[FlowKeyT, Flow] | None]:
        if key not in cached:
            return "unknown_vip", None  # the VIP went away while the lookup waited
        flow = cached[key]
        if flow is None:
            return "miss", None
        if self.maps.get_backend(flow.cluster, flow.index) is None:
            return "stale_backend", None
        if self.maps.get_flow(key) is not None:
            return "present", None  # the datapath (or a parallel recovery) got there first
        return "recovered", (key, Flow(flow.cluster, flow.index, flow.token_tag, now, now))

    # ---- cold start ----
    async def preload(self, vips: list[Vip]) -> PreloadReport:
        """Load the cached flows of ``vips`` into the maps in one batch (skipping unknown backends)."""
        started = time.perf_counter()
        found: list[tuple[Vip, str, int, CachedFlow]] = []
        for vip in vips:
            found.extend(
                (vip, client, port, flow)
                for client, port, flow in await self.redis.scan_flows(vip.address, vip.port)
            )
        redis_s = time.perf_counter() - started
        started = time.perf_counter()
        now = self._clock_ns()
        known = {(b.cluster, b.index) for b in self.maps.backends()}
        items = [
            ((addr16(client), port, vip.index), Flow(f.cluster, f.index, f.token_tag, now, now))
            for vip, client, port, f in found
            if (f.cluster, f.index) in known
        ]
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        installed = self.maps.put_flows(items) if items else 0
        map_s = time.perf_counter() - started
        report = PreloadReport(len(found), installed, len(found) - len(items), redis_s, prepare_s, map_s)
        log.info(
            "preload flows_cached=%d installed=%d skipped=%d redis_ms=%.1f prepare_ms=%.1f map_ms=%.1f",
            report.scanned,
            report.installed,
            report.skipped,
            redis_s * 1e3,
            prepare_s * 1e3,
            map_s * 1e3,
        )
        return report
