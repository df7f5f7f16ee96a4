"""The control plane under a live packet stream, in the lab's network namespaces.

A client in ``c1`` holds a session through the relay's VIP to a stand-in transceiver in
``tx1`` (it answers the first STUN check and echoes everything else back through the
relay) and streams sequence-numbered DTLS-like packets. Meanwhile the test restarts the
control plane, throws the maps away, or stops Redis, and counts what the echo lost.

- Redis outage: forwarding unaffected (0 lost), new sessions still route by token,
  /readyz degraded; everything reconciled when Redis returns.
- Cold start (the relay process and its state gone): flows come back from the Redis
  flow cache on their first packet; the gap is the time the relay was down.
- XDP: a control-plane restart loses nothing (program attached, maps pinned).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from icegate import geneve, inet, netns, stun
from icegate import token as tokens
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.lab import Lab, LabConfig
from labkit.support import REPO, Processes, RedisServer, http_get, metric_sample, redis_server, wait_for

KEY = bytes(range(32, 48))
REDIS_PORT = 6380  # our own redis-server in the lab's dc namespace, so the test can stop it
HTTP_PORT = 9610
PPS = 400


# ---------------------------------------------------------------- peers
def binding_request(ufrag: str, tid: bytes) -> bytes:
    username = f"{ufrag}:cli1".encode()
    attr = struct.pack("!HH", stun.ATTR_USERNAME, len(username)) + username + b"\0" * (-len(username) % 4)
    return struct.pack("!HHI12s", stun.BINDING_REQUEST, len(attr), stun.COOKIE, tid) + attr


def binding_success(tid: bytes) -> bytes:
    return struct.pack("!HHI12s", stun.BINDING_SUCCESS, 0, stun.COOKIE, tid)


class Peer(threading.Thread):
    """A thread that lives in one network namespace (its sockets are created there)."""

    def __init__(self, namespace: str) -> None:
        super().__init__(daemon=True)
        self.namespace = namespace
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with netns.entered(self.namespace):
                self.body()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def body(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        if self.error is not None:
            raise AssertionError(f"{type(self).__name__} failed") from self.error


class EchoTransceiver(Peer):
    """Answers binding requests, echoes the rest; heartbeats its registration while Redis answers."""

    def __init__(
        self, namespace: str, address: str, relay_tunnel: tuple[str, int], redis_url: str, region: str
    ):
        super().__init__(namespace)
        self.address, self.relay_tunnel, self.redis_url = address, relay_tunnel, redis_url
        self.keys = Keys(region)
        self.received = 0
        self.generation = int(time.time() * 1000)  # as transceiver/registry.py: ms, past 32 bits

    def body(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.address, 6081))
        sock.settimeout(0.05)
        r = redis_sync.Redis.from_url(self.redis_url, socket_timeout=0.2, socket_connect_timeout=0.2)
        next_beat = 0.0
        while not self.stopping.is_set():
            if time.monotonic() >= next_beat:
                self.heartbeat(r)
                next_beat = time.monotonic() + 0.3
            try:
                data, _ = sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received += 1
            _, inner = geneve.decapsulate(data)
            packet = inet.parse_udp(inner)
            reply = packet.payload
            if stun.is_stun(reply) and stun.message_type(reply) == stun.BINDING_REQUEST:
                reply = binding_success(reply[8:20])
            back = inet.build_udp(packet.dst, packet.dport, packet.src, packet.sport, reply)
            sock.sendto(geneve.encapsulate(back, vni=1), self.relay_tunnel)
        sock.close()
        r.close()

    def heartbeat(self, r: redis_sync.Redis) -> None:
        name = self.keys.transceiver(1, 1)
        reg = Registration(1, 1, self.address, 6081, "http://tx1", "active", self.generation)
        try:
            with r.pipeline(transaction=False) as pipe:
                pipe.hset(name, mapping=reg.encode())
                pipe.pexpire(name, 3000)
                pipe.publish(self.keys.transceiver_events, "1:1")
                pipe.execute()
        except (redis_sync.RedisError, OSError):
            pass  # Redis down: keep echoing, try again at the next beat


@dataclass
class StreamReport:
    sent: int = 0
    echoed: int = 0
    missing: list[int] = field(default_factory=list)
    longest_gap: int = 0

    @property
    def lost(self) -> int:
        return self.sent - self.echoed


class ClientStream(Peer):
    """One session: first check until answered, then ``PPS`` sequence-numbered packets, echoes counted."""

    def __init__(self, namespace: str, address: str, vip: tuple[str, int], ufrag: str):
        super().__init__(namespace)
        self.address, self.vip, self.ufrag = address, vip, ufrag
        self.connected = threading.Event()
        self.sent = 0
        self.seen: set[int] = set()
        self.port = 0

    def body(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.address, 0))
        self.port = sock.getsockname()[1]
        sock.settimeout(0.2)
        tid = os.urandom(12)
        deadline = time.monotonic() + 10
        while not self.connected.is_set():
            assert time.monotonic() < deadline, "the first check was never answered"
            sock.sendto(binding_request(self.ufrag, tid), self.vip)
            try:
                data, _ = sock.recvfrom(4096)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if data == binding_success(tid):
                self.connected.set()
        sock.setblocking(False)
        interval = 1.0 / PPS
        next_send = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_send:
                sock.sendto(b"\x17\xfe\xfd" + struct.pack("!Q", self.sent) + bytes(80), self.vip)
                self.sent += 1
                next_send += interval
            self._drain(sock)
            time.sleep(min(interval, max(0.0, next_send - time.monotonic())))
        end = time.monotonic() + 0.5  # late echoes
        while time.monotonic() < end:
            self._drain(sock)
            time.sleep(0.01)
        sock.close()

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if data[:3] == b"\x17\xfe\xfd" and len(data) >= 11:
                self.seen.add(struct.unpack_from("!Q", data, 3)[0])

    def report(self) -> StreamReport:
        missing = [seq for seq in range(self.sent) if seq not in self.seen]
        longest = run = 0
        for prev, seq in zip([None, *missing], missing, strict=False):
            run = run + 1 if prev is not None and seq == prev + 1 else 1
            longest = max(longest, run)
        return StreamReport(self.sent, len(self.seen), missing, longest)


# ---------------------------------------------------------------- the relay process
@dataclass
class RelayProcess:
    lab: Lab
    procs: Processes
    config: Path
    mode: str
    proc: subprocess.Popen[Any] | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.lab.config.relay_name

    def start(self, *flags: str) -> None:
        argv = [sys.executable, "-c", "from icegate.cli import main; main()", "relay", "run"]
        self.proc = self.procs.start(
            [*argv, "--config", str(self.config), *flags], ns=self.lab.namespace("relay"), cwd=REPO, text=True
        )
        wait_for(lambda: self.http("/livez")[0] == 200 or self._exited(), 15, what="relay /livez")

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"relay exited: {self.proc.communicate()[0]}")
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        output, _ = self.proc.communicate(timeout=15)
        self.logs.append(str(output))
        if sig == signal.SIGTERM:
            assert self.proc.returncode == 0, output

    def http(self, path: str) -> tuple[int, str]:
        with netns.entered(self.lab.namespace("relay")):
            return http_get(f"http://127.0.0.1:{HTTP_PORT}{path}")

    def icegate(self, *args: str) -> str:
        """The CLI inside the relay's namespace (XDP attachments are per namespace; pins are not)."""
        argv = [sys.executable, "-c", "from icegate.cli import main; main()", *args]
        return netns.run(self.lab.namespace("relay"), argv, timeout=30)

    def metric(self, sample: str, default: float | None = None) -> float:
        """A sample of /metrics; a missing one fails the test unless a default is given."""
        value = metric_sample(self.http("/metrics")[1], sample)
        if value is None:
            if default is None:
                raise AssertionError(f"{sample} is not exported")
            return default
        return value


