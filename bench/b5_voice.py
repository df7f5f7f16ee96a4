"""B5: mouth-to-ear through the relay vs direct, turn latency and barge-in with Chromium and aiortc (root).

    .venv/bin/python -m bench.b5_voice [--mode xdp|userspace|auto] [--rounds 6] [--turns 6] [--bursts 8]
                                       [--receive-prefetch N] [--quick] [--out bench/results]
                                       [--lab-name b5v]

A lab started the way the demo starts it (:meth:`labkit.demo.Demo.up`). Beside tx1, in its
namespace, the direct peer: :mod:`bench.b5_direct`, the transceiver's own media path
(bridge, VAD, agent link, playout) on a plain aiortc peer with host candidates, no relay
and no tunnel, talking to the same agent process as tx1. Clients run in namespace c1:
an unmodified headless Chromium (``bench/b5_page.html``) and aiortc
(:class:`transceiver.client.VoiceClient`). Every figure is a median over rounds that
alternate the targets, with the load average at the time.

1. **Mouth-to-ear**: tx1's agent is :class:`transceiver.agent.builtin.LoopbackAgent`
   (each burst's first loud frame sent back at once; sessions ask ``vad.start_ms=10000``
   so a burst is never taken for a barge-in). Per round, one session through the relay
   VIP and one direct, the order alternating; bursts of 100 ms, from the burst's start to
   its first loud sample heard. Chromium times both on its AudioContext's clock; aiortc
   on ``time.monotonic()`` (mic frame sent, decoded frame out of its jitter buffer).
   The transceiver's 20 ms playout clock has a random phase per session, so each
   session's figure carries up to 20 ms of it: medians over many sessions. What the
   relay can change, the network path, is also measured exactly in the same sessions:
   the round trips of RTCP (both clients) and of Chromium's STUN consent checks.
2. **Turn latency and barge-in**: tx1's agent answers every turn with 4 s of tone; the
   default endpointing (hangover 100 + silence 500 ms). Chromium: 600 ms of speech, from
   its end to the answer's first loud block, split with the data-channel events
   (endpointing wait, agent, jitter buffer + network) mapped onto the audio clock; the
   next speech starts 0.5 s into the answer: from its start to the answer's audio
   stopping; ``rounds // 3`` conversations per target, alternating; Chromium's NetEq
   delay from getStats. aiortc: :func:`bench.agent_latency.conversation` through the
   relay, its jitter buffer as shipped (prefetch 4) and tuned (prefetch 1).

``--receive-prefetch N`` first restarts tx1 (and starts the direct peer) with
``agent.receive_prefetch_packets: N``: the before/after of the transceiver's receive buffer
(results in ``b5_voice_prefetchN.*``).

Numbers are reported, never judged (the test only checks that ``--quick`` runs and writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from yarl import URL

from bench import agent_latency, report
from bench.lab.exits import lab_exit_codes
from icegate.errors import IcegateError
from labkit.browser import CHROMIUM, FLAGS, MEDIA_FLAGS, PageServer, first_report
from labkit.clients import run_in_namespace
from labkit.demo import AGENT_PORT, Demo, Options, Progress, http_get, wait_until
from labkit.support import REPO
from transceiver.client import VoiceClient, silence, tone

NAME = "b5_voice"
LAB_NAME = "b5v"
CLIENT_HOST = "c1"
TX = "tx1"
DIRECT_PORT = 8082
PAGE = Path(__file__).with_name("b5_page.html")
LOOPBACK = ["--app", "transceiver.agent.builtin:LoopbackAgent"]
ANSWER_MS = 4000
TONE = ["--kind", "tone", "--tone-ms", str(ANSWER_MS)]
M2E_QUERY = {"vad.start_ms": "10000"}  # no burst is ever a turn, so never a barge-in
BURST_MS = 100
BURST_EVERY_MS = 400
TARGETS = ("relay", "direct")
CONFIGURED_MS = 600  # hangover 100 + silence 500: the transceiver's default endpointing


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"median": None, "p90": None, "min": None, "max": None, "n": 0}
    p90 = v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
    return {"median": round(statistics.median(v), 1), "p90": p90, "min": v[0], "max": v[-1], "n": len(v)}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ---- agent and direct peer --------------------------------------------------------------------
def restart_agent(demo: Demo, args: list[str]) -> None:
    lab = demo.lab
    if lab.process(f"agent-{TX}") is not None:
        lab.stop_process(f"agent-{TX}")
    lab.start_process(f"agent-{TX}", TX, [*demo.icegate, "agent", "run", "--listen",
                                          f"127.0.0.1:{AGENT_PORT}", *args])  # fmt: skip
    namespace = lab.namespace(TX)
    wait_until(lambda: http_get(namespace, f"http://127.0.0.1:{AGENT_PORT}/")[0] != 0, 20, "the agent")


def set_receive_prefetch(demo: Demo, packets: int) -> None:
    """Restart tx1 with ``agent.receive_prefetch_packets: packets`` (the before/after of a change)."""
    lab = demo.lab
    tx = lab.transceiver(TX)
    path = lab.dir / f"{tx.name}.yaml"
    config = yaml.safe_load(path.read_text())
    config["transceiver"].setdefault("agent", {})["receive_prefetch_packets"] = packets
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    lab.stop_process(tx.name)
    lab.start_process(tx.name, tx.name, [*demo.icegate, "transceiver", "run", "--config", str(path)])
    wait_until(lambda: http_get(tx.namespace, f"{tx.signaling_url}/readyz")[0] == 200, 30, "tx1 restarted")


def start_direct(demo: Demo, receive_prefetch: int | None) -> str:
    lab = demo.lab
    tx = lab.transceiver(TX)
    url = f"http://{tx.address}:{DIRECT_PORT}"
    argv = [sys.executable, "-m", "bench.b5_direct", "--listen", f"{tx.address}:{DIRECT_PORT}",
            "--agent-url", f"ws://127.0.0.1:{AGENT_PORT}/"]  # fmt: skip
    if receive_prefetch is not None:
        argv += ["--receive-prefetch", str(receive_prefetch)]
    lab.start_process("b5-direct", tx.name, argv, cwd=REPO)

    def ready() -> bool:
        demo.alive("b5-direct")
        return http_get(tx.namespace, f"{url}/v1/sessions")[0] == 200

    wait_until(ready, 30, "the direct peer", demo.log("b5-direct"))
    return url


def sessions_url(base: str, query: Mapping[str, str]) -> str:
    return f"{base}/v1/sessions" + (f"?{urllib.parse.urlencode(query)}" if query else "")


# ---- Chromium ---------------------------------------------------------------------------------
def chromium(namespace: str, plan: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Run the page with ``plan`` in a fresh headless Chromium in ``namespace``; its report."""
    if not CHROMIUM:
        raise IcegateError("chromium is not installed: run scripts/setup")
    server = PageServer(namespace, PAGE)
    with tempfile.TemporaryDirectory(prefix="b5-chromium-") as tmp:
        url = f"http://127.0.0.1:{server.port}/?plan={urllib.parse.quote(json.dumps(plan))}"
        argv = [CHROMIUM, *FLAGS, *MEDIA_FLAGS, f"--user-data-dir={tmp}/profile", url]
        result = first_report(namespace, argv, server, Path(tmp) / "chromium.log", timeout)
    if "error" in result:
        raise IcegateError(f"Chromium page: {result['error']}")
    return result


