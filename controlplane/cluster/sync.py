"""Cluster sync: transceiver registrations and route keys from Redis into the relay's maps.

Two triggers, one reconciliation:

- ``tx-events`` (pub/sub): a transceiver announces every registration change, and the
  relay re-reads that one registration at once (a change reaches the map within a
  Redis round trip);
- a full SCAN every ``sync_interval_s`` catches what pub/sub cannot tell: heartbeats
  that expired, messages lost while the subscription was reconnecting.

Backend states follow the registrations: ``active`` -> ACTIVE, ``draining`` ->
DRAINING, registration gone (TTL expired) -> DEAD. A dead backend stays in the map, so
its existing flows keep forwarding (the datapath only refuses *new* flows to it), and
is deleted after ``dead_grace_s``. Only clusters in ``clusters`` are synced (empty:
all of the region). A Redis outage changes nothing in the maps: sync only acts on
answers, never on silence.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controlplane.cluster.redisio import RedisStore
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, MapStore
from icegate.errors import StoreError
from icegate.schema import Registration

log = logging.getLogger(__name__)

DEAD_GRACE_S = 600.0
_STATE_OF = {"active": BackendState.ACTIVE, "draining": BackendState.DRAINING}
# ``backend_value.generation`` is a __u32 (bpf/shared.h); a registration's generation is
# its start time in ms (transceiver/registry.py), past 32 bits. Compare what the map can
# hold, else every reconciliation sees a change and rewrites every backend (issue 16).
GENERATION_MASK = 0xFFFFFFFF


def backend_of(reg: Registration) -> Backend:
    return Backend(
        cluster=reg.cluster,
        index=reg.index,
        address=reg.tunnel_addr,
        port=reg.tunnel_port,
        state=_STATE_OF[reg.state],
        generation=reg.generation & GENERATION_MASK,
    )


def _same(backend: Backend) -> Backend:
    return backend


@dataclass
class BackendPlan:
    """What one reconciliation changes in the ``backends`` map."""

    put: list[Backend] = field(default_factory=list)
    delete: list[tuple[int, int]] = field(default_factory=list)


def plan_backends(
    registered: Mapping[tuple[int, int], Registration],
    current: list[Backend],
    dead_since: dict[tuple[int, int], float],
    now: float,
    grace_s: float,
    clusters: tuple[int, ...] = (),
    adjust: Callable[[Backend], Backend] | None = None,
) -> BackendPlan:
    """Compare registrations with the map. Updates ``dead_since`` (when each backend was seen dead).
    ``adjust`` rewrites each wanted backend (a draining node holds them all draining)."""
    plan = BackendPlan()
    wanted = {
        key: (adjust or _same)(backend_of(reg))
        for key, reg in registered.items()
        if (not clusters or key[0] in clusters) and 0 <= key[0] <= 0xFFFF and 0 <= key[1] <= 0xFFFF
    }
    have = {(b.cluster, b.index): b for b in current}
    for key, backend in wanted.items():
        dead_since.pop(key, None)
        if have.get(key) != backend:
            plan.put.append(backend)
    for key, backend in have.items():
        if key in wanted:
            continue
        since = dead_since.setdefault(key, now)
        if backend.state != BackendState.DEAD:
            plan.put.append(
                Backend(
                    backend.cluster,
                    backend.index,
                    backend.address,
                    backend.port,
                    BackendState.DEAD,
                    backend.generation,
                )
            )
        elif now - since >= grace_s:
            plan.delete.append(key)
            del dead_since[key]
    for key in list(dead_since):
        if key not in have:
            del dead_since[key]
    return plan


class ClusterSync:
    """Keeps ``backends`` and ``route_keys`` in a :class:`MapStore` equal to what Redis says."""

    def __init__(
        self,
        redis: RedisStore,
        maps: MapStore,
        *,
        clusters: tuple[int, ...] = (),
        interval_s: float = 0.5,
        dead_grace_s: float = DEAD_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        backend_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.redis = redis
        self.maps = maps
        self.clusters = clusters
        self.interval_s = interval_s
        self.dead_grace_s = dead_grace_s
        self._clock = clock
        self._wall = wall_clock
        self._dead_since: dict[tuple[int, int], float] = {}
        self.last_sync: float | None = None  # monotonic time of the last complete reconciliation
        self.syncs_total = 0
        self.changes_total = 0
        self.failures_total = 0
        # docs/SECURITY.md: a registration (Redis is writable by every transceiver) may only
        # name a tunnel address inside these prefixes; empty: any address.
        self.backend_prefixes = tuple(ipaddress.ip_network(p) for p in backend_prefixes)
        self.refused_total = 0  # registrations refused for an address outside backend_prefixes
        self.adjust: Callable[[Backend], Backend] | None = None  # see plan_backends

    def lag_s(self) -> float:
        """Seconds since the maps were last known equal to Redis (inf before the first sync)."""
        return float("inf") if self.last_sync is None else self._clock() - self.last_sync

    async def reconcile(self) -> int:
        """Full sync of backends and route keys; returns the number of map changes."""
        registered = await self.redis.registrations()
        key_set = await self.redis.route_key_set()
        plan = plan_backends(
            registered,
            self.maps.backends(),
            self._dead_since,
            self._clock(),
            self.dead_grace_s,
            self.clusters,
            self.adjust,
        )
        changes = self._apply(plan)
        if key_set is not None:
            accepted = key_set.accepted(self._wall())
            if self.maps.route_keys() != accepted:
                self.maps.set_route_keys(accepted)
                log.info("route keys updated ids=%s current=%d", sorted(accepted), key_set.current)
                changes += 1
        self.last_sync = self._clock()
        self.syncs_total += 1
        return changes

    async def sync_one(self, cluster: int, index: int) -> bool:
        """Re-read one registration after a ``tx-events`` message; True if the map changed."""
        if self.clusters and cluster not in self.clusters:
            return False
        reg = await self.redis.registration(cluster, index)
        current = self.maps.get_backend(cluster, index)
        if reg is None:
            if current is None or current.state == BackendState.DEAD:
                return False
            self._dead_since.setdefault((cluster, index), self._clock())
            plan = BackendPlan(
                put=[
                    Backend(
                        cluster, index, current.address, current.port, BackendState.DEAD, current.generation
                    )
                ]
            )
        else:
            self._dead_since.pop((cluster, index), None)
            wanted = (self.adjust or _same)(backend_of(reg))
            plan = BackendPlan(put=[wanted] if wanted != current else [])
        return self._apply(plan) > 0

    def allowed(self, backend: Backend) -> bool:
        """Is the backend's tunnel address inside ``backend_prefixes`` (or are there none)?"""
        if not self.backend_prefixes:
            return True
        try:
            addr = ipaddress.ip_address(backend.address)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in self.backend_prefixes)

    def _apply(self, plan: BackendPlan) -> int:
        refused = [b for b in plan.put if not self.allowed(b)]
        for backend in refused:
            self.refused_total += 1
            log.warning(
                "backend refused cluster=%d index=%d address=%s reason=outside_backend_prefixes",
                backend.cluster,
                backend.index,
                backend.address,
            )
        plan = BackendPlan([b for b in plan.put if self.allowed(b)], plan.delete)
        for backend in plan.put:
            self.maps.put_backend(backend)
            log.info(
                "backend cluster=%d index=%d state=%s address=%s:%d generation=%d",
                backend.cluster,
                backend.index,
                backend.state.name.lower(),
                backend.address,
                backend.port,
                backend.generation,
            )
        for cluster, index in plan.delete:
            self.maps.delete_backend(cluster, index)
            log.info("backend removed cluster=%d index=%d reason=dead_grace_expired", cluster, index)
        changes = len(plan.put) + len(plan.delete)
        self.changes_total += changes
        return changes

    async def run(self) -> None:
        """Follow ``tx-events`` and reconcile every ``interval_s``, forever; survives Redis outages."""
        while True:
            try:
                await self._follow()
            except StoreError as exc:
                self.failures_total += 1
                log.debug("sync paused error=%s", exc)
                await asyncio.sleep(self.interval_s)

    async def _follow(self) -> None:
        await self.reconcile()
        next_full = self._clock() + self.interval_s
        async for event in self.redis.transceiver_events(poll_s=self.interval_s):
            if event is not None:
                await self.sync_one(*event)
            if self._clock() >= next_full:
                await self.reconcile()
                next_full = self._clock() + self.interval_s
