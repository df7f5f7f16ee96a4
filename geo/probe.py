"""``icegate probe``: a real synthetic session through each relay of a cluster.

For every relay serving a cluster (and every VIP of that relay) the probe runs what a
user's client runs: the reference WHIP client (:class:`transceiver.client.VoiceClient`,
unmodified aiortc) POSTs an offer to the cluster's signaling URL, keeps only the answer's
candidates on that one VIP (so ICE, DTLS and SRTP can only go through the relay under
test), waits for ``connected``, sends audio for ``talk_s`` and receives the cluster's
audio, then reads RTCP/RTP statistics and hangs up.

Reported per VIP: set-up time (POST -> connected), packets sent and received, and loss
(the receive side's sequence gaps plus what the transceiver's receiver reports say about
ours). A relay whose probe fails is *broken* for the front door (:mod:`geo.health`)
until a later probe succeeds, even while the cluster's transceivers heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from icegate.catalog import Catalog, Relay
from transceiver.client import VoiceClient, silence, tone


@dataclass(frozen=True)
class ProbeResult:
    cluster: str
    relay: str
    vip: str
    ok: bool
    setup_ms: float | None = None
    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    loss_pct: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def only_candidates_on(answer: str, vip: str) -> str:
    """``answer`` with only the ``a=candidate`` lines on ``vip`` (RFC 8839 §5.1: the address is field 5)."""
    kept = []
    for line in answer.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 6 or fields[4] != vip:
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


async def probe_vip(
    signaling_url: str, cluster: str, relay: Relay, vip: str, *, talk_s: float = 0.6, timeout: float = 10.0
) -> ProbeResult:
    """One synthetic session through ``vip``; never raises (a failure is a result)."""
    client = VoiceClient(signaling_url)

    def failed(error: str) -> ProbeResult:
        return ProbeResult(cluster, relay.name, vip, ok=False, error=error)

    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout + talk_s + 5):
            try:
                offer = await client.offer()
                started = time.monotonic()
                async with http.post(
                    f"{signaling_url}/v1/sessions", data=offer, headers={"Content-Type": "application/sdp"}
                ) as resp:
                    body = await resp.text()
                    if resp.status != 201:
                        return failed(f"POST {resp.status}: {body[:200]}")
                    client.location = resp.headers.get("Location")
                answer = only_candidates_on(body, vip)
                if "a=candidate:" not in answer:
                    return failed(f"the answer has no candidate on {vip}")
                await client.accept(answer, started, timeout)
                assert client.setup_s is not None
                client.mic.play(tone(440.0, int(talk_s * 1000)))
                await asyncio.sleep(talk_s + 0.3)
                client.mic.play(silence(100))
                stats = await client.rtp_stats()
            finally:
                await client.hangup(http)
    except Exception as exc:  # the result says what failed; the caller judges
        return failed(f"{type(exc).__name__}: {exc}".strip())
    sent = int(stats.get("up_packets_sent", 0))
    received = int(stats.get("down_packets_received", 0))
    lost = max(0, int(stats.get("down_packets_lost", 0))) + max(0, int(stats.get("up_packets_lost", 0)))
    total = sent + received + int(stats.get("down_packets_lost", 0))
    ok = received > 0 and sent > 0
    return ProbeResult(
        cluster,
        relay.name,
        vip,
        ok=ok,
        setup_ms=round(client.setup_s * 1000, 1),
        packets_sent=sent,
        packets_received=received,
        packets_lost=lost,
        loss_pct=round(100.0 * lost / total, 2) if total else None,
        error=None if ok else "no media in one direction",
    )


async def probe_cluster(
    catalog: Catalog,
    cluster: str,
    *,
    family: str = "any",
    talk_s: float = 0.6,
    timeout: float = 10.0,
    signaling_url: str | None = None,
) -> list[ProbeResult]:
    """Probe every VIP (of ``family``: 4, 6 or any) of every relay serving ``cluster``, one at a time."""
    target = catalog.cluster(cluster)
    url = signaling_url or target.signaling_url
    results = []
    for relay in catalog.relays_of(cluster):
        vips = [v for v in relay.vips if family == "any" or (":" in v) == (family == "6")]
        for vip in vips:
            results.append(await probe_vip(url, cluster, relay, vip, talk_s=talk_s, timeout=timeout))
    return results


def relay_verdicts(results: list[ProbeResult]) -> dict[str, bool]:
    """A relay is healthy when every VIP of it that was probed carried a session."""
    verdicts: dict[str, bool] = {}
    for r in results:
        verdicts[r.relay] = verdicts.get(r.relay, True) and r.ok
    return verdicts
