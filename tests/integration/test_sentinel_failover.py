"""Redis high availability: the relay on a Sentinel URL while the primary fails over mid-stream.

Real parts: a primary, a replica and a ``redis-sentinel`` in the lab's ``dc`` namespace; the
XDP relay configured with ``redis+sentinel://<sentinel>/<service>``; the stand-in transceiver
and client streams of ``test_controlplane_recovery`` (their sessions go through the VIP).
The primary is SIGKILLed while a session streams; during the failover a second session
starts (its flow-cache write can only be queued). Then:

- forwarding never stopped: the first session lost nothing while Redis had no primary;
- the new primary (the promoted replica) holds both sessions' flows: no write was lost;
- recovery works against it: the relay's flows are flushed and come back from Redis on
  their next packets.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from icegate import netns
from icegate.config import load
from icegate.schema import Keys
from labkit.lab import Lab, LabConfig
from labkit.lab.kernel import redis_server_argv
from labkit.support import Processes, RedisServer, wait_for
from tests.integration.test_controlplane_recovery import (
    PPS,
    REDIS_PORT,
    EchoTransceiver,
    RelayProcess,
    World,
)
from transceiver.config import TransceiverConfig
from transceiver.registry import Registry

SERVICE = "icgsvc"
REPLICA_PORT = REDIS_PORT + 1
SENTINEL_PORT = 26390
DOWN_AFTER_MS = 1000


class SentinelEcho(EchoTransceiver):
    """The stand-in transceiver, heartbeating through Sentinel (as a real one does with a
    ``redis+sentinel://`` ``redis_url``)."""

    def __init__(self, *args: object, sentinel: tuple[str, int]) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.sentinel = sentinel
        self._primary: redis_sync.Redis | None = None

    def heartbeat(self, r: redis_sync.Redis) -> None:
        if self._primary is None:
            from redis.sentinel import Sentinel

            kw = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
            self._primary = Sentinel([self.sentinel], sentinel_kwargs=kw, **kw).master_for(SERVICE, **kw)
        super().heartbeat(self._primary)


def cli(ns: str, port: int, *args: str) -> str:
    return netns.run(ns, ["redis-cli", "-h", "10.70.0.100", "-p", str(port), *args], check=False).strip()


@pytest.fixture
def ha_world(ns_prefix: str, procs: Processes, tmp_path: Path) -> Iterator[tuple[World, dict[str, object]]]:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), transceivers=LabConfig().transceivers[:1]))
    lab.up()
    dc = lab.namespace("dc")
    host = lab.config.private.redis_address
    try:
        # A full resync writes an RDB file even without --save: into tmp_path, not the cwd.
        dirs = {name: tmp_path / name for name in ("primary", "replica")}
        for folder in dirs.values():
            folder.mkdir()
        primary = procs.start(
            redis_server_argv(host, REDIS_PORT, loglevel="warning", directory=str(dirs["primary"])), ns=dc
        )
        replica = procs.start(
            [
                *redis_server_argv(host, REPLICA_PORT, loglevel="warning", directory=str(dirs["replica"])),
                "--replicaof",
                host,
                str(REDIS_PORT),
            ],
            ns=dc,
        )
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {SENTINEL_PORT}\nbind {host}\ndir {tmp_path}\n"
            f"sentinel monitor {SERVICE} {host} {REDIS_PORT} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        sentinel = procs.start(["redis-sentinel", str(conf)], ns=dc, stdout=subprocess.DEVNULL)
        wait_for(lambda: cli(dc, REPLICA_PORT, "info", "replication").count("master_link_status:up"), 10,
                 what="the replica in sync")  # fmt: skip
        wait_for(lambda: str(REPLICA_PORT) in cli(dc, SENTINEL_PORT, "sentinel", "replicas", SERVICE), 15,
                 what="sentinel to know the replica")  # fmt: skip
        url = f"redis+sentinel://{host}:{SENTINEL_PORT}/{SERVICE}"
        overrides = {"mode": "xdp", "redis.url": url, "sync_interval_s": 0.2}
        overrides |= {"redis.timeout_s": 0.2, "redis.retry_min_s": 0.05, "redis.retry_max_s": 0.3}
        config = lab.write_relay_config(overrides)
        tx_settings = lab.transceiver(1)
        region = lab.config.region
        plain = f"redis://{host}:{REDIS_PORT}/0"
        tx = SentinelEcho(
            tx_settings.namespace, tx_settings.address, (tx_settings.relay_tunnel, 6081), plain, region,
            sentinel=(host, SENTINEL_PORT),
        )  # fmt: skip
        world = World(lab, RelayProcess(lab, procs, config, "xdp"), RedisServer(host, REDIS_PORT, primary),
                      Keys(region), tx)  # fmt: skip
        world.write_route_keys()
        tx.start()
        try:
            yield world, {"primary": primary, "replica": replica, "sentinel": sentinel, "dc": dc}
        finally:
            tx.stop()
    finally:
        lab.down()


