"""Real voice sessions: aiortc client -> relay VIP -> Geneve -> transceiver -> agent, and back.

Everything is a real process in the lab's namespaces (``labkit.lab``): the relay
(``icegate relay run``, userspace twin or XDP: the ``world`` fixture's parameter), two
transceivers (``icegate transceiver run``: tx1 with the echo agent, tx2 with the tone
agent, each ``icegate agent run`` on its host's loopback), the lab's Redis. Clients are
unmodified aiortc peers running in the client namespaces (``transceiver/client.py``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
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
from prometheus_client.parser import text_string_to_metric_families

from icegate import geneve, inet, netns
from icegate.schema import Keys
from labkit.clients import run_in_namespace
from labkit.lab import Lab, LabConfig, TransceiverSettings
from labkit.lab.config import PublicConfig
from labkit.support import Processes, alive, http_get, metric_sample, put_route_key, wait_for
from transceiver.client import VoiceClient, dominant_frequency, silence, tone

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]
KEY = bytes(range(48, 64))
VIPS = ("192.0.2.10", "192.0.2.20")  # primary, backup
AGENT_PORT = 8090
RELAY_HTTP = "http://127.0.0.1:9610"
TONE_HZ = 660.0
# tx2 drains with a short deadline: in test_sigterm_drains_... its session outlives it.
DRAIN_DEADLINE_S = 4.0
GOODBYE_PACKETS = 3  # a closing aiortc peer sends RTCP BYE, SCTP ABORT, DTLS close_notify
STUN_PACKETS = 12  # ICE checks, responses and retransmissions in a few seconds of session
# The data channel's events of one turn answered in full, in order.
ONE_TURN = ["speech_started", "speech_stopped", "end_of_turn", "response_started", "response_done"]


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
    relay_config: Path
    tx: dict[int, Transceiver] = field(default_factory=dict)

    def client_ns(self, name: str = "c1") -> str:
        return self.lab.namespace(name)

    def relay_metrics(self) -> str:
        return http_get_in(self.lab.namespace("relay"), f"{RELAY_HTTP}/metrics")[1]

    def relay_cli(self, *argv: str) -> Any:
        """An operator command against this relay (its maps, its Redis), ``--json`` output parsed."""
        out = netns.run(
            self.lab.namespace("relay"), [*ICEGATE, *argv, "--json", "--config", str(self.relay_config)]
        )
        return json.loads(out)


def start(procs: Processes, namespace: str, argv: list[str], log: Path) -> subprocess.Popen[Any]:
    return procs.start_logged([*ICEGATE, *argv], log, ns=namespace)


def agent_serving(tx: Transceiver, agent: subprocess.Popen[Any], log: Path) -> bool:
    """The agent beside ``tx`` answers: a call before that finds no agent (agent_unreachable)."""
    return (
        alive(agent, log)
        and http_get_in(tx.settings.namespace, f"http://127.0.0.1:{AGENT_PORT}/metrics")[0] == 200
    )


@pytest.fixture(params=["userspace", "xdp"])
def world(
    request: pytest.FixtureRequest, ns_prefix: str, procs: Processes, tmp_path: Path
) -> Iterator[World]:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), public=PublicConfig(vips=VIPS)))
    lab.up()
    try:
        put_route_key(lab, KEY)
        relay_cfg = lab.write_relay_config({"mode": request.param, "sync_interval_s": 0.2})
        relay_log = tmp_path / "relay.log"
        relay = start(
            procs, lab.namespace("relay"), ["-v", "relay", "run", "--config", str(relay_cfg)], relay_log
        )
        world = World(lab, request.param, relay, relay_cfg)
        for settings, kind in zip(lab.transceivers(), ("echo", "tone"), strict=True):
            agent_log = tmp_path / f"agent-{settings.name}.log"
            agent_argv = ["agent", "run", "--kind", kind, "--listen", f"127.0.0.1:{AGENT_PORT}"]
            agent_argv += ["--tone-hz", str(TONE_HZ)]
            agent = start(procs, settings.namespace, agent_argv, agent_log)
            section = settings.config_section() | {
                "agent_url": f"ws://127.0.0.1:{AGENT_PORT}/",
                "connect_timeout_s": 4.0,
                "stats_interval_s": 1.0,
            }
            if settings.index == 2:
                section["drain_deadline_s"] = DRAIN_DEADLINE_S
            section["relays"][0]["priority"] = 1  # the first VIP is the primary
            config = tmp_path / f"{settings.name}.yaml"
            config.write_text(yaml.safe_dump({"transceiver": section}))
            tx_log = tmp_path / f"{settings.name}.log"
            proc = start(
                procs, settings.namespace, ["-v", "transceiver", "run", "--config", str(config)], tx_log
            )
            world.tx[settings.index] = tx = Transceiver(settings, proc)
            wait_for(
                lambda t=tx, log=tx_log, a=agent, alog=agent_log: (
                    alive(t.proc, log) and t.get("/readyz")[0] == 200 and agent_serving(t, a, alog)
                ),
                20,
                what="readyz and the agent serving",
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
    """A 440 Hz utterance comes back as 440 Hz, with the turn events on the data channel, and
    every packet of the session went through the relay's flow (counted at both ends too)."""
    tx = world.tx[1]
    client_ns = world.client_ns()
    udp_before = udp_counters(client_ns)

    async def session() -> tuple[VoiceClient, str, dict[str, int]]:
        client = VoiceClient(tx.url)
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            await asyncio.sleep(0.3)
            client.mic.play(np.concatenate([tone(440.0, 600), silence(100)]))
            await client.wait_event("response_done", timeout=10)
            await asyncio.sleep(0.3)
            [local] = client.addresses()["local"]
            await client.hangup(http)
            transport = await transport_stats(client)
        return client, local, transport

    client, local, transport = run_in_namespace(client_ns, session)
    assert client.event_types() == ONE_TURN
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

    assert_only_the_relay_carried(world, tx, local, udp_before, transport)