def host_status(relay: RelayProcess) -> dict[str, Any]:
    """`icegate relay status --json` run from the host's namespace, as an operator on the node would."""
    argv = [sys.executable, "-c", "from icegate.cli import main; main()", "relay", "status", "--json"]
    done = subprocess.run([*argv, "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
    status: dict[str, Any] = json.loads(done.stdout)
    status["returncode"] = done.returncode
    return status


@dataclass
class World:
    lab: Lab
    relay: RelayProcess
    redis: RedisServer
    keys: Keys
    tx: EchoTransceiver

    def ready(self) -> bool:
        return self.relay.http("/readyz")[0] == 200

    def stream(self, client: str = "c1") -> ClientStream:
        settings = {c.name: c for c in self.lab.clients()}[client]
        ufrag = tokens.mint(0, KEY, 1, 1)
        stream = ClientStream(settings.namespace, settings.address, self.lab.vips[0], ufrag)
        stream.start()
        assert stream.connected.wait(10), "session did not connect"
        return stream

    def cached_session(self) -> ClientStream:
        """Start the relay and one session streaming through it; wait until the flow cache has it."""
        self.relay.start()
        wait_for(self.ready, 10, what="relay ready")
        stream = self.stream()
        wait_for(lambda: self.cached_flows() == 1, 5, what="the session in the flow cache")
        time.sleep(0.3)
        return stream

    def write_route_keys(self) -> None:
        with netns.entered(self.lab.namespace("dc")):
            r = redis_sync.Redis(host=self.redis.host, port=self.redis.port)
            r.hset(self.keys.route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
            r.close()

    def cached_flows(self) -> int:
        with netns.entered(self.lab.namespace("dc")):
            r = redis_sync.Redis(host=self.redis.host, port=self.redis.port)
            try:
                return len(r.keys(f"{self.keys.base}:flow:*"))
            finally:
                r.close()


@pytest.fixture(params=["userspace", "xdp"])
def world(request: pytest.FixtureRequest, ns_prefix: str, procs: Processes) -> Iterator[World]:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), transceivers=LabConfig().transceivers[:1]))
    lab.up()
    try:
        with redis_server(
            procs, host=lab.config.private.redis_address, port=REDIS_PORT, ns=lab.namespace("dc")
        ) as rs:
            region = lab.config.region
            url = f"redis://{rs.host}:{rs.port}/0"
            overrides = {"mode": request.param, "redis.url": url, "sync_interval_s": 0.2}
            overrides |= {"redis.timeout_s": 0.2, "redis.retry_min_s": 0.05, "redis.retry_max_s": 0.3}
            config = lab.write_relay_config(overrides)
            tx_settings = lab.transceiver(1)
            tx = EchoTransceiver(
                tx_settings.namespace, tx_settings.address, (tx_settings.relay_tunnel, 6081), url, region
            )
            world = World(lab, RelayProcess(lab, procs, config, request.param), rs, Keys(region), tx)
            world.write_route_keys()
            tx.start()
            try:
                yield world
            finally:
                tx.stop()
    finally:
        lab.down()


