"""``icegate relay run --mode userspace`` as a process on loopback, with a real redis-server.

A client socket, a stand-in transceiver socket (answers the first check, receives
Geneve) and the relay daemon: a session is routed by token, confirmed and cached in
Redis; SIGTERM stops the daemon cleanly; a restart with ``--preload`` forwards the
session's next packet at once, a restart without it recovers the flow on the slow path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import yaml
from click.testing import CliRunner

from controlplane.operator import cli
from icegate import geneve, inet
from icegate import token as tokens
from icegate.schema import Keys, Registration, RouteKeySet
from labkit import support
from labkit.support import REPO, Processes, RedisServer, free_port, wait_for
from tests.unit.test_cp_degraded import binding_request, binding_success

KEY = bytes(range(16, 32))
LOCAL = "127.0.0.1"


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.settimeout(3.0)
    return sock


def http_get(port: int, path: str) -> tuple[int, str]:
    return support.http_get(f"http://{LOCAL}:{port}{path}")


def metric(port: int, name: str) -> float:
    value = support.metric_sample(http_get(port, "/metrics")[1], name)
    if value is None:
        raise AssertionError(f"{name} not exported")
    return value


class Relay:
    def __init__(self, procs: Processes, config: Path, http_port: int) -> None:
        self.procs, self.config, self.http_port = procs, config, http_port
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, *flags: str) -> None:
        argv = [sys.executable, "-c", "from icegate.cli import main; main()", "relay", "run"]
        self.proc = self.procs.start([*argv, "--config", str(self.config), *flags], cwd=REPO, text=True)
        wait_for(
            lambda: http_get(self.http_port, "/readyz")[0] == 200 or self._died(), 10, what="relay ready"
        )
        assert http_get(self.http_port, "/readyz") == (200, "ready\n")

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited: {self.proc.communicate()[0]}")
        return False

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        output, _ = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, output
        return str(output)


def check_cli_over_http(config: Path, cport: int, vip_port: int) -> None:
    """The twin has no pinned maps: the operator CLI reads them from its /v1/state."""
    where = ["--config", str(config)]

    def run(group: Any, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(group, [args[0], *where, *args[1:]])
        assert result.exit_code == code, result.output
        return str(result.output)

    (flow,) = json.loads(run(cli.flows, "ls", "--json"))
    assert (flow["client"], flow["client_port"], flow["vip"], flow["vip_port"]) == (
        LOCAL,
        cport,
        LOCAL,
        vip_port,
    )
    assert (flow["backend"], flow["state"], flow["packets_in"]) == ("1:1", "confirmed", 1)
    status = json.loads(run(cli.relay, "status", "--json"))
    assert (status["mode"], status["attached"], status["control_plane"]) == ("userspace", [], "ready")
    assert (status["reason"], status["detail"]) == ("requested", "")
    assert "reason: requested" in run(cli.relay, "status")
    assert status["maps"]["flows"]["entries"] == 1 and status["maps"]["backends"]["entries"] == 1
    assert status["maps"]["route_keys"]["entries"] == 1
    (stat,) = json.loads(run(cli.stats, "--json"))["stats"]
    assert (stat["stat"], stat["packets"]) == ("FWD_FLOW", 1)
    assert "1:1" in run(cli.backends, "ls")
    assert "can read them over HTTP but not flush them" in run(cli.flows, "flush", "--yes", code=1)
    assert "runs the userspace twin: nothing is attached" in run(cli.relay, "detach", code=1)
    # Drain and undrain the running relay: the map's backend follows, readiness too.
    assert json.loads(run(cli.relay, "drain", "--json"))["draining"] is True
    (backend,) = json.loads(run(cli.backends, "ls", "--json"))
    assert (backend["map_state"], backend["redis_state"]) == ("draining", "active")
    assert json.loads(run(cli.relay, "status", "--json", code=1))["control_plane"].startswith("draining")
    assert run(cli.relay, "undrain").startswith("ready for new flows")
    (backend,) = json.loads(run(cli.backends, "ls", "--json"))
    assert (backend["map_state"], backend["redis_state"]) == ("active", "active")
    wait_for(
        lambda: json.loads(run(cli.relay, "status", "--json"))["control_plane"] == "ready", 5, what="ready"
    )


@dataclass
class Loop:
    """A relay process on loopback, a Redis region with one route key and transceiver 1:1
    (``tx``, a plain socket), and a client socket."""

    region: str
    vip_port: int
    tunnel_port: int
    http_port: int
    tx: socket.socket
    client: socket.socket
    r: redis_sync.Redis
    config: Path
    relay: Relay

    @property
    def keys(self) -> Keys:
        return Keys(self.region)


@pytest.fixture
def loop(procs: Processes, redis: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """``loop(name, **relay_fields)`` -> a :class:`Loop`; sockets and the client closed after."""
    made: list[Loop] = []

    def make(name: str, **fields: Any) -> Loop:
        region = f"{name}{os.getpid()}"
        vip_port, tunnel_port = free_port(kind=socket.SOCK_DGRAM), free_port(kind=socket.SOCK_DGRAM)
        http_port = free_port()
        tx, client = udp_socket(), udp_socket()
        r = redis_sync.Redis.from_url(redis.url)
        r.hset(Keys(region).route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
        reg = Registration(1, 1, LOCAL, tx.getsockname()[1], "http://tx", "active", 1)
        r.hset(Keys(region).transceiver(1, 1), mapping=reg.encode())
        config = tmp_path / f"{name}.yaml"
        section = {
            "name": name,
            "vips": [{"address": LOCAL, "port": vip_port}],
            "tunnel": {"address4": LOCAL, "port": tunnel_port},
            "redis": {"url": redis.url, "region": region},
            "http": {"address": LOCAL, "port": http_port},
            "sync_interval_s": 0.2,
            **fields,
        }
        config.write_text(yaml.safe_dump({"relay": section}))
        relay = Relay(procs, config, http_port)
        made.append(Loop(region, vip_port, tunnel_port, http_port, tx, client, r, config, relay))
        return made[-1]

    try:
        yield make
    finally:
        for world in made:
            world.tx.close()
            world.client.close()
            world.r.close()


def test_relay_run_userspace_restart_preload_and_recovery(loop: Any) -> None:
    world = loop("looptest", mode="userspace")
    keys, r, tx, client, relay, config = (
        world.keys,
        world.r,
        world.tx,
        world.client,
        world.relay,
        world.config,
    )
    vip_port, tunnel_port, http_port = world.vip_port, world.tunnel_port, world.http_port
    vip = (LOCAL, vip_port)
    cport = client.getsockname()[1]

    def transceiver_receives() -> bytes:
        """One Geneve datagram at the transceiver; returns the inner UDP payload."""
        data, sender = tx.recvfrom(4096)
        assert sender == (LOCAL, tunnel_port)
        _, inner = geneve.decapsulate(data)
        packet = inet.parse_udp(inner)
        assert (packet.src, packet.sport, packet.dst, packet.dport) == (LOCAL, cport, LOCAL, vip_port)
        return packet.payload

    relay.start()
    client.sendto(binding_request(tokens.mint(0, KEY, 1, 1)), vip)
    assert transceiver_receives()[:2] == b"\x00\x01"
    reply = geneve.encapsulate(inet.build_udp(LOCAL, vip_port, LOCAL, cport, binding_success()), vni=1)
    tx.sendto(reply, (LOCAL, tunnel_port))
    assert client.recvfrom(4096) == (binding_success(), vip)
    flow_key = keys.flow(LOCAL, vip_port, LOCAL, cport)
    wait_for(lambda: r.exists(flow_key), 5, what="flow in the Redis flow cache")
    log = relay.stop()
    assert "datapath mode=userspace reason=requested" in log and "relay stopping" in log

    relay.start("--preload")  # maps were in memory: --preload restores them before the sockets open
    assert metric(http_port, 'icegate_relay_map_entries{map="flows"}') == 1
    assert metric(http_port, 'icegate_relay_datapath_info{mode="userspace",reason="requested"}') == 1
    client.sendto(b"\x17\xfe\xfd" + b"preloaded", vip)
    assert transceiver_receives() == b"\x17\xfe\xfd" + b"preloaded"
    assert metric(http_port, 'icegate_relay_packets_total{reason="flow",verdict="forward"}') == 1
    check_cli_over_http(config, cport, vip_port)
    assert "preload flows_cached=1 installed=1" in relay.stop()

    relay.start("--log-json")  # cold: the first packet takes the slow path and is recovered
    client.sendto(b"\x17\xfe\xfd" + b"recovered", vip)
    assert transceiver_receives() == b"\x17\xfe\xfd" + b"recovered"
    assert metric(http_port, 'icegate_relay_packets_total{reason="no_flow",verdict="slow"}') == 1
    assert metric(http_port, 'icegate_relay_recoveries_total{result="recovered"}') == 1
    lines = [json.loads(line) for line in relay.stop().splitlines() if line.startswith("{")]
    assert any(entry["msg"].startswith("relay running name=looptest mode=userspace") for entry in lines)


def test_auto_falls_back_to_the_twin_where_xdp_cannot_load(loop: Any, tmp_path: Path) -> None:
    """``--mode auto`` on a host whose bpffs is not mounted: the twin runs, and the log,
    the metric and ``relay status`` say why; the operator CLI still reads its maps."""
    not_bpffs = tmp_path / "bpf"
    not_bpffs.mkdir()
    world = loop("autotest", mode="auto", interfaces=["lo"], bpffs=str(not_bpffs))
    relay, tx, client, http_port = world.relay, world.tx, world.client, world.http_port
    relay.start()
    assert metric(http_port, 'icegate_relay_datapath_info{mode="userspace",reason="xdp_unavailable"}') == 1
    wait_for(lambda: metric(http_port, 'icegate_relay_backends{state="active"}') == 1, 5, what="sync")
    client.sendto(binding_request(tokens.mint(0, KEY, 1, 1)), (LOCAL, world.vip_port))
    data, _ = tx.recvfrom(4096)
    assert inet.parse_udp(geneve.decapsulate(data)[1]).payload[:2] == b"\x00\x01"
    result = CliRunner().invoke(cli.relay, ["status", "--json", "--config", str(world.config)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["mode"], status["reason"]) == ("userspace", "xdp_unavailable")
    assert f"bpffs is not mounted at {not_bpffs}" in status["detail"]
    log = relay.stop()
    assert "datapath mode=userspace reason=xdp_unavailable error=bpffs is not mounted" in log
