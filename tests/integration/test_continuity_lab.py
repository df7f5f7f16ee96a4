"""Session continuity in the lab (docs/CONTINUITY.md): a NAT rebinding mid-call, then a client that vanishes.

Real processes in the lab's namespaces: the XDP relay (``icegate relay run``; the
userspace twin too with ``ICEGATE_LONG=1``; flow expiry shortened to ``EXPIRY_S``),
transceiver tx1 (consent window shortened to ``CONSENT_S``) with the echo agent, an
unmodified aiortc client in c1. The router between the clients and the relay (``inet``)
gets nftables rules mid-call:

1. **rebinding**: the client's source port is rewritten to ``NEW_PORT`` on the way out
   (and back on the way in), and packets to the old port are dropped, as a NAT that lost
   its mapping does. The client keeps its socket and credentials; its next consent check
   (aioice: every 4-6 s) arrives from the new port, the transceiver's triggered check is
   answered from there, and media moves. The client must hear the agent again within 1 s
   of that first check, keep hearing it (a whole echo turn after the move), and the old
   flow must expire from the relay and from the Redis flow cache.
2. **vanishing**: every packet from and to the client is dropped. The session must end
   with outcome ``consent_expired`` after the consent window, the agent must be told,
   and the relay's flow must expire.

And an utterance lost whole in a media gap (the router drops the client's packets while it
is spoken): the agent never hears it, and a caller that says it again
(``transceiver.client.take_turn(repeats=1)``, as the fleet test's callers do) gets its
answer on the same session.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis as redis_sync
import yaml

from controlplane.config import FlowCacheConfig
from icegate import netns
from icegate.errors import LinkError
from icegate.schema import Keys
from labkit.clients import run_in_namespace
from labkit.lab import Lab, LabConfig
from labkit.lab.config import PublicConfig
from labkit.support import Processes, alive, put_route_key, wait_for
from tests.integration.test_transceiver_relay import (
    AGENT_PORT,
    KEY,
    ONE_TURN,
    VIPS,
    Transceiver,
    World,
    metric,
    start,
)
from transceiver.client import VoiceClient, dominant_frequency, silence, take_turn, tone

CONSENT_S = 5.0  # the transceiver's consent window (30 s in production)
EXPIRY_S = 4.0  # the relay's idle timeout for confirmed flows (30 s in production)
NEW_PORT = 50123  # the NAT's new mapping for the client
TABLE = "continuity"
GAP_S = 0.3  # a pause in the client's audio longer than this is a gap (frames come every 20 ms)


def nft(namespace: str, script: str, tmp: Path) -> None:
    path = tmp / "rules.nft"
    path.write_text(script)
    netns.run(namespace, ["nft", "-f", str(path)])


def rebind(namespace: str, client: str, port: int, tmp: Path) -> None:
    """Stateless NAT rebinding on the router: the client's port becomes NEW_PORT outside; the
    old mapping is dropped first (rules apply in order, and the next one rewrites into it)."""
    nft(
        namespace,
        f"""
