"""controlplane.node.expiry: idle flows leave the maps and the Redis flow cache (real redis-server)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_sync

from controlplane.cluster.flowcache import FlowCache
from controlplane.cluster.redisio import RedisStore
from controlplane.config import ExpiryConfig, RelayLimits
from controlplane.datapath.layout import FlowEventKind
from controlplane.datapath.store import Flow, FlowEvent
from controlplane.node import expiry as expiry_module
from controlplane.node.expiry import Expiry
from controlplane.node.metrics import ControlPlane, RelayCollector
from icegate.errors import ConfigError
from icegate.inet import addr16
from icegate.schema import Keys
from labkit.support import RedisServer
from tests.unit.test_cp_flowcache import CFG, maps_with_vips, region, run_with

S = 10**9


def test_sweep_removes_idle_confirmed_and_old_pending_flows_only() -> None:
    maps = maps_with_vips()
    now = 1000 * S
    published: list[FlowEvent] = []
    expiry = Expiry(maps, ExpiryConfig(idle_s=30, pending_s=3), published.append, clock_ns=lambda: now)
    live, idle = (addr16("100.64.1.2"), 40000, 0), (addr16("100.64.1.3"), 40000, 0)
    fresh_pending, old_pending = (addr16("100.64.1.4"), 1, 0), (addr16("100.64.1.5"), 1, 0)
    maps.put_flow(live, Flow(1, 1, 7, now - 100 * S, now - 29 * S))
    maps.put_flow(idle, Flow(1, 2, 8, now - 100 * S, now - 31 * S))
    maps.put_pending(fresh_pending, Flow(1, 1, 9, now - 2 * S, now - 2 * S))
    maps.put_pending(old_pending, Flow(1, 1, 9, now - 4 * S, now - 4 * S))

    assert expiry.sweep() == (1, 1)
    assert [k for k, _ in maps.flows()] == [live] and [k for k, _ in maps.pending()] == [fresh_pending]
    assert published == [FlowEvent(FlowEventKind.EXPIRED, idle, 1, 2, 8, now)]
    assert expiry.sweep() == (0, 0) and expiry.expired == {"confirmed": 1, "pending": 1}

    # Counted on /metrics by state.
    class NoCounters:
        def counters(self) -> list[tuple[int, int]]:
            return []

    collector = RelayCollector(maps, NoCounters(), RelayLimits(), ControlPlane(expiry=expiry))
    samples = {
        (s.name, s.labels.get("state")): s.value
        for m in collector.collect()
        for s in m.samples
        if s.name.startswith("icegate_relay_flows_expired")
    }
    assert samples == {
        ("icegate_relay_flows_expired_total", "confirmed"): 1,
        ("icegate_relay_flows_expired_total", "pending"): 1,
    }


def test_a_flow_used_during_the_walk_stays() -> None:
    maps = maps_with_vips()
    clock = iter([100 * S, 100 * S])
    key = (addr16("100.64.1.2"), 40000, 0)
    maps.put_flow(key, Flow(1, 1, 7, 0, 50 * S))

    class Touching:
        """The datapath refreshes the flow between the walk and the delete."""

        def __getattr__(self, name: str) -> object:
            return getattr(maps, name)

        def get_flow(self, k: tuple[bytes, int, int]) -> Flow | None:
            return Flow(1, 1, 7, 0, 100 * S)

    expiry = Expiry(
        Touching(), ExpiryConfig(idle_s=30, pending_s=3), lambda e: None, clock_ns=lambda: next(clock)
    )  # type: ignore[arg-type]
    assert expiry.sweep() == (0, 0) and maps.get_flow(key) is not None


def test_expired_flows_leave_the_flow_cache_unless_another_node_refreshes_them(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    maps = maps_with_vips()
    r = redis_sync.Redis.from_url(redis.url)
    now = time.monotonic_ns()

    async def body(store: RedisStore) -> None:
        cache = FlowCache(store, maps, CFG)
        task = asyncio.create_task(cache.run())
        try:
            key = (addr16("100.64.1.2"), 40000, 0)
            record = keys.flow("192.0.2.10", 3478, "100.64.1.2", 40000)
            cache.record(FlowEvent(FlowEventKind.CREATED, key, 1, 1, 7, now))
            deadline = time.monotonic() + 2
            while not r.exists(record):
                assert time.monotonic() < deadline, "the flow was not cached"
                await asyncio.sleep(0.005)
            maps.put_flow(key, Flow(1, 1, 7, now - 60 * S, now - 40 * S))
            expiry = Expiry(maps, ExpiryConfig(idle_s=30, pending_s=3), cache.record)
            assert expiry.sweep() == (1, 0)
            while r.ttl(record) > cache.removal_ttl_s:
                assert time.monotonic() < deadline + 2, "the expired flow kept its TTL in Redis"
                await asyncio.sleep(0.005)
            assert 0 < r.ttl(record) <= cache.removal_ttl_s < CFG.ttl_s
            assert cache.removals_total == 1 and maps.get_flow(key) is None
            # Another relay node now carrying the call (ECMP moved it) refreshes the record:
            # it is the full TTL again, so that node's recovery data is not lost.
            addr = ("192.0.2.10", 3478, "100.64.1.2", 40000)
            assert await store.touch_flows([addr], CFG.ttl_s) == [True]
            assert r.ttl(record) > cache.removal_ttl_s
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run_with(redis, name, maps, body))


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"idle_s": 0}, "expiry.idle_s"),
        ({"pending_s": 40}, "expiry.pending_s"),
        ({"interval_s": -1}, "expiry.interval_s"),
    ],
)
def test_bad_expiry_config_names_the_field(fields: dict[str, float], path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        ExpiryConfig(**fields).validate("expiry")


def test_the_running_sweep_lets_the_event_loop_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full map takes a while to walk: the loop (the twin's packets) must get turns meanwhile."""
    monkeypatch.setattr(expiry_module, "CHUNK", 10)
    maps = maps_with_vips()
    now = time.monotonic_ns()
    for i in range(1000):
        maps.put_flow((addr16("100.64.1.2"), 1000 + i, 0), Flow(1, 1, 7, now - 60 * S, now - 40 * S))
    expiry = Expiry(maps, ExpiryConfig(idle_s=30, pending_s=3, interval_s=0.01), lambda e: None)

    async def main() -> int:
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        sweeping = asyncio.create_task(expiry.run())
        while expiry.sweeps_total == 0:
            await asyncio.sleep(0.001)
        for task in (tick, sweeping):
            task.cancel()
        await asyncio.gather(tick, sweeping, return_exceptions=True)
        return turns

    turns = asyncio.run(main())
    assert expiry.expired["confirmed"] == 1000 and sum(1 for _ in maps.flows()) == 0
    assert turns >= 100  # one turn per 10 flows walked, at least
