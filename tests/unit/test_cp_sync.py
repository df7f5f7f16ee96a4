"""Cluster sync against a real redis-server and a MemoryStore: backends follow registrations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis as redis_sync

from controlplane.cluster.redisio import RedisStore
from controlplane.cluster.sync import ClusterSync, plan_backends
from controlplane.config import RedisConfig
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, MemoryStore
from icegate import token
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.support import RedisServer, unique_region


def region() -> str:
    return unique_region("sync")


def reg(
    cluster: int, index: int, state: str = "active", generation: int = 1, addr: str = "10.70.0.11"
) -> Registration:
    return Registration(cluster, index, addr, 6081, f"http://{addr}:8080", state, generation)


def register(r: redis_sync.Redis, keys: Keys, registration: Registration, ttl_ms: int = 10_000) -> None:
    """What a transceiver's heartbeat does: write, set the TTL, announce."""
    name = keys.transceiver(registration.cluster, registration.index)
    r.hset(name, mapping=registration.encode())
    r.pexpire(name, ttl_ms)
    r.publish(keys.transceiver_events, f"{registration.cluster}:{registration.index}")


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll ``predicate`` on the event loop; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def with_sync(
    server: RedisServer,
    name: str,
    body: Callable[[ClusterSync, redis_sync.Redis], Awaitable[None]],
    **kw: object,
) -> None:
    store = RedisStore(RedisConfig(url=server.url, region=name, timeout_s=0.5))
    sync = ClusterSync(store, MemoryStore(), **kw)  # type: ignore[arg-type]
    store.on_restore(lambda: _reconcile(sync))
    tasks = [asyncio.create_task(store.supervise()), asyncio.create_task(sync.run())]
    client = redis_sync.Redis.from_url(server.url)
    try:
        await asyncio.wait_for(store.wait_up(), 2)
        await body(sync, client)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        client.close()


async def _reconcile(sync: ClusterSync) -> None:
    await sync.reconcile()


def state_of(sync: ClusterSync, cluster: int, index: int) -> BackendState | None:
    backend = sync.maps.get_backend(cluster, index)
    return None if backend is None else backend.state


def test_backends_follow_registrations_within_a_second(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    lags: list[float] = []

    async def body(sync: ClusterSync, r: redis_sync.Redis) -> None:
        register(r, keys, reg(1, 1))
        lags.append(await until(lambda: state_of(sync, 1, 1) == BackendState.ACTIVE))
        backend = sync.maps.get_backend(1, 1)
        assert backend == Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 1)

        register(r, keys, reg(1, 1, generation=2, addr="10.70.0.12"))  # re-registration
        lags.append(await until(lambda: (sync.maps.get_backend(1, 1) or backend).generation == 2))
        assert sync.maps.get_backend(1, 1) == Backend(1, 1, "10.70.0.12", 6081, BackendState.ACTIVE, 2)

        register(r, keys, reg(1, 1, state="draining", generation=2, addr="10.70.0.12"))
        lags.append(await until(lambda: state_of(sync, 1, 1) == BackendState.DRAINING))

        # Heartbeat stops: the key expires, no message is published; the periodic scan notices.
        r.pexpire(keys.transceiver(1, 1), 50)
        lags.append(await until(lambda: state_of(sync, 1, 1) == BackendState.DEAD))
        assert sync.maps.get_backend(1, 1) == Backend(1, 1, "10.70.0.12", 6081, BackendState.DEAD, 2)

        register(r, keys, reg(1, 1, generation=3))  # comes back
        lags.append(await until(lambda: state_of(sync, 1, 1) == BackendState.ACTIVE))
        assert sync.lag_s() < 1.0

    asyncio.run(with_sync(redis, name, body, interval_s=0.2))
    print("sync lag (register, re-register, drain, expire, return):", [round(x * 1e3, 1) for x in lags], "ms")
    assert max(lags) < 1.0, lags


def test_cluster_filter_and_unparsable_records(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)

    async def body(sync: ClusterSync, r: redis_sync.Redis) -> None:
        register(r, keys, reg(1, 1))
        register(r, keys, reg(2, 1))
        r.hset(keys.transceiver(1, 9), mapping={"cluster": "1", "index": "nine"})
        await sync.reconcile()
        assert [(b.cluster, b.index) for b in sync.maps.backends()] == [(1, 1)]

    asyncio.run(with_sync(redis, name, body, clusters=(1,)))