# ---- aiortc mouth-to-ear ---------------------------------------------------------------------
async def aiortc_m2e(url: str, bursts: int) -> dict[str, Any]:
    """One session against ``url`` (with its query): mouth-to-ear of each burst, RTCP's RTT."""
    client = VoiceClient(url)
    samples: list[float | None] = []
    async with aiohttp.ClientSession() as http:
        try:
            offer = await client.offer()
            started = time.monotonic()
            async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise IcegateError(f"POST {url}: {resp.status} {body}")
                client.location = resp.headers["Location"]
                client.session_url = str(resp.url.join(URL(client.location)))
            await client.accept(body, started)
            await asyncio.sleep(0.5)
            script = np.concatenate([tone(300.0, BURST_MS), silence(BURST_EVERY_MS - BURST_MS)])
            for _ in range(bursts):
                client.mic.play(script)
                begun = await agent_latency.until(lambda: client.mic.script_started, 2.0, "the mic")
                await asyncio.sleep((BURST_EVERY_MS - 20) / 1000)
                heard = client.heard.first_loud_after(begun)
                samples.append(ms(heard - begun) if heard is not None and heard - begun < 0.3 else None)
            rtp = await client.rtp_stats()
        finally:
            await client.hangup(http)
    return {"samples": samples, "stats": {"rtcp_rtt_ms": rtp.get("rtcp_rtt_ms")}}


async def aiortc_m2e_rounds(urls: Mapping[str, str], rounds: int, bursts: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in urls}
    for r in range(rounds):
        for name in list(urls)[:: -1 if r % 2 else 1]:
            out[name].append(await aiortc_m2e(urls[name], bursts))
    return out


