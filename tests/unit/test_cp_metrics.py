"""/metrics, /livez and /readyz of a running service, checked against the traffic that was sent."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import RedisConfig, RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath.engine import Datapath
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import Backend, MemoryStore, Vip
from controlplane.node.metrics import ListCounters
from controlplane.node.service import RelayService, configure_maps, plan_vips
from icegate import token as tokens
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.support import RedisServer
from tests.unit.test_cp_degraded import VIP, binding_request, binding_success, returned

KEY = bytes(range(16))
FORGED = tokens.mint(0, bytes(16), 1, 1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_match_the_traffic(redis: RedisServer) -> None:
    region = f"metrics{os.getpid()}"
    keys = Keys(region)
    r = redis_sync.Redis.from_url(redis.url)
    for index, state in ((1, "active"), (2, "draining")):
        reg = Registration(1, index, f"10.70.0.1{index}", 6081, "http://tx", state, 1)
        r.hset(keys.transceiver(1, index), mapping=reg.encode())
    r.hset(keys.route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
    cfg = RelayConfig(
        name="metrics",
        vips=(VipConfig(*VIP),),
        tunnel=TunnelConfig(address4="10.70.0.1"),
        redis=RedisConfig(url=redis.url, region=region),
        limits=RelayLimits(max_flows=1024, max_pending=64),
    )
    maps = MemoryStore(max_flows=1024, max_pending=64)
    configure_maps(cfg, maps, cpus=1)
    maps.put_backend(Backend(1, 9, "10.70.0.19", 6081, BackendState.DEAD, 1))  # dead, kept for grace
    dp = Datapath(maps)
    running = [True]
    service = RelayService(
        cfg, maps, ListCounters(dp.counters), lambda: None if running[0] else "twin stopped", http_port=0
    )
    dp.on_event = service.flow_cache.record

    async def scenario() -> tuple[str, tuple[int, str], tuple[int, str]]:
        assert await service.connect(2.0)
        await service.start()
        sent: dict[Stat, list[int]] = {}

        def send(stat: Stat, result: Any, length: int) -> None:
            assert result.stat == stat, result
            entry = sent.setdefault(stat, [0, 0])
            entry[0] += 1
            entry[1] += length

        for i in range(5):  # five sessions: first check, confirmation, then DTLS both ways
            client = (f"100.64.1.{i + 1}", 40000)
            check = binding_request(tokens.mint(0, KEY, 1, 1))
            send(Stat.FWD_NEW_FLOW, dp.from_client(*client, *VIP, check), 28 + len(check))
            success = returned(client, binding_success())
            send(Stat.FWD_CONFIRM, dp.from_backend("10.70.0.11", success), 28 + len(success))
            for _ in range(3):
                dtls = b"\x17\xfe\xfd" + bytes(97)
                send(Stat.FWD_FLOW, dp.from_client(*client, *VIP, dtls), 28 + len(dtls))
                back = returned(client, dtls)
                send(Stat.FWD_RETURN, dp.from_backend("10.70.0.11", back), 28 + len(back))
        pending_check = binding_request(tokens.mint(0, KEY, 1, 1))
        send(Stat.FWD_NEW_FLOW, dp.from_client("100.64.2.1", 1, *VIP, pending_check), 28 + len(pending_check))
        for i in range(7):
            forged = binding_request(FORGED)
            send(Stat.DROP_TOKEN_MAC, dp.from_client(f"100.64.3.{i}", 1, *VIP, forged), 28 + len(forged))
        draining = binding_request(tokens.mint(0, KEY, 1, 2))
        send(Stat.DROP_BACKEND_DRAINING, dp.from_client("100.64.4.1", 1, *VIP, draining), 28 + len(draining))
        await service.recovery.recover("100.64.5.5", 5, *VIP)  # nothing cached: a miss

        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.http.port}"
            async with http.get(f"{base}/metrics") as reply:
                assert reply.status == 200 and reply.content_type == "text/plain"
                text = await reply.text()
            async with http.get(f"{base}/readyz") as reply:
                ready = (reply.status, await reply.text())
            running[0] = False
            async with http.get(f"{base}/readyz") as reply:
                not_ready = (reply.status, await reply.text())
            async with http.get(f"{base}/livez") as reply:
                assert reply.status == 200
            async with http.get(f"{base}/nothing-here") as reply:
                assert reply.status == 404
            async with http.get(f"{base}/metrics") as reply:  # the responses above, by status
                counted = samples(await reply.text())
            assert (
                counted[("icegate_relay_http_responses_total", (("code", "200"), ("path", "/readyz")))] == 1
            )
            assert (
                counted[("icegate_relay_http_responses_total", (("code", "503"), ("path", "/readyz")))] == 1
            )
            assert (
                counted[("icegate_relay_http_responses_total", (("code", "404"), ("path", "unmatched")))] == 1
            )
        await service.stop()
        expected.update({s: tuple(v) for s, v in sent.items()})
        return text, ready, not_ready

    expected: dict[Stat, tuple[int, ...]] = {}
    text, ready, not_ready = asyncio.run(scenario())
    r.close()
    assert ready == (200, "ready\n")
    assert not_ready == (503, "datapath: twin stopped\n")
    values = samples(text)
    for stat in Stat:
        labels = (("reason", stat.reason), ("verdict", stat.verdict.name.lower()))
        packets, octets = expected.get(stat, (0, 0))
        assert values[("icegate_relay_packets_total", labels)] == packets, stat
        assert values[("icegate_relay_bytes_total", labels)] == octets, stat
    assert values[("icegate_relay_map_entries", (("map", "flows"),))] == 5
    assert values[("icegate_relay_map_entries", (("map", "pending"),))] == 1
    assert values[("icegate_relay_map_capacity", (("map", "flows"),))] == 1024
    assert values[("icegate_relay_map_capacity", (("map", "pending"),))] == 64
    assert values[("icegate_relay_map_entries", (("map", "route_keys"),))] == 1
    by_state = {
        s: values[("icegate_relay_backends", (("state", s),))] for s in ("active", "draining", "dead")
    }
    assert by_state == {"active": 1, "draining": 1, "dead": 1}
    assert values[("icegate_relay_flow_cache_events_total", ())] == 5
    assert values[("icegate_relay_recoveries_total", (("result", "miss"),))] == 1
    assert values[("icegate_relay_redis_up", ())] == 1
    assert 0 <= values[("icegate_relay_sync_lag_seconds", ())] < 1
    assert values[("icegate_relay_datapath_up", ())] == 1
    # issue 16: every component also exports process_* and icegate_build_info
    assert values[("process_start_time_seconds", ())] > 0 and values[("process_open_fds", ())] > 0
    build = [labels for name, labels in values if name == "icegate_build_info"]
    assert len(build) == 1 and ("component", "relay") in build[0]
    for name in {n for n, _ in values}:
        assert name.startswith(("icegate_relay_", "process_", "icegate_build_info")), name


def test_vip_indices_stay_stable_across_config_changes() -> None:
    cfg = RelayConfig(
        name="x", vips=(VipConfig("192.0.2.11"), VipConfig("192.0.2.10")), tunnel=TunnelConfig("10.70.0.1")
    )
    current = [Vip("192.0.2.10", 3478, 0), Vip("192.0.2.12", 3478, 1)]
    assert plan_vips(cfg, current) == [Vip("192.0.2.11", 3478, 1), Vip("192.0.2.10", 3478, 0)]


class _BehindXdp:
    """What ``XdpRunner`` offers the collector: the program's counters and the slow path's."""

    def __init__(self, kernel: ListCounters, slow: ListCounters) -> None:
        self.kernel, self.slow = kernel, slow

    def counters(self) -> list[tuple[int, int]]:
        return list(self.kernel.counters())

    def slow_path(self) -> ListCounters:
        return self.slow


def test_the_slow_paths_own_verdicts_are_exported() -> None:
    """Issue 12, finding 4: behind XDP, what the slow path did with what the program passed up."""
    from prometheus_client import CollectorRegistry, generate_latest

    from controlplane.node.metrics import RelayCollector

    maps = MemoryStore()
    maps.set_vips([Vip(*VIP, 0)])
    slow = Datapath(maps, charge_slow=False)
    slow.from_client("100.64.1.2", 40000, VIP[0], VIP[1], bytes([22, 0xFE, 0xFD]) + bytes(20))
    registry = CollectorRegistry(auto_describe=False)
    kernel = ListCounters([[0, 0] for _ in Stat])
    registry.register(RelayCollector(maps, _BehindXdp(kernel, ListCounters(slow.counters)), RelayLimits()))
    found = samples(generate_latest(registry).decode())
    key = ("icegate_relay_slow_path_packets_total", (("reason", "no_flow"), ("verdict", "slow")))
    assert found[key] == 1


class _NexthopSource(_BehindXdp):
    """``XdpRunner`` also offers the next-hop cache's counters (hit, miss, stale)."""

    def nexthop_stats(self) -> list[int]:
        return [7, 2, 1]


def test_the_nexthop_cache_counters_are_exported() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from controlplane.node.metrics import RelayCollector

    registry = CollectorRegistry(auto_describe=False)
    kernel = ListCounters([[0, 0] for _ in Stat])
    registry.register(RelayCollector(MemoryStore(), _NexthopSource(kernel, kernel), RelayLimits()))
    found = samples(generate_latest(registry).decode())
    name = "icegate_relay_nexthop_cache_lookups_total"
    assert {labels: v for (n, labels), v in found.items() if n == name} == {
        (("result", "hit"),): 7,
        (("result", "miss"),): 2,
        (("result", "stale"),): 1,
    }


def test_no_nexthop_metric_without_a_program() -> None:
    """The twin has no next-hop cache: no family, rather than zeros that look like one."""
    from prometheus_client import CollectorRegistry, generate_latest

    from controlplane.node.metrics import RelayCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(MemoryStore(), ListCounters([[0, 0] for _ in Stat]), RelayLimits()))
    assert "nexthop_cache" not in generate_latest(registry).decode()