def test_backend_addresses_outside_the_private_prefixes_are_refused(redis: RedisServer) -> None:
    """Issue 12, finding 8: a registration naming a public address (or a backend moved
    there) is refused, so Redis cannot send flows out of the public side."""
    name = region()
    keys = Keys(name)

    async def body(sync: ClusterSync, r: redis_sync.Redis) -> None:
        register(r, keys, reg(1, 1))
        register(r, keys, reg(1, 2, addr="192.0.2.99"))
        await sync.reconcile()
        assert [(b.cluster, b.index) for b in sync.maps.backends()] == [(1, 1)]
        register(r, keys, reg(1, 1, generation=2, addr="198.51.100.7"))  # moved out of the prefix
        await sync.reconcile()
        assert sync.maps.get_backend(1, 1) == Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 1)
        assert sync.refused_total >= 2

    asyncio.run(with_sync(redis, name, body, backend_prefixes=("10.70.0.0/16", "fd00:70::/32")))


def test_dead_backends_are_kept_for_the_grace_period() -> None:
    current = [Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 4)]
    dead_since: dict[tuple[int, int], float] = {}
    plan = plan_backends({}, current, dead_since, now=100.0, grace_s=600.0)
    assert plan.put == [Backend(1, 1, "10.70.0.11", 6081, BackendState.DEAD, 4)] and not plan.delete
    current = plan.put
    assert not plan_backends({}, current, dead_since, now=699.0, grace_s=600.0).delete
    plan = plan_backends({}, current, dead_since, now=700.0, grace_s=600.0)
    assert plan.delete == [(1, 1)] and not plan.put and not dead_since
    # A backend that re-registers during the grace period is active again, and forgotten as dead.
    dead_since = {(1, 1): 100.0}
    plan = plan_backends({(1, 1): reg(1, 1, generation=5)}, current, dead_since, now=200.0, grace_s=600.0)
    assert plan.put == [Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 5)] and not dead_since


def test_a_generation_past_32_bits_is_not_rewritten_every_sync() -> None:
    """A registration's generation is its start time in ms (> 2**32); the map's field is a
    __u32. Once written, the next reconciliation must find nothing to change (issue 16:
    every backend was rewritten and logged every ``sync_interval_s``)."""
    from controlplane.datapath.layout import BackendValue

    generation = 1_795_537_754_608
    registered = {(1, 1): reg(1, 1, generation=generation)}
    first = plan_backends(registered, [], {}, now=0.0, grace_s=600.0)
    assert len(first.put) == 1
    written = first.put[0]
    # What the kernel map gives back: the value round-tripped through the shared.h layout.
    value = BackendValue.of(written.address, written.port, written.state, written.generation)
    assert value.generation == generation & 0xFFFFFFFF
    readback = Backend(1, 1, written.address, written.port, written.state, value.generation)
    again = plan_backends(registered, [readback], {}, now=1.0, grace_s=600.0)
    assert not again.put and not again.delete
    # A re-registration (new generation) is still a change.
    bumped = {(1, 1): reg(1, 1, generation=generation + 1)}
    assert plan_backends(bumped, [readback], {}, now=2.0, grace_s=600.0).put


def test_route_keys_rotation_and_grace_expiry(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    now = [1_000_000.0]
    first, second = token.new_key(), token.new_key()

    async def body(sync: ClusterSync, r: redis_sync.Redis) -> None:
        store = sync.redis
        await store.update_route_keys(lambda old: RouteKeySet({0: first}, 0))
        await sync.reconcile()
        assert sync.maps.route_keys() == {0: first}
        rotated = await store.update_route_keys(
            lambda old: (old or RouteKeySet({}, 0)).rotated(second, 60, now[0])
        )
        assert rotated.current == 1 and rotated.previous == 0
        await sync.reconcile()
        assert sync.maps.route_keys() == {0: first, 1: second}
        now[0] += 61  # grace over: the previous key leaves the map on the next sync
        await sync.reconcile()
        assert sync.maps.route_keys() == {1: second}
        assert RouteKeySet.decode(r.hgetall(keys.route_keys)).current == 1

    asyncio.run(with_sync(redis, name, body, interval_s=60, wall_clock=lambda: now[0]))
