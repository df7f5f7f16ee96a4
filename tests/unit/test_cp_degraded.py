"""Degraded mode: Redis stops under a running relay (twin datapath) and comes back.

A private redis-server is stopped mid-test: forwarding (the twin's Datapath over a
MemoryStore) is unaffected, new sessions still route by token, /readyz says what is
degraded, recovery answers at once; when Redis returns (empty, like a restart without
persistence) state is reconciled without a restart of the control plane.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import aiohttp
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from controlplane.cluster.redisio import RedisStore
from controlplane.config import RedisConfig, RelayConfig, TunnelConfig, VipConfig
from controlplane.datapath.engine import Datapath
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import MemoryStore
from controlplane.node.metrics import ListCounters
from controlplane.node.service import RelayService, configure_maps
from icegate import geneve, inet, stun
from icegate import token as tokens
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.support import Processes, redis_server

VIP = ("192.0.2.10", 3478)
TX = ("10.70.0.11", 6081)
KEY = bytes(range(16))


def binding_request(ufrag: str, tid: bytes = b"icegate-tid1") -> bytes:
    username = f"{ufrag}:cli1".encode()
    attr = struct.pack("!HH", stun.ATTR_USERNAME, len(username)) + username + b"\0" * (-len(username) % 4)
    return struct.pack("!HHI12s", stun.BINDING_REQUEST, len(attr), stun.COOKIE, tid) + attr


def binding_success(tid: bytes = b"icegate-tid1") -> bytes:
    return struct.pack("!HHI12s", stun.BINDING_SUCCESS, 0, stun.COOKIE, tid)


def returned(client: tuple[str, int], payload: bytes) -> bytes:
    """What the transceiver sends back: Geneve around the complete inner packet VIP -> client."""
    return geneve.encapsulate(inet.build_udp(VIP[0], VIP[1], client[0], client[1], payload), vni=1)


def heartbeat(r: redis_sync.Redis, keys: Keys) -> None:
    name = keys.transceiver(1, 1)
    r.hset(name, mapping=Registration(1, 1, TX[0], TX[1], "http://tx", "active", 1).encode())
    r.pexpire(name, 30_000)
    r.publish(keys.transceiver_events, "1:1")


def relay_config(url: str, region: str) -> RelayConfig:
    return RelayConfig(
        name="degraded",
        vips=(VipConfig(*VIP),),
        tunnel=TunnelConfig(address4="10.70.0.1"),
        redis=RedisConfig(url=url, region=region, timeout_s=0.2, retry_min_s=0.05, retry_max_s=0.2),
        sync_interval_s=0.2,
    )


def open_session(dp: Datapath, client: tuple[str, int], ufrag: str) -> None:
    assert dp.from_client(*client, *VIP, binding_request(ufrag)).stat == Stat.FWD_NEW_FLOW
    assert dp.from_backend(TX[0], returned(client, binding_success())).stat == Stat.FWD_CONFIRM


async def get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as reply:
        return reply.status, await reply.text()


async def until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_redis_outage_degrades_and_recovers(procs: Processes) -> None:
    region = "degraded"
    keys = Keys(region)
    with redis_server(procs) as server:
        r = redis_sync.Redis.from_url(server.url, socket_timeout=1)
        heartbeat(r, keys)
        r.hset(keys.route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
        cfg = relay_config(server.url, region)
        maps = MemoryStore()
        configure_maps(cfg, maps, cpus=1)
        dp = Datapath(maps)
        service = RelayService(cfg, maps, ListCounters(dp.counters), lambda: None, http_port=0)
        dp.on_event = service.flow_cache.record
        client_a, client_b = ("100.64.1.2", 40000), ("100.64.1.3", 40000)
        key_a = keys.flow(*VIP, *client_a)
        key_b = keys.flow(*VIP, *client_b)

        async def scenario() -> dict[str, float]:
            measured: dict[str, float] = {}
            assert await service.connect(2.0)
            await service.start()
            port = service.http.port
            async with aiohttp.ClientSession() as http:
                assert await get(http, port, "/readyz") == (200, "ready\n")
                assert maps.get_backend(1, 1) is not None and maps.route_keys() == {0: KEY}
                open_session(dp, client_a, tokens.mint(0, KEY, 1, 1))
                await until(lambda: _async(r.exists(key_a)), what="flow A in the cache")

                # ---- Redis goes away ----
                procs.stop(server.proc)
                stopped = time.monotonic()
                await until(lambda: _async(service.redis.degraded), what="degraded mode")
                measured["detect_s"] = time.monotonic() - stopped
                status, body = await get(http, port, "/readyz")
                assert status == 503 and body.startswith("redis: degraded"), body
                assert (await get(http, port, "/livez"))[0] == 200

                start = time.perf_counter()
                for _ in range(1000):  # forwarding is unaffected: nothing in the packet path waits
                    assert dp.from_client(*client_a, *VIP, b"\x17\xfe\xfd" + bytes(60)).stat == Stat.FWD_FLOW
                measured["forward_1000_s"] = time.perf_counter() - start
                open_session(dp, client_b, tokens.mint(0, KEY, 1, 1))  # new sessions still route by token
                assert service.flow_cache.queued == 1
                start = time.perf_counter()
                assert not await service.recovery.recover("100.64.9.9", 1, *VIP)
                measured["recover_while_down_s"] = time.perf_counter() - start
                assert service.recovery.results["degraded"] == 1
                await asyncio.sleep(0.5)  # several sync intervals: silence must not kill backends
                backend = maps.get_backend(1, 1)
                assert backend is not None and backend.state == BackendState.ACTIVE

                # ---- Redis returns, empty (no persistence); the transceiver's heartbeat re-registers ----
                with redis_server(procs, port=server.port):
                    back = time.monotonic()
                    heartbeat(r, keys)
                    r.hset(keys.route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
                    await until(lambda: _async(not service.redis.degraded), what="redis restored")
                    measured["restore_s"] = time.monotonic() - back
                    assert (await get(http, port, "/readyz"))[0] == 200
                    assert r.exists(key_b), "queued flow-cache write was not flushed"
                    assert not r.exists(key_a)  # lost with Redis; the refresh rewrites it from the map
                    assert await service.flow_cache.refresh() == (1, 1)
                    assert r.exists(key_a) and r.ttl(key_a) > 0
                    metrics = await get(http, port, "/metrics")
                    await service.stop()
            values = {
                s.name + str(sorted(s.labels.items())): s.value
                for family in text_string_to_metric_families(metrics[1])
                for s in family.samples
            }
            assert values["icegate_relay_redis_up[]"] == 1
            assert values["icegate_relay_redis_errors_total[]"] >= 1
            assert values["icegate_relay_redis_restores_total[]"] == 2
            assert values["icegate_relay_recoveries_total[('result', 'degraded')]"] == 1
            assert values["icegate_relay_packets_total[('reason', 'flow'), ('verdict', 'forward')]"] == 1000
            assert values["icegate_relay_flow_cache_writes_total[]"] >= 3
            return measured

        measured = asyncio.run(scenario())
        r.close()
    print("redis outage:", {k: round(v * 1e3, 2) for k, v in measured.items()}, "ms")
    # "at once": without waiting for a Redis command to time out (a functional bound, not a speed)
    assert measured["recover_while_down_s"] < cfg.redis.timeout_s


async def _async(value: Any) -> Any:
    return value


def test_a_command_lost_while_restoring_is_not_reported_restored(procs: Processes) -> None:
    """A command of another task that fails while the restore hooks run (Redis flapping)
    means the store is not back: the supervisor probes again instead of reporting up with
    every command still refused (the state it used to end in: up, and fail-fast forever)."""
    with redis_server(procs) as server:
        store = RedisStore(RedisConfig(url=server.url, region="flap", timeout_s=0.2, retry_min_s=0.05))
        hook_runs = 0

        async def flapping_hook() -> None:
            nonlocal hook_runs
            hook_runs += 1
            if hook_runs == 1:  # as if the sync task's command failed right now
                store._failed("HGETALL", ConnectionError("connection reset"))

        store.on_restore(flapping_hook)

        async def body() -> None:
            task = asyncio.create_task(store.supervise())
            try:
                await asyncio.wait_for(store.wait_up(), 5)
                assert hook_runs == 2, "the flapped restore was reported up"
                assert not store.degraded
                await store.ping()  # commands go through, nothing left refusing them
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await store.close()

        asyncio.run(body())