table ip {TABLE} {{
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        iifname "pub" ip daddr {client} udp dport {port} drop
        iifname "pub" ip daddr {client} udp dport {NEW_PORT} udp dport set {port}
        ip saddr {client} udp sport {port} udp sport set {NEW_PORT}
    }}
}}
""",
        tmp,
    )


def vanish(namespace: str, client: str, tmp: Path) -> None:
    nft(
        namespace,
        "".join(f"insert rule ip {TABLE} pre ip {side} {client} drop\n" for side in ("saddr", "daddr")),
        tmp,
    )


# The XDP relay always; the userspace twin too with ICEGATE_LONG=1 (same semantics, another ~25 s).
MODES = ["xdp", "userspace"] if os.environ.get("ICEGATE_LONG") == "1" else ["xdp"]


@pytest.fixture(params=MODES)
def stack(
    request: pytest.FixtureRequest, ns_prefix: str, procs: Processes, tmp_path: Path
) -> Iterator[World]:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), public=PublicConfig(vips=VIPS)))
    lab.up()
    try:
        put_route_key(lab, KEY)
        expiry = {"idle_s": EXPIRY_S, "pending_s": 2.0, "interval_s": 0.5}
        overrides = {"mode": request.param, "sync_interval_s": 0.2, "expiry": expiry}
        relay_cfg = lab.write_relay_config(overrides)
        relay_log = tmp_path / "relay.log"
        relay = start(
            procs, lab.namespace("relay"), ["-v", "relay", "run", "--config", str(relay_cfg)], relay_log
        )
        world = World(lab, request.param, relay, relay_cfg)
        settings = lab.transceiver(1)
        agent_argv = ["-v", "agent", "run", "--kind", "echo", "--listen", f"127.0.0.1:{AGENT_PORT}"]
        start(procs, settings.namespace, agent_argv, tmp_path / "agent.log")
        section = settings.config_section() | {
            "agent_url": f"ws://127.0.0.1:{AGENT_PORT}/",
            "connect_timeout_s": 4.0,
            "consent_window_s": CONSENT_S,
        }
        config = tmp_path / "tx1.yaml"
        config.write_text(yaml.safe_dump({"transceiver": section}))
        tx_log = tmp_path / "tx1.log"
        proc = start(procs, settings.namespace, ["-v", "transceiver", "run", "--config", str(config)], tx_log)
        world.tx[1] = tx = Transceiver(settings, proc)
        wait_for(lambda: alive(proc, tx_log) and tx.get("/readyz")[0] == 200, 20, what="readyz")
        wait_for(
            lambda: (
                alive(relay, relay_log)
                and metric(world.relay_metrics(), 'icegate_relay_backends{state="active"}') >= 1
            ),
            20,
            what="the relay to sync tx1",
        )
        yield world
    finally:
        lab.down()


def gaps(arrivals: list[float], start: float, end: float) -> list[tuple[float, float]]:
    """(last frame before, first frame after) of every pause longer than GAP_S in [start, end]."""
    times = [t for t in arrivals if start <= t <= end]
    return [(a, b) for a, b in itertools.pairwise(times) if b - a > GAP_S]


def test_nat_rebinding_mid_call_then_the_client_vanishes(stack: World, tmp_path: Path) -> None:
    tx = stack.tx[1]
    c1 = next(c for c in stack.lab.clients() if c.name == "c1")
    router = stack.lab.namespace("inet")
    marks: dict[str, float] = {}
    shown: dict[str, Any] = {}

    def session_json(location: str) -> dict[str, Any]:
        status, body = tx.get(location)
        assert status == 200, body
        return dict(json.loads(body))

    def flows() -> list[dict[str, Any]]:
        try:
            return list(stack.relay_cli("flows", "show", c1.address))
        except LinkError as exc:  # the CLI says so when there is none
            if "no flow for" in str(exc):
                return []
            raise

    async def call() -> VoiceClient:
        client = VoiceClient(tx.url)
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            assert client.location is not None
            await asyncio.sleep(1.0)
            [local] = client.addresses()["local"]
            marks["port"] = port = int(local.rsplit(":", 1)[1])

            await asyncio.to_thread(rebind, router, c1.address, port, tmp_path)
            marks["rebound"] = time.monotonic()
            deadline = time.monotonic() + 15  # aioice's consent check comes within 6 s
            while not (latches := (await asyncio.to_thread(session_json, client.location))["latches"]):
                assert time.monotonic() < deadline, "the session never latched onto the new port"
                await asyncio.sleep(0.1)
            shown["latch"] = latches[0]
            await asyncio.sleep(2.0)  # keeps hearing
            client.mic.play(np.concatenate([tone(440.0, 600), silence(100)]))
            await client.wait_event("response_done", timeout=10)
            marks["turn_done"] = time.monotonic()
            # The old mapping's flow expires at the relay while the call goes on.
            deadline = time.monotonic() + EXPIRY_S + 5
            while {f["client_port"] for f in await asyncio.to_thread(flows)} != {NEW_PORT}:
                assert time.monotonic() < deadline, "the old port's flow did not expire"
                await asyncio.sleep(0.2)
            marks["old_expired"] = time.monotonic()

            await asyncio.to_thread(vanish, router, c1.address, tmp_path)
            marks["vanished"] = time.monotonic()
            sid = client.location.rsplit("/", 1)[1]
            deadline = time.monotonic() + CONSENT_S + 10
            while any(s["id"] == sid for s in await asyncio.to_thread(tx.sessions)):
                assert time.monotonic() < deadline, "the vanished session did not end"
                await asyncio.sleep(0.1)
            marks["ended"] = time.monotonic()
            await client.hangup()  # locally: the transceiver has forgotten it
        return client

    client = run_in_namespace(stack.client_ns("c1"), call)

    # 1. Rebinding: the latch moved media to the NAT's new port...
    latch = shown["latch"]
    port = int(marks["port"])
    assert latch["old"] == f"{c1.address}:{port}" and latch["new"] == f"{c1.address}:{NEW_PORT}", latch
    # ...the client heard the agent again within 1 s of the first check from there...
    window = gaps(client.heard.arrivals, marks["rebound"] - 0.5, marks["old_expired"])
    assert window, "no gap in the audio: the rebinding did not happen"
    (_, resumed) = max(window, key=lambda g: g[1] - g[0])
    check_to_audio = resumed - latch["first_check"]
    audio_gap = max(b - a for a, b in window)
    print(
        f"\nrebinding: audio gap {audio_gap:.3f} s, first check -> audio {check_to_audio * 1e3:.0f} ms, "
        f"check -> move {latch['check_to_move_ms']} ms; vanished -> ended "
        f"{marks['ended'] - marks['vanished']:.2f} s"
    )
    assert 0 <= check_to_audio < 1.0, (check_to_audio, window)
    # ...and kept hearing it: no gap after that, and the echo of a whole turn came back.
    assert all(a < resumed for a, _ in window), window
    started = next(t for t, e in client.events if e["type"] == "response_started")
    done = next(t for t, e in client.events if e["type"] == "response_done")
    assert started > resumed
    assert abs(dominant_frequency(client.heard.between(started, done)) - 440.0) < 5.0

    # 2. Vanishing: ended by consent, after the window (and not much later), the agent told.
    assert CONSENT_S - 0.5 < marks["ended"] - marks["vanished"] < CONSENT_S + 4.0
    text = tx.metrics()
    assert metric(text, 'icegate_transceiver_sessions_total{outcome="consent_expired"}') == 1
    assert metric(text, "icegate_transceiver_latches_total") == 1
    assert metric(text, 'icegate_transceiver_latch_checks_total{result="moved"}') == 1
    agent_log = (tmp_path / "agent.log").read_text()
    wait_for(
        lambda: "session ended reason=consent_expired" in (tmp_path / "agent.log").read_text(),
        5,
        what=f"the agent to hear of it:\n{agent_log[-2000:]}",
    )

    # The relay expired both flows (the old port during the call, above; the new one after
    # the vanishing) and published the removal: their Redis flow-cache records keep only
    # the short removal TTL (two refresh intervals; no other relay node refreshes them).
    wait_for(lambda: flows() == [], EXPIRY_S + 5, 0.2, what="the client's flows to expire")
    assert metric(stack.relay_metrics(), 'icegate_relay_flows_expired_total{state="confirmed"}') >= 2
    keys = Keys(stack.lab.config.region)
    removal_ttl_s = int(2 * FlowCacheConfig().refresh_s) + 1
    with netns.entered(stack.lab.namespace("dc")):
        r = redis_sync.Redis.from_url(stack.lab.redis_url)
        pattern = keys.flow_pattern(VIPS[0], 3478)
        ttls = {k: r.ttl(k) for k in r.scan_iter(match=pattern) if c1.address.encode() in k}
        r.close()
    assert ttls and all(0 < ttl <= removal_ttl_s for ttl in ttls.values()), ttls
    backends = stack.relay_cli("backends", "ls")
    assert [b["flows"] for b in backends if b["index"] == 1] == [0], backends


def test_an_utterance_lost_in_a_media_gap_is_said_again(stack: World, tmp_path: Path) -> None:
    tx = stack.tx[1]
    c1 = next(c for c in stack.lab.clients() if c.name == "c1")
    router = stack.lab.namespace("inet")
    gap = f"""
