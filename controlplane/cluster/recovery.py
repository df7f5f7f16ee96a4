"""Flow recovery from the Redis flow cache: the slow path and the cold start.

Slow path. A packet for a VIP without a flow that is not a binding request
(``SLOW_NO_FLOW``: DTLS or SRTP after the relay lost its maps) or a transceiver reply
without a flow (``SLOW_RETURN_NO_FLOW``) reaches the control plane. The twin's hook
calls :meth:`Recovery.recover` with the client and the VIP; the lookups of one burst
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
from controlplane.cluster.redisio import FlowAddr, RedisStore
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
        self._waiting: dict[FlowAddr, asyncio.Future[bool]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._misses: dict[FlowAddr, float] = {}
        self.vips = VipTable(maps)
        self.results: Counter[str] = Counter({r: 0 for r in RESULTS})
        self.lookups_total = 0  # pipelined round trips

    # ---- slow path ----
    async def recover_key(self, key: FlowKeyT) -> bool:
        """:meth:`recover` for a flow key (client addr16, client port, vip index): the twin's hook."""
        addr = self.vips.addr(key)
        if addr is None:
            self.results["unknown_vip"] += 1
            return False
        return await self.recover(addr[2], addr[3], addr[0], addr[1])

    async def recover(self, client: str, client_port: int, vip: str, vip_port: int) -> bool:
        """Install the cached flow of ``client`` on ``vip``; True if the packet can now be re-processed."""
        addr: FlowAddr = (vip, vip_port, client, client_port)
        if self.redis.degraded:
            self.results["degraded"] += 1
            return False
        miss_until = self._misses.get(addr)
        if miss_until is not None:
            if miss_until > time.monotonic():
                self.results["miss"] += 1
                return False
            del self._misses[addr]
        future = self._waiting.get(addr)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[addr] = future
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.create_task(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of this burst queue up behind the first packet
        while self._waiting:
            batch = dict(list(self._waiting.items())[: self.max_batch])
            for addr in batch:
                del self._waiting[addr]
            try:
                outcome = await self._lookup_and_install(list(batch))
            except StoreError as exc:
                log.debug("recovery lookup failed flows=%d error=%s", len(batch), exc)
                outcome = ["degraded" if self.redis.degraded else "error"] * len(batch)
            for (addr, future), result in zip(batch.items(), outcome, strict=True):
                self.results[result] += 1
                if result == "miss":
                    self._remember_miss(addr)
                if not future.done():
                    future.set_result(result in ("recovered", "present"))

    def _remember_miss(self, addr: FlowAddr) -> None:
        if len(self._misses) >= NEGATIVE_MAX:
            self._misses.clear()
        self._misses[addr] = time.monotonic() + self.negative_ttl_s

    async def _lookup_and_install(self, addrs: list[FlowAddr]) -> list[str]:
        cached = await self.redis.get_flows(addrs)
        self.lookups_total += 1
        now = self._clock_ns()
        outcome: list[str] = []
        install: list[tuple[FlowKeyT, Flow]] = []
        for addr, flow in zip(addrs, cached, strict=True):
            result, item = self._plan(addr, flow, now)
            outcome.append(result)
            if item is not None:
                install.append(item)
        if install:
            self.maps.put_flows(install)
            log.debug("recovered flows=%d", len(install))
        return outcome

    def _plan(
        self, addr: FlowAddr, cached: CachedFlow | None, now: int
    ) -> tuple[str, tuple[FlowKeyT, Flow] | None]:
        if cached is None:
            return "miss", None
        vip, vip_port, client, client_port = addr
        vip_index = self.maps.vip_index(addr16(vip), vip_port)
        if vip_index is None:
            return "unknown_vip", None
        if self.maps.get_backend(cached.cluster, cached.index) is None:
            return "stale_backend", None
        key: FlowKeyT = (addr16(client), client_port, vip_index)
        if self.maps.get_flow(key) is not None:
            return "present", None  # the datapath (or a parallel recovery) got there first
        return "recovered", (key, Flow(cached.cluster, cached.index, cached.token_tag, now, now))

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