def flows_in(dc: str, port: int, keys: Keys) -> int:
    with netns.entered(dc):
        r = redis_sync.Redis(host="10.70.0.100", port=port, socket_timeout=1)
        try:
            return len(r.keys(f"{keys.base}:flow:*"))
        finally:
            r.close()


def test_primary_fails_over_mid_stream(ha_world: tuple[World, dict[str, object]]) -> None:
    world, parts = ha_world
    dc = str(parts["dc"])
    relay = world.relay
    relay.start()
    wait_for(world.ready, 15, what="relay ready through Sentinel")
    first = world.stream("c1")
    wait_for(lambda: flows_in(dc, REDIS_PORT, world.keys) == 1, 5, what="the first flow cached")
    time.sleep(0.5)

    primary = parts["primary"]
    assert isinstance(primary, subprocess.Popen)
    sent_before = first.sent
    killed = time.monotonic()
    primary.kill()  # SIGKILL: no goodbye to the sentinel or the replica
    second = world.stream("c2")  # a new session while there is no primary: its write is queued

    def promoted() -> bool:
        primary_now = cli(dc, SENTINEL_PORT, "sentinel", "get-master-addr-by-name", SERVICE)
        return primary_now.endswith(str(REPLICA_PORT))

    promoted_s = wait_for(
        lambda: promoted() and time.monotonic() - killed,
        20, interval=0.05, what="sentinel to promote the replica",
    )  # fmt: skip
    ready_s = wait_for(lambda: world.ready() and time.monotonic() - killed, 20, interval=0.05,
                       what="relay ready on the new primary")  # fmt: skip
    wait_for(lambda: flows_in(dc, REPLICA_PORT, world.keys) == 2, 10, what="both flows on the new primary")
    time.sleep(0.5)
    # Forwarding never waited for Redis: nothing sent during the failover went missing.
    settled = first.sent - PPS // 5  # echoes of the last 200 ms may still be in flight
    lost = [s for s in range(sent_before, settled) if s not in first.seen]
    assert settled - sent_before > PPS * 1.0 and lost == [], f"lost {len(lost)} of {settled - sent_before}"

    # Recovery against the new primary: the maps are flushed, flows come back from Redis.
    before = relay.metric('icegate_relay_recoveries_total{result="recovered"}')
    relay.icegate("flows", "flush", "--config", str(relay.config), "--yes")
    wait_for(lambda: relay.metric('icegate_relay_recoveries_total{result="recovered"}') >= before + 2, 10,
             what="both flows recovered from the new primary")  # fmt: skip
    time.sleep(0.5)
    first.stop()
    second.stop()
    after_flush = first.report()
    print(
        f"\nsentinel failover: promoted after {promoted_s:.2f} s, relay ready after {ready_s:.2f} s, "
        f"0 of {settled - sent_before} packets lost during it; flows on the new primary 2/2; "
        f"after a flush: lost {after_flush.lost} (longest gap {after_flush.longest_gap} packets at {PPS} pps)"
    )
    assert second.report().echoed > 0

    # A transceiver on the same Sentinel URL registers into the new primary.
    registered = beat_through_sentinel(dc, f"redis+sentinel://10.70.0.100:{SENTINEL_PORT}/{SERVICE}")
    assert registered, "the transceiver's registration is not on the new primary"


def beat_through_sentinel(dc: str, url: str) -> bool:
    cfg = load(TransceiverConfig, None, "transceiver", {
        "cluster": 4, "index": 9, "region": "sentinel", "relays": [{"address": "192.0.2.10"}],
        "redis_url": url, "tunnel_advertise": "10.70.0.11", "signaling_url": "http://10.70.0.11:8080",
    })  # fmt: skip

    async def beat() -> None:
        registry = Registry(cfg, sessions=lambda: 0, on_drain=lambda: None)
        try:
            await registry.beat()
        finally:
            await registry.stop(deregister=False)

    with netns.entered(dc):
        asyncio.run(beat())
        r = redis_sync.Redis(host="10.70.0.100", port=REPLICA_PORT, socket_timeout=1)
        try:
            return bool(r.exists(Keys("sentinel").transceiver(4, 9)))
        finally:
            r.close()