table ip {TABLE} {{
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        ip saddr {c1.address} udp dport 3478 counter drop
    }}
}}
"""

    def lift_after(seconds: float) -> int:
        """Close the gap after ``seconds``; the number of the client's packets it dropped."""
        time.sleep(seconds)
        out = netns.run(router, ["nft", "list", "chain", "ip", TABLE, "pre"])
        netns.run(router, ["nft", "delete", "table", "ip", TABLE])
        return int(out.split("counter packets ", 1)[1].split()[0])

    async def call() -> tuple[VoiceClient, dict[str, Any], int]:
        client = VoiceClient(tx.url)
        async with aiohttp.ClientSession() as http:
            await client.connect(http)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(nft, router, gap, tmp_path)
            # The whole first utterance (600 ms + 100 ms of silence) falls into the gap.
            lifted = asyncio.ensure_future(asyncio.to_thread(lift_after, 1.2))
            turn = await take_turn(client, 1, 440.0, timeout=10, repeats=1)
            lost = await lifted
            await client.hangup(http)
        return client, turn, lost

    client, turn, lost = run_in_namespace(stack.client_ns("c1"), call)
    assert lost >= 30, f"the gap dropped only {lost} packets: the utterance was not lost"
    assert turn["repeated"] == 1, turn
    assert client.event_types() == ONE_TURN  # the repeat's, once
    assert abs(turn["heard_hz"] - 440.0) < 5.0, turn
    assert turn["rtt_ms"] is not None and turn["rtt_ms"] < 2000, turn


def test_nft_is_available() -> None:
    """The lab's NAT needs nftables (scripts/programs.txt); say so plainly if it is missing."""
    out = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("nftables")
