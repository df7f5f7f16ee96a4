"""Health beyond one region: every region's Redis registrations, plus probe results.

:class:`RegionHealth` reads one region's transceiver registrations
(``icegate:<region>:tx:*``, :mod:`icegate.schema`) with one SCAN and one pipelined
HGETALL round; a registration whose heartbeat TTL expired is simply gone. It also
listens on the region's ``tx-events`` channel so that a transceiver that deregisters
(SIGTERM: drain, then delete) is noticed within one round trip, not one refresh period.

:class:`FleetHealth` runs one :class:`RegionHealth` per catalog region and merges them
with the last probe results (:mod:`geo.probe`) into a :class:`geo.decide.HealthView`.
A region whose Redis has not answered for ``STALE_AFTER_S`` (or was never read) is
*unreachable*: its clusters are skipped (no health is known), the others keep being
steered to; a single failed read keeps the last view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from geo.decide import ClusterHealth, HealthView
from icegate import redisurl
from icegate.catalog import Catalog
from icegate.errors import StoreError
from icegate.schema import Keys, Registration

logger = logging.getLogger(__name__)

STALE_AFTER_S = 2.0  # a region whose Redis has not answered for this long is unreachable
STOP_TIMEOUT_S = 2.0


def summarise(catalog: Catalog, region: str, registrations: list[Registration]) -> dict[str, ClusterHealth]:
    """Cluster name -> health, from one region's live registrations (unknown clusters ignored)."""
    totals: dict[str, list[int]] = {c.name: [0, 0, 0] for c in catalog.clusters if c.region == region}
    for reg in registrations:
        try:
            name = catalog.cluster_by_id(region, reg.cluster).name
        except KeyError:
            continue
        live, draining, sessions = totals[name]
        if reg.state == "active":
            totals[name] = [live + 1, draining, sessions + reg.sessions]
        else:
            totals[name] = [live, draining + 1, sessions + reg.sessions]
    return {name: ClusterHealth(*values) for name, values in totals.items()}


class RegionHealth:
    """One region's registrations, refreshed every ``interval_s`` and on every ``tx-events`` message."""

    def __init__(self, catalog: Catalog, region: str, redis_url: str, interval_s: float = 0.5) -> None:
        self.catalog = catalog
        self.region = region
        self.keys = Keys(region)
        self.interval_s = interval_s
        self.stale_after_s = max(STALE_AFTER_S, 4 * interval_s)
        self._redis = redisurl.client(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.clusters: dict[str, ClusterHealth] = {}
        self.reachable = False
        self.updated = 0.0  # monotonic time of the last successful read
        self.errors = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def read(self) -> dict[str, ClusterHealth]:
        """One read of the region's registrations; raises StoreError when Redis does not answer."""
        try:
            names = [key async for key in self._redis.scan_iter(self.keys.transceiver_pattern, count=500)]
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            records = await pipe.execute() if names else []
        except (RedisError, OSError) as exc:
            raise StoreError(f"region {self.region}: {exc}") from exc
        regs = []
        for record in records:
            if not record:  # expired between SCAN and HGETALL
                continue
            try:
                regs.append(Registration.decode(record))
            except StoreError as exc:
                logger.warning("region %s: %s", self.region, exc)
        return summarise(self.catalog, self.region, regs)

    async def refresh(self) -> None:
        try:
            self.clusters = await self.read()
        except StoreError as exc:
            # One slow or failed read does not move a region's clients elsewhere: the last
            # view holds for ``stale_after_s``, then the region is unreachable.
            stale = time.monotonic() - self.updated > self.stale_after_s
            if (self.reachable and stale) or not self.errors:
                logger.warning("health: %s", exc)
            self.reachable = self.updated > 0 and not stale
            self.errors += 1
            return
        self.reachable = True
        self.updated = time.monotonic()

    async def _poll(self) -> None:
        while not self._stopping:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.transceiver_events)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake.set()
            except (RedisError, OSError):
                await asyncio.sleep(self.interval_s)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        """Cancel the loops and close the client; bounded, so a Redis that hangs cannot hold up a stop."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._redis.aclose()


@dataclass
class ProbeResults:
    """The last probe of every relay: name -> ok, with when it ran (set by :mod:`geo.probe`)."""

    ok: dict[str, bool] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)

    def record(self, relay: str, ok: bool) -> None:
        self.ok[relay] = ok
        self.at[relay] = time.time()

    @property
    def broken(self) -> frozenset[str]:
        return frozenset(name for name, ok in self.ok.items() if not ok)


class FleetHealth:
    """Every region's :class:`RegionHealth` and the probe results, as one :class:`HealthView`."""

    def __init__(self, catalog: Catalog, interval_s: float = 0.5) -> None:
        self.catalog = catalog
        self.regions = {
            r.name: RegionHealth(catalog, r.name, r.redis_url, interval_s) for r in catalog.regions
        }
        self.probes = ProbeResults()

    def view(self) -> HealthView:
        clusters: dict[str, ClusterHealth] = {}
        for region in self.regions.values():
            clusters.update(region.clusters)
        return HealthView(
            clusters=clusters,
            broken_relays=self.probes.broken,
            unreachable_regions=frozenset(n for n, r in self.regions.items() if not r.reachable),
        )

    def ready(self) -> tuple[bool, Mapping[str, str]]:
        """Ready when at least one region answers; the others are listed with their state."""
        states = {n: ("ok" if r.reachable else "unreachable") for n, r in self.regions.items()}
        return any(r.reachable for r in self.regions.values()), states

    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.regions.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.regions.values()))