def assert_only_the_relay_carried(
    world: World, tx: Transceiver, local: str, udp_before: dict[str, int], transport: dict[str, int]
) -> None:
    """Every datagram of the finished session went client -> relay flow -> tunnel -> transceiver, and back.

    Four independent counts of the same packets: the client namespace's UDP MIB (all the
    client sent and received: its only UDP peer is the VIP), the relay's flows for the
    client's address, the transceiver's mux (every Geneve datagram) and aiortc's own
    transport. The first three must agree exactly, with no slack: the relay counts a flow
    from its first check (a pending flow's counters move into the confirmed one), and they
    are read after both ends closed, polled until the last packets in flight have landed.
    A packet that went around the relay, or that it forwarded without counting, makes
    them differ. Only aiortc's count needs slack, for the STUN it does not count.
    """
    address, port = local.rsplit(":", 1)
    rows: list[dict[str, Any]] = []

    def counts() -> dict[str, int]:
        udp = {k: v - udp_before.get(k, 0) for k, v in udp_counters(world.client_ns()).items()}
        mux = mux_counters(tx.metrics())
        rows[:] = world.relay_cli("flows", "show", address)
        return {
            "client_sent": udp["OutDatagrams"],
            # NoPorts: arrived after the client closed its socket, still delivered through the relay.
            "client_received": udp["InDatagrams"] + udp["NoPorts"] + udp["InErrors"],
            "relay_in": sum(f["packets_in"] for f in rows),
            "relay_out": sum(f["packets_out"] for f in rows),
            "mux_in": sum(n for (direction, _), n in mux.items() if direction == "in"),
            "mux_delivered": mux.get(("in", "delivered"), 0),
            "mux_sent": mux.get(("out", "sent"), 0),
        }

    def agree(c: dict[str, int]) -> bool:
        return (
            c["client_sent"] == c["relay_in"] == c["mux_in"]
            and c["mux_sent"] == c["relay_out"] == c["client_received"]
        )

    seen: list[dict[str, int]] = []

    def settled() -> bool:
        seen.append(counts())
        return agree(seen[-1])

    try:
        wait_for(settled, 3, 0.2, "the counts to agree")
    except AssertionError:
        raise AssertionError(
            f"the client's, the relay's and the transceiver's counts differ: {seen[-1]}"
        ) from None
    c = seen[-1]
    assert c["relay_in"] > 100 and c["relay_out"] > 100, c
    # The flows are the client's real address (its one host candidate), to tx1, on the VIPs.
    assert {(r["client_port"], r["backend"]) for r in rows} == {(int(port), "1:1")}, rows
    assert {r["vip"] for r in rows} <= set(VIPS) and "confirmed" in {r["state"] for r in rows}, rows
    mux = mux_counters(tx.metrics())
    assert {result for direction, result in mux if direction == "in"} <= {"delivered", "closed"}, mux
    # closed: the client's goodbye may cross the DELETE that already closed the session's
    # route; nothing else may miss a session (no_flow, unknown_ufrag, not_vip, malformed: none).
    assert c["mux_in"] - c["mux_delivered"] <= GOODBYE_PACKETS, mux
    # aiortc counts DTLS, SRTP and SRTCP; the rest of what the relay carried is ICE's STUN
    # (a check and its response each way here, consent only every ~5 s): a few packets, never
    # fewer than one each way (the client's check made the flow; the transceiver answered it).
    assert 1 <= c["relay_in"] - transport["sent"] <= STUN_PACKETS, (c, transport)
    assert 1 <= c["relay_out"] - transport["received"] <= STUN_PACKETS, (c, transport)


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