def test_redis_outage_does_not_touch_forwarding(world: World) -> None:
    relay = world.relay
    stream = world.cached_session()

    world.relay.procs.stop(world.redis.proc)  # Redis goes away mid-stream
    wait_for(lambda: relay.http("/readyz")[0] == 503, 5, what="readiness degraded")
    body = relay.http("/readyz")[1]
    assert body.startswith("redis: degraded"), body
    assert relay.metric("icegate_relay_redis_up") == 0
    assert relay.http("/livez")[0] == 200
    if relay.mode != "userspace":  # issue 16: `relay status` from the host sees the relay's namespace
        status = host_status(relay)
        assert status["returncode"] == 1 and status["control_plane"].startswith("redis: degraded")
        assert status["netns"] == world.lab.namespace("relay")
    mode = "userspace" if relay.mode == "userspace" else "xdp-native"  # veth in the lab: native XDP
    reason = "requested" if mode == "userspace" else "attached"
    assert relay.metric(f'icegate_relay_datapath_info{{mode="{mode}",reason="{reason}"}}') == 1
    second = world.stream("c2")  # a new session routes by token while Redis is down
    time.sleep(1.0)

    with redis_server(
        world.relay.procs, host=world.redis.host, port=world.redis.port, ns=world.lab.namespace("dc")
    ):
        world.write_route_keys()
        wait_for(world.ready, 10, what="ready again after Redis returned")
        wait_for(lambda: world.cached_flows() >= 1, 5, what="queued flow-cache write flushed")
        time.sleep(0.3)
        stream.stop()
        second.stop()
        assert relay.metric("icegate_relay_redis_up") == 1
        assert relay.metric("icegate_relay_redis_restores_total") == 2
        if relay.mode != "userspace":
            status = host_status(relay)
            assert (status["returncode"], status["control_plane"], status["healthy"]) == (0, "ready", True)

        # issue 16: nothing changes in Redis, so sync writes nothing (the map's 32-bit
        # generation once made every reconciliation rewrite every backend)
        # (the route keys written above may still land: wait for a quiet window of four
        # sync intervals; the bug never gave one, changing ~7 times a second)
        def quiet() -> bool:
            before = relay.metric("icegate_relay_sync_changes_total")
            time.sleep(2.0)
            return relay.metric("icegate_relay_sync_changes_total") == before

        wait_for(quiet, 10, what="no sync changes while Redis is unchanged")
        relay.stop()
    report, report2 = stream.report(), second.report()
    print(f"redis outage: sent={report.sent} lost={report.lost}; new session {report2.sent}/{report2.lost}")
    assert report.sent > PPS and report.lost == 0, report
    assert report2.lost == 0, report2


