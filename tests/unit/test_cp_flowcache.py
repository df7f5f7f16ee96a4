"""The Redis flow cache and recovery from it, against a real redis-server and a MemoryStore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis as redis_sync

from controlplane.cluster.flowcache import FlowCache
from controlplane.cluster.recovery import Recovery
from controlplane.cluster.redisio import RedisStore
from controlplane.config import FlowCacheConfig, RedisConfig
from controlplane.datapath.layout import BackendState, FlowEventKind
from controlplane.datapath.store import Backend, Flow, FlowEvent, MemoryStore, Vip
from icegate.inet import addr16
from icegate.schema import CachedFlow, Keys
from labkit.support import RedisServer, unique_region

VIP = Vip("192.0.2.10", 3478, 0)
VIP6 = Vip("2001:db8::10", 3478, 1)
CFG = FlowCacheConfig(ttl_s=300, refresh_s=30, idle_s=120)


def region() -> str:
    return unique_region("fc")


def maps_with_vips() -> MemoryStore:
    maps = MemoryStore()
    maps.set_vips([VIP, VIP6])
    maps.put_backend(Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 1))
    maps.put_backend(Backend(1, 2, "10.70.0.12", 6081, BackendState.ACTIVE, 1))
    return maps


async def run_with(
    server: RedisServer, name: str, maps: MemoryStore, body: Callable[[RedisStore], Awaitable[None]]
) -> None:
    store = RedisStore(RedisConfig(url=server.url, region=name, timeout_s=0.5))
    supervisor = asyncio.create_task(store.supervise())
    try:
        await asyncio.wait_for(store.wait_up(), 2)
        await body(store)
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await store.close()


def test_flow_events_are_cached_with_a_ttl_and_refreshed(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    maps = maps_with_vips()
    r = redis_sync.Redis.from_url(redis.url)
    now = time.monotonic_ns()

    async def body(store: RedisStore) -> None:
        cache = FlowCache(store, maps, CFG)
        task = asyncio.create_task(cache.run())
        try:
            k4 = (addr16("100.64.1.2"), 40000, 0)
            k6 = (addr16("2001:db8:100::2"), 40001, 1)
            cache.record(FlowEvent(FlowEventKind.CREATED, k4, 1, 1, 0xAABB, now))
            cache.record(FlowEvent(FlowEventKind.CREATED, k6, 1, 1, 7, now))
            cache.record(FlowEvent(FlowEventKind.REROUTED, k6, 1, 2, 8, now))  # newest event wins
            name4 = keys.flow("192.0.2.10", 3478, "100.64.1.2", 40000)
            name6 = keys.flow("2001:db8::10", 3478, "2001:db8:100::2", 40001)
            deadline = time.monotonic() + 2
            # Redis applies the pipeline before the writer has read its reply: wait for both.
            while not (r.exists(name4) and r.exists(name6) and cache.writes_total == 2):
                assert time.monotonic() < deadline, "flow-cache writes did not arrive"
                await asyncio.sleep(0.005)
            cached4 = CachedFlow.decode(r.hgetall(name4))
            assert (cached4.cluster, cached4.index, cached4.token_tag) == (1, 1, 0xAABB)
            assert abs(cached4.created_unix_ms - time.time() * 1000) < 5000
            cached6 = CachedFlow.decode(r.hgetall(name6))
            assert (cached6.cluster, cached6.index, cached6.token_tag) == (1, 2, 8)
            assert 290 <= r.ttl(name4) <= 300
            assert cache.writes_total == 2 and cache.events_total == 3

            # Refresh: live flows get their TTL back; idle flows are left to expire; a key that
            # Redis lost (restart) is rewritten from the map.
            fresh = time.monotonic_ns()
            maps.put_flow(k4, Flow(1, 1, 0xAABB, now, fresh))
            maps.put_flow(k6, Flow(1, 2, 8, now, fresh))
            idle = (addr16("100.64.1.3"), 40000, 0)
            maps.put_flow(idle, Flow(1, 1, 1, now, fresh - 200 * 10**9))
            r.expire(name4, 10)
            r.delete(name6)
            assert await cache.refresh() == (1, 1)
            assert r.ttl(name4) > 290 and r.ttl(name6) > 290
            assert not r.exists(keys.flow("192.0.2.10", 3478, "100.64.1.3", 40000))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run_with(redis, name, maps, body))
    r.close()


def test_recovery_installs_a_burst_with_one_lookup(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    maps = maps_with_vips()
    r = redis_sync.Redis.from_url(redis.url)
    clients = [(f"100.64.2.{i}", 41000 + i) for i in range(1, 21)]
    for host, port in clients:
        r.hset(keys.flow("192.0.2.10", 3478, host, port), mapping=CachedFlow(1, 2, 99, 1).encode())
    r.hset(keys.flow("192.0.2.10", 3478, "100.64.9.9", 1), mapping=CachedFlow(7, 7, 1, 1).encode())

    async def body(store: RedisStore) -> None:
        recovery = Recovery(store, maps)
        burst = [recovery.recover(h, p, "192.0.2.10", 3478) for h, p in clients]
        burst += [recovery.recover(h, p, "192.0.2.10", 3478) for h, p in clients[:5]]  # same clients again
        burst.append(recovery.recover("100.64.3.3", 5, "192.0.2.10", 3478))  # not cached
        burst.append(recovery.recover("100.64.9.9", 1, "192.0.2.10", 3478))  # backend unknown here
        results = await asyncio.gather(*burst)
        assert results == [True] * 25 + [False, False]
        assert recovery.lookups_total == 1
        assert recovery.results["recovered"] == 20 and recovery.results["miss"] == 1
        assert recovery.results["stale_backend"] == 1
        flow = maps.get_flow((addr16("100.64.2.3"), 41003, 0))
        assert flow is not None and (flow.cluster, flow.index, flow.token_tag) == (1, 2, 99)
        # A miss is remembered: the next packet of that client does not ask Redis again.
        assert not await recovery.recover("100.64.3.3", 5, "192.0.2.10", 3478)
        assert recovery.lookups_total == 1 and recovery.results["miss"] == 2

    asyncio.run(run_with(redis, name, maps, body))
    r.close()


def test_preload_restores_10k_flows(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    r = redis_sync.Redis.from_url(redis.url)
    with r.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            host = f"100.64.{i // 250}.{i % 250 + 1}"
            pipe.hset(
                keys.flow("192.0.2.10", 3478, host, 50000), mapping=CachedFlow(1, 1 + i % 2, i, 1).encode()
            )
        pipe.hset(keys.flow("192.0.2.99", 3478, "100.64.0.1", 1), mapping=CachedFlow(1, 1, 1, 1).encode())
        pipe.execute()
    maps = maps_with_vips()

    async def body(store: RedisStore) -> None:
        report = await Recovery(store, maps).preload(maps.vips())
        assert (report.scanned, report.installed, report.skipped) == (10_000, 10_000, 0)
        print(f"preload 10k: redis {report.redis_s * 1e3:.1f} ms, put_flows {report.map_s * 1e3:.1f} ms")

    asyncio.run(run_with(redis, name, maps, body))
    assert sum(1 for _ in maps.flows()) == 10_000
    flow = maps.get_flow((addr16("100.64.3.7"), 50000, 0))
    assert flow is not None and flow.token_tag == 3 * 250 + 6
    r.close()
