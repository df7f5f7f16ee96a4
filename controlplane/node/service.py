"""The control plane around one datapath: Redis, sync, flow cache, recovery, metrics, HTTP.

:class:`RelayService` wires the parts together the same way whatever runs the packets
(the XDP program over pinned maps, or the userspace twin over a ``MemoryStore``):

    RedisStore ──restore hooks──► ClusterSync.reconcile, FlowCache.on_restore
    ClusterSync  (tx-events + periodic scan) ──► maps: backends, route_keys
    FlowCache    (flow events) ──► Redis flow cache, TTLs refreshed
    Expiry       (sweep) ──► maps: idle flows removed ──EXPIRED──► FlowCache
    Recovery     (slow-path hook, --preload) ◄── Redis flow cache ──► maps: flows
    RelayCollector + HttpServer: /metrics, /livez, /readyz

The daemon (``daemon.py``) chooses the datapath and owns signals; this module only
runs the loops and answers "what is degraded?".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import CollectorRegistry

from controlplane.cluster.flowcache import FlowCache
from controlplane.cluster.recovery import Recovery
from controlplane.cluster.redisio import RedisStore
from controlplane.cluster.sync import ClusterSync
from controlplane.config import RateLimits, RelayConfig
from controlplane.datapath.store import MapStore, RateConfig, TunnelEndpoint, Vip
from controlplane.node.drain import Drain
from controlplane.node.expiry import Expiry
from controlplane.node.http import HttpServer, State, make_app
from controlplane.node.metrics import ControlPlane, CounterSource, RelayCollector
from icegate.errors import StoreError
from icegate.inet import addr16
from icegate.observe import http_responses, register_process

log = logging.getLogger(__name__)

DatapathProblem = Callable[[], str | None]
"""Returns why the datapath is not forwarding (program detached, twin stopped), or None."""


def plan_vips(cfg: RelayConfig, current: list[Vip]) -> list[Vip]:
    """The configured VIPs with stable indices: a VIP keeps the index its flows were keyed by."""
    kept = {(v.address, v.port): v.index for v in current}
    wanted = [(v.address, v.port) for v in cfg.vips]
    used = {kept[w] for w in wanted if w in kept}
    free = (i for i in range(cfg.limits.max_vips) if i not in used)
    return [
        Vip(addr, port, kept[(addr, port)] if (addr, port) in kept else next(free)) for addr, port in wanted
    ]


def rate_config(rate: RateLimits, cpus: int) -> RateConfig:
    """GCRA parameters for ``struct relay_config``; global and slow-path buckets are per CPU."""
    source = RateLimits.gcra(rate.new_flows_per_source, rate.source_burst)
    global_ = RateLimits.gcra(rate.new_flows_global, rate.global_burst, cpus)
    slow = RateLimits.gcra(rate.slow_path_pps, rate.slow_path_burst, cpus)
    # Hash maps shared by every CPU: not scaled.
    tag = RateLimits.gcra(rate.new_flows_per_token, rate.token_burst)
    slow_source = RateLimits.gcra(rate.slow_path_per_source_pps, rate.slow_path_source_burst)
    return RateConfig(
        *source,
        *global_,
        *slow,
        *tag,
        *slow_source,
        pending_timeout_ns=int(rate.pending_timeout_s * 1e9),
        pending_max_packets=rate.pending_max_packets,
    )


def configure_maps(cfg: RelayConfig, maps: MapStore, cpus: int | None = None) -> None:
    """Write VIPs, the tunnel endpoint and rate limits, touching only what differs (restarts are live)."""
    vips = plan_vips(cfg, maps.vips())
    stale_addrs = any(not maps.is_vip_address(addr16(v.address)) for v in vips)
    if sorted(vips, key=lambda v: v.index) != maps.vips() or stale_addrs:
        maps.set_vips(vips)
    tunnel = TunnelEndpoint(cfg.tunnel.address4, cfg.tunnel.address6, cfg.tunnel.port)
    rate = rate_config(cfg.rate, cpus or cfg.cpus())
    if (maps.tunnel(), maps.rate_config()) != (tunnel, rate):
        maps.set_config(tunnel, rate)


class RelayService:
    def __init__(
        self,
        cfg: RelayConfig,
        maps: MapStore,
        counters: CounterSource,
        datapath_problem: DatapathProblem,
        *,
        http_port: int | None = None,
        state: State | None = None,
        datapath_info: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.maps = maps
        self.redis = RedisStore(cfg.redis)
        self.sync = ClusterSync(
            self.redis,
            maps,
            clusters=cfg.clusters,
            interval_s=cfg.sync_interval_s,
            dead_grace_s=cfg.dead_grace_s,
            backend_prefixes=cfg.backend_prefixes,
        )
        self.flow_cache = FlowCache(self.redis, maps, cfg.flow_cache)
        self.recovery = Recovery(self.redis, maps)
        self.expiry = Expiry(maps, cfg.expiry, self.flow_cache.record)  # idle flows out, and from Redis
        self.drain = Drain(maps)
        self.sync.adjust = self.drain.adjust
        self.redis.on_restore(self._resync)
        self.redis.on_restore(self.flow_cache.on_restore)
        self.datapath_problem = datapath_problem
        self.registry = CollectorRegistry(auto_describe=False)
        parts = ControlPlane(
            self.redis,
            self.sync,
            self.flow_cache,
            self.recovery,
            self.expiry,
            draining=lambda: self.drain.draining,
        )
        self.registry.register(
            RelayCollector(
                maps, counters, cfg.limits, parts, lambda: datapath_problem() is None, datapath_info
            )
        )
        register_process(self.registry, "relay")
        port = cfg.http.port if http_port is None else http_port
        app = make_app(self.registry, self.problems, state, self._drain_request)
        app.middlewares.append(http_responses(self.registry, "icegate_relay"))
        self.http = HttpServer(app, cfg.http.address, port)
        self.tasks: list[asyncio.Task[None]] = []  # run forever; the daemon watches them
        self._undrain_sync: asyncio.Task[None] | None = None

    async def _resync(self) -> None:
        await self.sync.reconcile()

    def _drain_request(self, method: str, idle_s: float) -> dict[str, Any]:
        """``/v1/drain``; after an undrain a full sync puts Redis's word over the restored states."""
        report = self.drain.handle(method, idle_s)
        if method == "DELETE":
            log.info("drain cancelled: taking new flows again")
            self._undrain_sync = asyncio.get_running_loop().create_task(self._sync_after_undrain())
        elif method == "POST":
            log.info("drain started: refusing new flows, readiness failing")
        return report

    async def _sync_after_undrain(self) -> None:
        try:
            await self.sync.reconcile()
        except StoreError as exc:  # Redis down: the periodic sync does it when Redis is back
            log.warning("sync after undrain failed error=%s", exc)

    def problems(self) -> list[str]:
        """What keeps the relay from being ready, one line each; empty when ready."""
        found = []
        problem = self.datapath_problem()
        if problem:
            found.append(f"datapath: {problem}")
        if self.redis.degraded:
            found.append(f"redis: degraded, {self.redis.last_error}")
        drain = self.drain.problem()
        if drain:
            found.append(f"draining: {drain}")
        return found

    async def connect(self, timeout_s: float) -> bool:
        """Start the Redis supervisor and wait up to ``timeout_s`` for the first full sync."""
        if not self.tasks:
            self.tasks.append(asyncio.create_task(self.redis.supervise(), name="redis-supervise"))
        try:
            await asyncio.wait_for(self.redis.wait_up(), timeout_s)
        except TimeoutError:
            log.warning("redis not reachable at start, continuing degraded error=%s", self.redis.last_error)
            return False
        return True

    async def start(self) -> None:
        """Run sync, the flow cache and HTTP (the Redis supervisor too, if :meth:`connect` did not)."""
        if not self.tasks:
            self.tasks.append(asyncio.create_task(self.redis.supervise(), name="redis-supervise"))
        self.tasks.append(asyncio.create_task(self.sync.run(), name="sync"))
        self.tasks.append(asyncio.create_task(self.flow_cache.run(), name="flow-cache"))
        self.tasks.append(asyncio.create_task(self.expiry.run(), name="flow-expiry"))
        await self.http.start()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        await self.http.stop()
        with contextlib.suppress(StoreError):
            await self.flow_cache.flush()  # last queued writes, best effort
        await self.redis.close()