def test_cold_start_recovers_flows_from_redis(world: World) -> None:
    relay = world.relay
    stream = world.cached_session()

    down = time.monotonic()
    relay.stop()  # userspace: the maps live in the process, so stopping it is the cold start
    if relay.mode == "xdp":  # XDP: the program and the pinned maps go too (a reboot, a new node)
        assert "pin flows" in relay.icegate("relay", "detach", "--name", relay.name)
    relay.start()  # no --preload: the first packet of the flow takes the slow path
    restart_s = time.monotonic() - down
    wait_for(
        lambda: relay.metric('icegate_relay_recoveries_total{result="recovered"}', 0) >= 1, 5, what="recovery"
    )
    time.sleep(0.5)
    stream.stop()
    after = relay.metric('icegate_relay_packets_total{reason="flow",verdict="forward"}')
    relay.stop()
    report = stream.report()
    print(
        f"cold start ({relay.mode}): down {restart_s * 1e3:.0f} ms, sent={report.sent} lost={report.lost} "
        f"(longest gap {report.longest_gap} packets = {report.longest_gap * 1e3 / PPS:.0f} ms)"
    )
    assert after > 0 and report.lost == report.longest_gap  # one gap: the restart, then nothing
    assert report.longest_gap <= (restart_s + 0.2) * PPS


@pytest.mark.parametrize("world", ["xdp"], indirect=True)
def test_control_plane_restart_loses_nothing(world: World) -> None:
    relay = world.relay
    relay.start()
    wait_for(world.ready, 10, what="relay ready")
    stream = world.stream()
    time.sleep(0.3)
    timings = []
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a clean stop and a crash
        down = time.monotonic()
        relay.stop(sig)
        relay.start()
        timings.append(time.monotonic() - down)
        wait_for(world.ready, 10, what="ready after restart")
        time.sleep(0.3)
    stream.stop()
    relay.stop()
    report = stream.report()
    print(
        f"control-plane restart (xdp): down {[round(t * 1e3) for t in timings]} ms, "
        f"sent={report.sent} lost={report.lost}"
    )
    assert report.sent > PPS and report.lost == 0, report.missing[:20]


@pytest.mark.parametrize("world", ["xdp"], indirect=True)
def test_flushed_flows_come_back_on_their_first_packet(world: World) -> None:
    relay = world.relay
    stream = world.cached_session()
    flushed = relay.icegate("flows", "flush", "--yes", "--name", relay.name)
    assert flushed.startswith("flushed ")
    wait_for(
        lambda: relay.metric('icegate_relay_recoveries_total{result="recovered"}', 0) >= 1, 5, what="recovery"
    )
    time.sleep(0.5)
    stream.stop()
    flows = json.loads(relay.icegate("flows", "ls", "--json", "--name", relay.name))
    slow = relay.metric('icegate_relay_packets_total{reason="no_flow",verdict="slow"}')
    relay.stop()
    report = stream.report()
    print(f"maps flushed (xdp): sent={report.sent} lost={report.lost}, slow-path packets={slow:.0f}")
    assert [(f["client"], f["backend"]) for f in flows] == [("100.64.1.2", "1:1")]
    assert report.lost == 0, report.missing[:20]
