"""Draining a relay node: readiness, new flows refused through every sync, empty when idle.

Real redis-server and the real ClusterSync; the datapath is a MemoryStore (the XDP side of
a drain is the backends map's DRAINING state, which tests/bpf covers for transceivers).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.registry import CollectorRegistry

from controlplane.cluster.sync import ClusterSync
from controlplane.config import RelayLimits
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Flow, MemoryStore
from controlplane.node.drain import Drain
from controlplane.node.http import HttpServer, make_app
from controlplane.node.metrics import ControlPlane, RelayCollector
from controlplane.operator import cli
from icegate.schema import Keys
from labkit.support import RedisServer
from tests.unit.test_cp_sync import reg, region, register, state_of, until, with_sync

RELAY_YAML = """
relay:
  name: edge1
  vips: [{{address: 192.0.2.10}}]
  tunnel: {{address4: 10.70.0.1}}
  http: {{address: 127.0.0.1, port: {port}}}
"""
KEY_LIVE = (bytes(12) + bytes([100, 64, 1, 2]), 40000, 0)
KEY_IDLE = (bytes(12) + bytes([100, 64, 1, 3]), 40001, 0)


class NoCounters:
    def counters(self) -> list[tuple[int, int]]:
        return []


def flow(last_seen_ns: int) -> Flow:
    return Flow(1, 1, 7, created_ns=0, last_seen_ns=last_seen_ns)


def test_drain_holds_backends_draining_through_sync(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)

    async def body(sync: ClusterSync, r: object) -> None:
        register(r, keys, reg(1, 1))  # type: ignore[arg-type]
        await until(lambda: state_of(sync, 1, 1) == BackendState.ACTIVE)
        drain = Drain(sync.maps)
        sync.adjust = drain.adjust
        drain.start()
        assert state_of(sync, 1, 1) == BackendState.DRAINING  # at once, without Redis
        register(r, keys, reg(1, 2))  # type: ignore[arg-type]
        await until(lambda: state_of(sync, 1, 2) == BackendState.DRAINING)
        await sync.reconcile()  # Redis still says active: the node holds them draining
        assert state_of(sync, 1, 1) == state_of(sync, 1, 2) == BackendState.DRAINING
        register(r, keys, reg(1, 1, state="draining"))  # type: ignore[arg-type]
        await sync.reconcile()
        assert state_of(sync, 1, 1) == BackendState.DRAINING

    asyncio.run(with_sync(redis, name, body))


def test_undrain_restores_what_the_drain_held_and_redis_keeps_the_last_word(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)

    async def body(sync: ClusterSync, r: object) -> None:
        register(r, keys, reg(1, 1))  # type: ignore[arg-type]
        register(r, keys, reg(1, 2))  # type: ignore[arg-type]
        await until(lambda: state_of(sync, 1, 1) == state_of(sync, 1, 2) == BackendState.ACTIVE)
        drain = Drain(sync.maps)
        sync.adjust = drain.adjust
        drain.start()
        assert state_of(sync, 1, 1) == state_of(sync, 1, 2) == BackendState.DRAINING
        register(r, keys, reg(1, 2, state="draining"))  # the transceiver drains itself meanwhile
        await sync.reconcile()
        assert drain.stop() == 1  # only 1:1: 1:2 is draining by Redis's word, not the node's
        assert (state_of(sync, 1, 1), state_of(sync, 1, 2)) == (BackendState.ACTIVE, BackendState.DRAINING)
        assert not drain.draining and drain.problem() is None
        await sync.reconcile()  # what the service runs after an undrain: no change left to make
        assert (state_of(sync, 1, 1), state_of(sync, 1, 2)) == (BackendState.ACTIVE, BackendState.DRAINING)
        assert drain.stop() == 0  # idempotent

    asyncio.run(with_sync(redis, name, body))


def test_empty_once_no_flow_carries_packets_then_idle_flows_are_removed() -> None:
    now = [10_000_000_000]
    maps = MemoryStore()
    drain = Drain(maps, clock_ns=lambda: now[0])
    maps.put_flow(KEY_LIVE, flow(now[0] - 100_000_000))
    maps.put_flow(KEY_IDLE, flow(now[0] - 9_000_000_000))
    before = drain.report(5.0)
    assert (before.draining, before.flows, before.live, before.empty) == (False, 2, 1, False)
    assert maps.get_flow(KEY_IDLE) is not None  # nothing removed outside a drain
    drain.start()
    assert drain.problem() is not None
    during = drain.report(5.0)
    assert (during.flows, during.live, during.removed, during.empty) == (1, 1, 1, False)
    now[0] += 6_000_000_000
    after = drain.report(5.0)
    assert (after.flows, after.live, after.removed, after.empty) == (0, 0, 2, True)
    assert list(maps.flows()) == []


def test_drain_endpoint_post_starts_delete_ends_get_reports(tmp_path: Path) -> None:
    async def main() -> None:
        maps = MemoryStore()
        drain = Drain(maps)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            RelayCollector(maps, NoCounters(), RelayLimits(), ControlPlane(draining=lambda: drain.draining))
        )
        server = HttpServer(
            make_app(registry, lambda: [p for p in [drain.problem()] if p], None, drain.handle),
            "127.0.0.1",
            0,
        )
        await server.start()
        base = f"http://127.0.0.1:{server.port}"

        def fetch(path: str, method: str = "GET") -> tuple[int, str]:
            request = urllib.request.Request(
                base + path, method=method, data=b"" if method != "GET" else None
            )
            try:
                with urllib.request.urlopen(request, timeout=3) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        try:
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, fetch, "/readyz"))[0] == 200
            status, body = await loop.run_in_executor(None, fetch, "/v1/drain")
            assert status == 200 and json.loads(body)["draining"] is False
            status, body = await loop.run_in_executor(None, fetch, "/v1/drain?idle_s=1", "POST")
            started = json.loads(body) | {"since_s": 0}
            assert status == 200 and started == {
                "draining": True, "since_s": 0, "flows": 0, "live": 0,
                "idle_s": 1.0, "removed": 0, "empty": True,
            }  # fmt: skip
            status, body = await loop.run_in_executor(None, fetch, "/readyz")
            assert status == 503 and "draining" in body
            assert "icegate_relay_draining 1.0" in (await loop.run_in_executor(None, fetch, "/metrics"))[1]
            assert (await loop.run_in_executor(None, fetch, "/v1/drain?idle_s=x"))[0] == 400
            # The CLI, with a config naming this endpoint: undrain, then drain again.
            config = tmp_path / "relay.yaml"
            config.write_text(RELAY_YAML.format(port=server.port))
            undrain = await loop.run_in_executor(
                None, CliRunner().invoke, cli.relay, ["undrain", "--config", str(config), "--json"]
            )
            assert undrain.exit_code == 0, undrain.output
            assert json.loads(undrain.output)["draining"] is False and not drain.draining
            assert (await loop.run_in_executor(None, fetch, "/readyz"))[0] == 200
            text = await loop.run_in_executor(
                None, CliRunner().invoke, cli.relay, ["undrain", "--config", str(config)]
            )
            assert text.exit_code == 0 and text.output.startswith("ready for new flows")
            again = await loop.run_in_executor(
                None, CliRunner().invoke, cli.relay, ["drain", "--config", str(config), "--json"]
            )
            assert again.exit_code == 0 and json.loads(again.output)["draining"] is True
        finally:
            await server.stop()

    asyncio.run(main())