# ---- the measurement --------------------------------------------------------------------------
def measure(
    demo: Demo, rounds: int, turns: int, bursts: int, receive_prefetch: int | None, say: Progress
) -> dict[str, Any]:
    lab = demo.lab
    client_ns = lab.namespace(CLIENT_HOST)
    relay_base = lab.transceiver(TX).signaling_url
    if receive_prefetch is not None:
        say(f"tx1 and the direct peer: agent.receive_prefetch_packets {receive_prefetch}")
        set_receive_prefetch(demo, receive_prefetch)
    direct_base = start_direct(demo, receive_prefetch)
    out: dict[str, Any] = {"datapath": demo.datapath, "rounds": rounds, "turns": turns, "bursts": bursts,
                           "receive_prefetch": receive_prefetch}  # fmt: skip

    say("mouth-to-ear: tx1's agent loops each burst back")
    restart_agent(demo, LOOPBACK)
    m2e_urls = {"relay": sessions_url(relay_base, M2E_QUERY), "direct": sessions_url(direct_base, M2E_QUERY)}
    m2e: dict[str, Any] = {"load_before": load()}
    plan = {"mode": "m2e", "targets": m2e_urls, "rounds": rounds, "bursts": bursts}
    page = chromium(client_ns, plan, timeout=60 + rounds * 2 * (8 + bursts * 0.5))
    m2e["chromium"] = sessions_summary(page["results"])
    m2e["chromium"]["user_agent"] = page["user_agent"]
    m2e["load_chromium"] = load()
    raw = run_in_namespace(client_ns, lambda: aiortc_m2e_rounds(m2e_urls, rounds, bursts))
    m2e["aiortc"] = sessions_summary(raw)
    m2e["load_after"] = load()
    for client in ("chromium", "aiortc"):
        r, d = m2e[client]["relay"], m2e[client]["direct"]
        m2e[client]["relay_minus_direct_ms"] = (
            None if r["median"] is None or d["median"] is None else round(r["median"] - d["median"], 1)
        )
        say(f"mouth-to-ear {client}: relay {r['median']} (p90 {r['p90']}), direct {d['median']} "
            f"(p90 {d['p90']}) ms; load {m2e['load_after']}")  # fmt: skip
    out["mouth_to_ear"] = m2e

    say("turn latency and barge-in: tx1's agent answers with 4 s of tone")
    restart_agent(demo, TONE)
    turn_urls = {"relay": sessions_url(relay_base, {}), "direct": sessions_url(direct_base, {})}
    t: dict[str, Any] = {"load_before": load(), "configured_ms": CONFIGURED_MS}
    plan = {"mode": "turns", "targets": turn_urls, "rounds": max(1, rounds // 3), "turns": turns}
    page = chromium(client_ns, plan, timeout=60 + plan["rounds"] * 2 * (8 + turns * 2.5))
    t["chromium"] = {name: split([x for s in page["results"][name] for x in s["turns"]],
                                 [x for s in page["results"][name] for x in s["barge_in"]])
                     for name in TARGETS}  # fmt: skip
    t["chromium_samples"] = page["results"]
    for name in TARGETS:
        for key in NETWORK_STATS:
            values = [s["stats"].get(key) for s in page["results"][name] if s["stats"].get(key) is not None]
            t["chromium"][name][key] = round(statistics.median(values), 2) if values else None
    t["load_chromium"] = load()
    for prefetch in agent_latency.PREFETCHES:
        run = run_in_namespace(
            client_ns,
            lambda p=prefetch: agent_latency.conversation(relay_base, turns, p),  # type: ignore[misc]
        )
        t[f"aiortc_prefetch{prefetch}"] = split(run["turns"], run["barge_in"])
        t[f"aiortc_prefetch{prefetch}"]["samples"] = run["turns"]
    t["load_after"] = load()
    for key in ("chromium", "aiortc_prefetch4", "aiortc_prefetch1"):
        s = t[key]["relay"] if key == "chromium" else t[key]
        say(f"turn {key}: {s['turn_ms']['median']} ms = {CONFIGURED_MS} + {s['over_ms']}; barge-in stop "
            f"{s['barge_audio_stop_ms']['median']} ms")  # fmt: skip
    out["turn"] = t
    return out


NETWORK_STATS = ("stun_rtt_ms", "rtcp_rtt_ms", "jitter_buffer_ms", "jitter_buffer_target_ms",
                 "jitter_buffer_minimum_ms")  # fmt: skip


def sessions_summary(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per target: mouth-to-ear over every burst, and the medians of each session's getStats."""
    out: dict[str, Any] = {"sessions": results}
    for name in TARGETS:
        sessions = results[name]
        out[name] = stats([x for s in sessions for x in s["samples"]])
        for key in NETWORK_STATS:
            values = [s["stats"].get(key) for s in sessions if s["stats"].get(key) is not None]
            out[name][key] = round(statistics.median(values), 3) if values else None
    return out


def split(turns: Sequence[Mapping[str, Any]], barge: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {key: stats([x[key] for x in turns])
                         for key in ("turn_ms", "endpointing_ms", "agent_ms", "downlink_ms")}  # fmt: skip
    s |= {f"barge_{key}": stats([b[key] for b in barge]) for key in ("event_ms", "audio_stop_ms")}
    median = s["turn_ms"]["median"]
    s["over_ms"] = None if median is None else round(median - CONFIGURED_MS, 1)
    return s


# ---- the report -------------------------------------------------------------------------------
def table(data: Mapping[str, Any]) -> str:
    m2e, t = data["mouth_to_ear"], data["turn"]
    text = (f"Relay {data['datapath']}; {data['rounds']} alternating rounds x {data['bursts']} bursts; "
            f"load average {m2e['load_before']} -> {m2e['load_after']}\n\n")  # fmt: skip
    rows = []
    for client in ("chromium", "aiortc"):
        c = m2e[client]
        rows.append([client, c["relay"]["median"], c["relay"]["p90"], c["direct"]["median"],
                     c["direct"]["p90"], c["relay_minus_direct_ms"], c["relay"]["n"]])  # fmt: skip
    text += report.markdown_table(
        ("mouth-to-ear (ms)", "relay median", "relay p90", "direct median", "direct p90",
         "relay - direct (median)", "bursts each"), rows)  # fmt: skip
    rows = []
    for client, key in (("chromium", "stun_rtt_ms"), ("chromium", "rtcp_rtt_ms"), ("aiortc", "rtcp_rtt_ms")):
        r, d = m2e[client]["relay"][key], m2e[client]["direct"][key]
        diff = None if r is None or d is None else round(r - d, 3)
        rows.append([f"{client}: {key.removesuffix('_ms').replace('_', ' ')}", r, d, diff])
    text += "\nRound trip of the same sessions (median of the sessions' averages, ms)\n\n"
    text += report.markdown_table(("round trip", "relay", "direct", "relay - direct"), rows)
    text += (f"\nTurn latency, endpointing {CONFIGURED_MS} ms configured (hangover 100 + silence 500); "
             f"load average {t['load_before']} -> {t['load_after']}; medians (ms)\n\n")  # fmt: skip
    rows = []
    labelled = [("Chromium (NetEq as shipped), relay", t["chromium"]["relay"]),
                ("Chromium (NetEq as shipped), direct", t["chromium"]["direct"]),
                ("aiortc as shipped (prefetch 4), relay", t["aiortc_prefetch4"]),
                ("aiortc tuned (prefetch 1), relay", t["aiortc_prefetch1"])]  # fmt: skip
    for label, s in labelled:
        rows.append([label, s["turn_ms"]["median"], s["over_ms"], s["turn_ms"]["p90"],
                     s["endpointing_ms"]["median"], s["agent_ms"]["median"], s["downlink_ms"]["median"],
                     s["barge_event_ms"]["median"], s["barge_audio_stop_ms"]["median"],
                     s["barge_audio_stop_ms"]["p90"], s["turn_ms"]["n"]])  # fmt: skip
    text += report.markdown_table(
        ("client", "turn", "turn - configured", "turn p90", "endpointing wait", "agent",
         "jitter buffer + network", "barge-in event", "barge-in audio stops", "stops p90", "turns"),
        rows)  # fmt: skip
    c = t["chromium"]["relay"]
    text += (f"\nChromium's NetEq in the turn sessions (getStats, relay): average delay "
             f"{c['jitter_buffer_ms']} ms, target {c['jitter_buffer_target_ms']} ms, minimum "
             f"{c['jitter_buffer_minimum_ms']} ms\n")  # fmt: skip
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["auto", "xdp", "userspace"], default="xdp")
    parser.add_argument("--rounds", type=int, default=6, help="alternating mouth-to-ear rounds (default 6)")
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation (default 6)")
    parser.add_argument("--bursts", type=int, default=8, help="bursts per mouth-to-ear session (default 8)")
    parser.add_argument("--receive-prefetch", type=int,
                        help="tx1's agent.receive_prefetch_packets (default: the config's); results: "
                        "b5_voice_prefetchN")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke form: 1 round, 3 bursts, 2 turns")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    parser.add_argument("--lab-name", default=LAB_NAME, help=f"lab name (default {LAB_NAME})")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.turns, args.bursts = 1, 2, 3
    if args.turns < 2:
        parser.error("--turns must be at least 2 (barge-in needs an answer to interrupt)")
    say = Progress()
    say(f"bench.b5_voice: relay mode {args.mode}, lab {args.lab_name}")
    demo = Demo(Options(agent="tone", mode=args.mode, lab_name=args.lab_name), say)
    with lab_exit_codes(say), demo.running():
        data = measure(demo, args.rounds, args.turns, args.bursts, args.receive_prefetch, say)
    name = NAME if args.receive_prefetch is None else f"{NAME}_prefetch{args.receive_prefetch}"
    json_path, md_path = report.write(name, data, table(data), args.out)
    say(f"wrote {json_path} and {md_path}")
    print(table(data), end="")


if __name__ == "__main__":
    sys.exit(main())
