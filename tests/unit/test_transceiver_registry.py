"""transceiver.registry against a real redis-server: heartbeat, route keys, drain, outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from icegate import token
from icegate.config import load
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.support import Processes, RedisServer, free_port, redis_server, unique_region
from transceiver.config import TransceiverConfig
from transceiver.registry import Registry

KEY_A, KEY_B = bytes(range(16)), bytes(range(16, 32))


def config(redis_url: str, **overrides: Any) -> TransceiverConfig:
    base: dict[str, Any] = {
        "cluster": 4,
        "index": 9,
        "region": unique_region("reg"),
        "relays": [{"address": "192.0.2.10"}],
        "redis_url": redis_url,
        "heartbeat_interval_s": 0.1,
        "heartbeat_ttl_s": 0.5,
        "tunnel_advertise": "10.70.0.11",
        "signaling_url": "http://10.70.0.11:8080",
    }
    base.update(overrides)
    return load(TransceiverConfig, None, "transceiver", base)


class Harness:
    def __init__(self, cfg: TransceiverConfig, client: aioredis.Redis) -> None:
        self.cfg = cfg
        self.redis = client
        self.keys = Keys(cfg.region)
        self.key = self.keys.transceiver(cfg.cluster, cfg.index)
        self.drains = 0
        self.registry = Registry(cfg, sessions=lambda: 3, on_drain=self._drained)

    def _drained(self) -> None:
        self.drains += 1

    async def record(self) -> Registration | None:
        raw = await self.redis.hgetall(self.key)
        return Registration.decode(raw) if raw else None

    async def until(self, predicate: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)


def run(url: str, scenario: Callable[[Harness], Awaitable[None]], **overrides: Any) -> None:
    async def main() -> None:
        client = aioredis.from_url(url)
        h = Harness(config(url, **overrides), client)
        try:
            await scenario(h)
        finally:
            await h.registry.stop()
            await client.aclose()

    asyncio.run(main())


def test_heartbeat_registers_with_ttl_and_announces(redis: RedisServer) -> None:
    async def scenario(h: Harness) -> None:
        await h.redis.hset(h.keys.route_keys, mapping=RouteKeySet({1: KEY_A}, 1).encode())
        pubsub = h.redis.pubsub()
        await pubsub.subscribe(h.keys.transceiver_events)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        await h.registry.start()
        reg = await h.record()
        assert reg is not None
        assert (reg.cluster, reg.index, reg.state, reg.sessions) == (4, 9, "active", 3)
        assert (reg.tunnel_addr, reg.tunnel_port, reg.signaling_url) == (
            "10.70.0.11",
            6081,
            "http://10.70.0.11:8080",
        )
        assert 0 < await h.redis.pttl(h.key) <= 500
        announced = await pubsub.get_message(timeout=1)
        assert announced is not None and announced["data"] == b"4:9"
        decoded = token.verify(h.registry.mint(), {1: KEY_A})
        assert (decoded.key_id, decoded.cluster, decoded.index) == (1, 4, 9)
        # Rotation reaches new sessions within a heartbeat.
        rotated = RouteKeySet({1: KEY_A}, 1).rotated(KEY_B, grace_s=60)
        await h.redis.hset(h.keys.route_keys, mapping=rotated.encode())
        await h.until(lambda: asyncio.sleep(0, token.decode(h.registry.mint()).key_id == rotated.current))
        assert h.registry.up
        await pubsub.aclose()

    run(redis.url, scenario)


def test_operator_drain_in_redis_starts_our_drain_and_sticks(redis: RedisServer) -> None:
    async def scenario(h: Harness) -> None:
        await h.registry.start()
        await h.redis.hset(h.key, "state", "draining")  # what `icegate backends drain` does
        await h.until(lambda: asyncio.sleep(0, h.drains == 1))
        assert h.registry.state == "draining"
        await asyncio.sleep(0.3)  # more heartbeats: the record stays draining
        reg = await h.record()
        assert reg is not None and reg.state == "draining"
        assert h.drains == 1

    run(redis.url, scenario)


def test_own_drain_is_announced_and_stop_deregisters(redis: RedisServer) -> None:
    async def scenario(h: Harness) -> None:
        await h.registry.start()
        h.registry.drain()

        async def draining() -> bool:
            reg = await h.record()
            return reg is not None and reg.state == "draining"

        await h.until(draining)
        await h.registry.stop()
        assert await h.redis.exists(h.key) == 0

    run(redis.url, scenario)


def test_a_record_left_by_an_earlier_process_is_replaced(redis: RedisServer) -> None:
    async def scenario(h: Harness) -> None:
        stale = Registration(4, 9, "10.0.0.1", 6081, "http://old", "draining", generation=1)
        await h.redis.hset(h.key, mapping=stale.encode())
        await h.registry.start()
        reg = await h.record()
        assert reg is not None and (reg.state, reg.generation) == ("active", h.registry.generation)
        assert h.drains == 0

    run(redis.url, scenario)


def test_redis_outage_keeps_serving_and_recovers(procs: Processes) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def scenario(h: Harness) -> None:
        await h.registry.start()  # nothing listens yet: no exception, degraded
        assert not h.registry.up
        assert token.decode(h.registry.mint()).key_id == 2  # the configured static key
        with redis_server(procs, port=port):
            await h.until(lambda: asyncio.sleep(0, h.registry.up), timeout=5)
            assert await h.record() is not None
        await h.until(lambda: asyncio.sleep(0, not h.registry.up), timeout=5)
        assert token.decode(h.registry.mint()).key_id == 2

    run(url, scenario, route_key=KEY_A.hex(), route_key_id=2)