def registration_state(lab: Lab, index: int) -> str | None:
    """``state`` of transceiver ``index``'s registration in Redis; None when there is none."""
    with netns.entered(lab.namespace("dc")):
        r = redis_sync.Redis.from_url(lab.redis_url)
        try:
            state = r.hget(Keys(lab.config.region).transceiver(lab.config.cluster, index), "state")
        finally:
            r.close()
    return state.decode() if isinstance(state, bytes) else state


def udp_counters(namespace: str) -> dict[str, int]:
    """The UDP MIB of a namespace (``/proc/net/snmp``, lines ``Udp:``): datagrams in, out, errors."""
    names, values = (
        line.split()[1:]
        for line in netns.run(namespace, ["cat", "/proc/net/snmp"]).splitlines()
        if line.startswith("Udp:")
    )
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def mux_counters(metrics_text: str) -> dict[tuple[str, str], int]:
    """``icegate_transceiver_mux_packets_total`` by (direction, result)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "icegate_transceiver_mux_packets":
            return {(s.labels["direction"], s.labels["result"]): int(s.value) for s in family.samples}
    return {}


async def transport_stats(client: VoiceClient) -> dict[str, int]:
    """Packets of the client's DTLS transport (aiortc's RTCTransportStats: DTLS, SRTP, SRTCP; no STUN)."""
    for stats in (await client.pc.getStats()).values():
        if stats.type == "transport":
            return {"sent": stats.packetsSent, "received": stats.packetsReceived}
    raise AssertionError("the client has no transport stats")


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
    """From the relay's address (the lab sets ``relay_sources`` to it): a check for a ufrag no
    session minted and a packet of no flow are counted and dropped; the same from another
    host on the tunnel network (the dc namespace) is not even looked at (``not_relay``)."""
    tx = world.tx[1]
    vip, client = (VIPS[0], 3478), ("100.64.1.2", 41000)
    check = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    check.attributes["USERNAME"] = "AAAAAAAAAAAAAAAAAAAAAAAA:abcd"  # a token no session minted
    stun_unknown = bytes(check)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    before = tx.metrics()
    for host in ("relay", "dc"):
        with netns.entered(world.lab.namespace(host)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for payload in (stun_unknown, dtls):
                inner = inet.build_udp(*client, *vip, payload)
                sock.sendto(geneve.encapsulate(inner, 0), (tx.settings.address, tx.settings.tunnel_port))
            sock.close()

    def grew(result: str, by: int) -> bool:
        sample = f'icegate_transceiver_mux_packets_total{{direction="in",result="{result}"}}'
        return metric(tx.metrics(), sample) == metric(before, sample) + by

    wait_for(
        lambda: grew("unknown_ufrag", 1) and grew("no_flow", 1) and grew("not_relay", 2), 5, what="counters"
    )
    assert metric(
        tx.metrics(), 'icegate_transceiver_mux_packets_total{direction="out",result="sent"}'
    ) == metric(before, 'icegate_transceiver_mux_packets_total{direction="out",result="sent"}')


def test_drain_refuses_new_sessions_keeps_live_ones_and_exits(world: World) -> None:
    """`icegate backends drain` flips the registration; the transceiver drains and exits when idle."""
    tx = world.tx[1]
    lab = world.lab

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
    assert registration_state(lab, 1) is None  # deregistered on the way out
    wait_for(
        lambda: metric(world.relay_metrics(), 'icegate_relay_backends{state="active"}') == 1,
        10,
        what="the relay to drop the drained backend",
    )


def test_sigterm_drains_until_the_last_session_ends_or_the_deadline(world: World) -> None:
    """SIGTERM: new offers get 503, live sessions go on, the registration and the relay's
    backends map say draining. tx1 exits 0 once its client hangs up; tx2 (drain deadline
    DRAIN_DEADLINE_S) exits 0 at its deadline, closing the session that outlived it."""
    lab = world.lab
    tx1, tx2 = world.tx[1], world.tx[2]
    draining, gone = ("draining", "draining"), ("dead", None)

    def states() -> dict[int, tuple[str | None, str | None]]:
        """Per transceiver index: (its state in the relay's backends map, in its Redis registration)."""
        rows = world.relay_cli("backends", "ls")
        return {row["index"]: (row["map_state"], row["redis_state"]) for row in rows}

    def exit_of(proc: subprocess.Popen[Any]) -> tuple[int | None, float, str | None]:
        """Exit code (None: still running at the bound), when, and the registration right after."""
        try:
            code = proc.wait(DRAIN_DEADLINE_S + 5)
        except subprocess.TimeoutExpired:
            return None, time.monotonic(), None
        # Read at once: a registration left behind would only expire after heartbeat_ttl_s.
        return code, time.monotonic(), registration_state(lab, 2)

    async def sessions() -> tuple[VoiceClient, float, str | None]:
        stays, outlives = VoiceClient(tx1.url), VoiceClient(tx2.url)
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(stays.connect(http), outlives.connect(http))
            terminated = time.monotonic()
            for tx in (tx1, tx2):
                tx.proc.send_signal(signal.SIGTERM)
            tx2_exit = asyncio.create_task(asyncio.to_thread(exit_of, tx2.proc))
            for tx in (tx1, tx2):
                await asyncio.to_thread(
                    wait_for,
                    lambda t=tx: t.get("/readyz")[0] == 503,
                    5,
                    0.05,
                    f"{tx.settings.name} readyz 503",
                )
                late = VoiceClient(tx.url)
                offer = await late.offer()
                headers = {"Content-Type": "application/sdp"}
                async with http.post(f"{tx.url}/v1/sessions", data=offer, headers=headers) as resp:
                    assert resp.status == 503 and int(resp.headers["Retry-After"]) > 0
                await late.pc.close()
            await asyncio.to_thread(
                wait_for,
                lambda: states() == {1: draining, 2: draining},
                5,
                0.1,
                "draining in Redis and the map",
            )
            assert len(tx2.sessions()) == 1  # kept until the deadline

            stays.mic.play(np.concatenate([tone(440.0, 300), silence(100)]))  # the live session goes on
            await stays.wait_event("response_done", timeout=10)

            code, exited, tx2_registration = await tx2_exit
            assert code == 0, (
                f"tx2 exit code {code} (None: still running {DRAIN_DEADLINE_S + 5} s after SIGTERM)"
            )
            # The deadline closed the session: its DTLS close_notify reached the client via the relay.
            await asyncio.to_thread(
                wait_for, lambda: outlives.pc.connectionState == "closed", 3, 0.05, "the session to be closed"
            )
            assert tx1.proc.poll() is None, "tx1 exited while its session was live"
            await outlives.hangup()  # its transceiver is gone: nothing to DELETE
            await stays.hangup(http)
        return stays, exited - terminated, tx2_registration

    stays, exited_after, tx2_registration = run_in_namespace(world.client_ns(), sessions)
    # Measured from our kill(2), so never below the deadline; the upper bound only bounds a timeout.
    assert DRAIN_DEADLINE_S <= exited_after < DRAIN_DEADLINE_S + 5, exited_after
    assert tx2_registration is None  # deregistered on the way out, not left to expire
    started = next(t for t, e in stays.events if e["type"] == "response_started")
    done = next(t for t, e in stays.events if e["type"] == "response_done")
    assert abs(dominant_frequency(stays.heard.between(started, done)) - 440.0) < 5.0
    assert tx1.proc.wait(10) == 0, "tx1 did not exit once its last session ended"
    assert registration_state(lab, 1) is None
    # The relay keeps a deregistered backend as dead, for flows that may still exist.
    wait_for(lambda: states() == {1: gone, 2: gone}, 5, 0.1, "both backends dead in the relay's map")
