"""Real voice sessions: aiortc client -> relay VIP -> Geneve -> transceiver -> agent, and back.

Everything is a real process in the lab's namespaces (``icegate.lab``): the relay
(``icegate relay run``, userspace twin or XDP: the ``world`` fixture's parameter), two
transceivers (``icegate transceiver run``: tx1 with the echo agent, tx2 with the tone
agent, each ``icegate agent run`` on its host's loopback), the lab's Redis. Clients are
unmodified aiortc peers running in the client namespaces (``transceiver/client.py``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis as redis_sync
import yaml
from aioice import stun as aioice_stun

from icegate import geneve, inet, netns
from icegate.lab import Lab, LabConfig, TransceiverSettings
from icegate.lab.config import PublicConfig
from icegate.schema import Keys, RouteKeySet
from tests.e2e.clients import run_in_namespace
from tests.support import REPO, Processes, http_get, metric_sample, wait_for
from transceiver.client import VoiceClient, dominant_frequency, silence, tone

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]
KEY = bytes(range(48, 64))
VIPS = ("192.0.2.10", "192.0.2.20")  # primary, backup
AGENT_PORT = 8090
RELAY_HTTP = "http://127.0.0.1:9610"
TONE_HZ = 660.0


def http_get_in(namespace: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    with netns.entered(namespace):
        return http_get(url, timeout)


def metric(text: str, sample: str) -> float:
    return metric_sample(text, sample) or 0.0


@dataclass
class Transceiver:
    settings: TransceiverSettings
    proc: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return self.settings.signaling_url

    def get(self, path: str) -> tuple[int, str]:
        return http_get_in(self.settings.namespace, f"{self.url}{path}")

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def sessions(self) -> list[dict[str, Any]]:
        status, body = self.get("/v1/sessions")
        assert status == 200, body
        return list(json.loads(body))


@dataclass
class World:
    lab: Lab
    mode: str
    relay: subprocess.Popen[Any]
    tx: dict[int, Transceiver] = field(default_factory=dict)

    def client_ns(self, name: str = "c1") -> str:
        return self.lab.namespace(name)

    def relay_metrics(self) -> str:
        return http_get_in(self.lab.namespace("relay"), f"{RELAY_HTTP}/metrics")[1]


def start(procs: Processes, namespace: str, argv: list[str], log: Path) -> subprocess.Popen[Any]:
    out = log.open("w")
    proc = procs.start([*ICEGATE, *argv], ns=namespace, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def alive(proc: subprocess.Popen[Any], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{log.name} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return True


@pytest.fixture(params=["userspace", "xdp"])
def world(
    request: pytest.FixtureRequest, ns_prefix: str, procs: Processes, tmp_path: Path
) -> Iterator[World]:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), public=PublicConfig(vips=VIPS)))
    lab.up()
    try:
        keys = Keys(lab.config.region)
        with netns.entered(lab.namespace("dc")):
            r = redis_sync.Redis.from_url(lab.redis_url)
            r.hset(keys.route_keys, mapping=RouteKeySet({0: KEY}, 0).encode())
            r.close()
        relay_cfg = lab.write_relay_config({"mode": request.param, "sync_interval_s": 0.2})
        relay_log = tmp_path / "relay.log"
        relay = start(
            procs, lab.namespace("relay"), ["-v", "relay", "run", "--config", str(relay_cfg)], relay_log
        )
        world = World(lab, request.param, relay)
        for settings, kind in zip(lab.transceivers(), ("echo", "tone"), strict=True):
            agent_log = tmp_path / f"agent-{settings.name}.log"
            agent_argv = ["agent", "run", "--kind", kind, "--listen", f"127.0.0.1:{AGENT_PORT}"]
            agent_argv += ["--tone-hz", str(TONE_HZ)]
            start(procs, settings.namespace, agent_argv, agent_log)
            section = settings.config_section() | {
                "agent_url": f"ws://127.0.0.1:{AGENT_PORT}/",
                "connect_timeout_s": 4.0,
                "stats_interval_s": 1.0,
            }
            section["relays"][0]["priority"] = 1  # the first VIP is the primary
            config = tmp_path / f"{settings.name}.yaml"
            config.write_text(yaml.safe_dump({"transceiver": section}))
            tx_log = tmp_path / f"{settings.name}.log"
            proc = start(
                procs, settings.namespace, ["-v", "transceiver", "run", "--config", str(config)], tx_log
            )
            world.tx[settings.index] = tx = Transceiver(settings, proc)
            wait_for(
                lambda t=tx, log=tx_log: alive(t.proc, log) and t.get("/readyz")[0] == 200, 20, what="readyz"
            )
        try:
            wait_for(
                lambda: (
                    alive(relay, relay_log)
                    and metric(world.relay_metrics(), 'icegate_relay_backends{state="active"}') == 2
                ),
                20,
                what="the relay to sync both transceivers",
            )
        except AssertionError as exc:
            backends = [line for line in world.relay_metrics().splitlines() if "backends" in line]
            raise AssertionError(f"{exc}\n{backends}\n{relay_log.read_text()[-3000:]}") from None
        yield world
    finally:
        lab.down()


# ---------------------------------------------------------------------- the tests


def test_echo_round_trip_through_the_relay(world: World) -> None:
    """A 440 Hz utterance comes back as 440 Hz, with the turn events on the data channel."""
    tx = world.tx[1]

    async def session() -> VoiceClient:
        client = VoiceClient(tx.url)
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            await asyncio.sleep(0.3)
            client.mic.play(np.concatenate([tone(440.0, 600), silence(100)]))
            await client.wait_event("response_done", timeout=10)
            await asyncio.sleep(0.3)
            await client.hangup(http)
        return client

    client = run_in_namespace(world.client_ns(), session)
    assert client.event_types() == ["speech_started", "speech_stopped", "response_started", "response_done"]
    assert client.answer is not None
    assert [line.split()[4] for line in client.answer.splitlines() if line.startswith("a=candidate")][
        :2
    ] == list(VIPS)
    started = next(t for t, e in client.events if e["type"] == "response_started")
    done = next(t for t, e in client.events if e["type"] == "response_done")
    echoed = np.concatenate(
        [f for f, t in zip(client.heard.frames, client.heard.arrivals, strict=True) if started <= t <= done]
    )
    assert abs(dominant_frequency(echoed) - 440.0) < 5.0
    assert 0.55 < (done - started) < 2.0  # the 600 ms utterance (+ pre-roll and tail), paced in real time
    wait_for(lambda: tx.sessions() == [], 5, what="the session to end")
    text = tx.metrics()
    assert metric(text, 'icegate_transceiver_sessions_total{outcome="completed"}') == 1
    assert metric(text, "icegate_transceiver_setup_seconds_count") == 1
    assert metric(text, 'icegate_transceiver_mux_packets_total{direction="in",result="delivered"}') > 100
    # aioice's first checks went to the client's offered host candidate before the client's own
    # check had made the relay's flow: they were held and flushed, not lost to a retransmission.
    assert metric(text, 'icegate_transceiver_mux_packets_total{direction="out",result="flushed"}') >= 1


def test_tone_agent_answers_each_turn(world: World) -> None:
    tx = world.tx[2]

    async def session() -> tuple[VoiceClient, list[float]]:
        client = VoiceClient(tx.url)
        latencies = []
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            for turn in (1, 2):
                client.mic.play(np.concatenate([tone(300.0, 400), silence(100)]))
                await asyncio.sleep(0.05)
                assert client.mic.script_started is not None
                end_of_speech = client.mic.script_started + 0.4
                await client.wait_event("response_done", count=turn, timeout=10)
                first = client.heard.first_loud_after(end_of_speech)
                assert first is not None
                latencies.append(first - end_of_speech)
            assert client.location is not None
            # Sampled every second from RTCP; the round trip needs a receiver report that
            # answers one of our sender reports, which can take a few report intervals.
            stats: dict = {}
            for _ in range(50):
                status, body = await asyncio.to_thread(tx.get, client.location)
                assert status == 200
                stats = json.loads(body)["stats"]
                if {"rtt_s", "jitter_s", "loss"} <= stats.keys():
                    break
                await asyncio.sleep(0.2)
            assert {"rtt_s", "jitter_s", "loss"} <= stats.keys(), stats
            assert stats["rtt_s"] > 0 and stats["loss"] == 0.0
            await client.hangup(http)
        return client, latencies

    client, latencies = run_in_namespace(world.client_ns("c2"), session)
    heard = client.heard.pcm()
    assert abs(dominant_frequency(heard) - TONE_HZ) < 5.0
    # end of speech -> first tone frame: the VAD's endpoint (hangover + silence, 500 ms)
    # plus the path; generous bounds on a shared 2-core machine.
    assert all(0.4 < lat < 2.5 for lat in latencies), latencies
    assert metric(tx.metrics(), "icegate_transceiver_turn_latency_seconds_count") == 2


def test_many_sessions_share_one_socket(world: World) -> None:
    tx = world.tx[1]
    per_client_ns = 4

    async def sessions() -> list[VoiceClient]:
        clients = [VoiceClient(tx.url) for _ in range(per_client_ns)]
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(c.connect(http) for c in clients))
            await asyncio.sleep(0.5)
            for c in clients:
                c.mic.play(np.concatenate([tone(520.0, 400), silence(100)]))
            await asyncio.gather(*(c.wait_event("response_done", timeout=15) for c in clients))
            listed = {s["id"] for s in tx.sessions()}
            assert {c.location.rsplit("/", 1)[1] for c in clients if c.location} <= listed
            await asyncio.gather(*(c.hangup(http) for c in clients))
        return clients

    results: list[list[VoiceClient]] = []
    threads = [
        threading.Thread(target=lambda ns=ns: results.append(run_in_namespace(ns, sessions)))
        for ns in (world.client_ns("c1"), world.client_ns("c2"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    clients = [c for batch in results for c in batch]
    assert len(clients) == 2 * per_client_ns
    for c in clients:
        assert abs(dominant_frequency(c.heard.pcm()) - 520.0) < 5.0
    # One UDP socket in the transceiver process, whatever the number of sessions.
    assert udp_sockets(tx) == 1
    text = tx.metrics()
    assert metric(text, 'icegate_transceiver_sessions_total{outcome="completed"}') == 2 * per_client_ns


def udp_sockets(tx: Transceiver) -> int:
    """UDP sockets held by the transceiver process (the Python child of nsenter)."""
    pids = [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-P", str(tx.proc.pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    pid = pids[0] if pids else tx.proc.pid
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    udp = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            udp.add(line.split()[9])
    return len(inodes & udp)


def test_a_client_that_never_connects_is_reaped(world: World) -> None:
    tx = world.tx[1]

    async def post_only() -> str:
        client = VoiceClient(tx.url)
        offer = await client.offer()
        headers = {"Content-Type": "application/sdp"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{tx.url}/v1/sessions", data=offer, headers=headers) as r,
        ):
            assert r.status == 201
            location = r.headers["Location"]
        await client.pc.close()  # never applies the answer
        return location

    run_in_namespace(world.client_ns(), post_only)
    assert len(tx.sessions()) == 1
    wait_for(lambda: tx.sessions() == [], 8, what="the reaper")
    assert metric(tx.metrics(), 'icegate_transceiver_sessions_total{outcome="reaped"}') == 1


def test_geneve_for_unknown_sessions_is_counted_and_dropped(world: World) -> None:
    tx = world.tx[1]
    vip, client = (VIPS[0], 3478), ("100.64.1.2", 41000)
    check = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    check.attributes["USERNAME"] = "AAAAAAAAAAAAAAAAAAAAAAAA:abcd"  # a token no session minted
    stun_unknown = bytes(check)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    before = tx.metrics()
    with netns.entered(world.lab.namespace("dc")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for payload in (stun_unknown, dtls):
            inner = inet.build_udp(*client, *vip, payload)
            sock.sendto(geneve.encapsulate(inner, 0), (tx.settings.address, tx.settings.tunnel_port))
        sock.close()

    def counted() -> bool:
        text = tx.metrics()
        return all(
            metric(text, f'icegate_transceiver_mux_packets_total{{direction="in",result="{r}"}}')
            == metric(before, f'icegate_transceiver_mux_packets_total{{direction="in",result="{r}"}}') + 1
            for r in ("unknown_ufrag", "no_flow")
        )

    wait_for(counted, 5, what="the mux counters")
    assert metric(
        tx.metrics(), 'icegate_transceiver_mux_packets_total{direction="out",result="sent"}'
    ) == metric(before, 'icegate_transceiver_mux_packets_total{direction="out",result="sent"}')


def test_drain_refuses_new_sessions_keeps_live_ones_and_exits(world: World) -> None:
    """`icegate backends drain` flips the registration; the transceiver drains and exits when idle."""
    tx = world.tx[1]
    lab = world.lab
    region_keys = Keys(lab.config.region)

    def registration_state() -> str | None:
        with netns.entered(lab.namespace("dc")):
            r = redis_sync.Redis.from_url(lab.redis_url)
            try:
                state = r.hget(region_keys.transceiver(lab.config.cluster, 1), "state")
            finally:
                r.close()
        return None if state is None else state.decode()

    async def session() -> VoiceClient:
        client = VoiceClient(tx.url)
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            client.mic.play(np.concatenate([tone(440.0, 300), silence(100)]))
            await client.wait_event("response_done", timeout=10)

            drain = ["backends", "drain", "1:1", "--redis-url", lab.redis_url, "--region", lab.config.region]
            await asyncio.to_thread(netns.run, lab.namespace("dc"), [*ICEGATE, *drain])
            await asyncio.to_thread(wait_for, lambda: tx.get("/readyz")[0] == 503, 5, 0.05, "readyz 503")
            late = VoiceClient(tx.url)
            offer = await late.offer()
            headers = {"Content-Type": "application/sdp"}
            async with http.post(f"{tx.url}/v1/sessions", data=offer, headers=headers) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
            await late.pc.close()

            client.mic.play(np.concatenate([tone(440.0, 300), silence(100)]))  # the live session goes on
            await client.wait_event("response_done", count=2, timeout=10)
            await client.hangup(http)
        return client

    run_in_namespace(world.client_ns(), session)
    assert tx.proc.wait(10) == 0, "the drained transceiver did not exit on its own"
    assert registration_state() is None  # deregistered on the way out
    wait_for(
        lambda: metric(world.relay_metrics(), 'icegate_relay_backends{state="active"}') == 1,
        10,
        what="the relay to drop the drained backend",
    )
