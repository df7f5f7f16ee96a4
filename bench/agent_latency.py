"""Voice latency through the relay: turn latency split, barge-in stop time, agent death report time (root).

    .venv/bin/python -m bench.agent_latency [--mode userspace|xdp|auto] [--turns 8] [--out bench/results]
                                            [--lab-name agentsl]

A lab started the way the demo starts it (:meth:`labkit.demo.Demo.up`), with tx1's agent
replaced by a tone agent whose answers last 4 s, so every answer can be barged into. One
client (:class:`transceiver.client.VoiceClient`, an unmodified aiortc peer, in namespace
c1) talks to tx1 through the relay VIP. All times are ``time.monotonic()`` in this one
process (the clock is the machine's, the same in every namespace).

1. **Turn latency**, per turn: the client says 600 ms of tone; from the end of its
   speech (the mic's clock) to the first loud frame of the answer at the client's
   speaker, split with the events the transceiver sends on the data channel:

   - *endpointing wait* = ``end_of_turn`` arrives - end of speech: the configured
     silence (hangover + silence_ms) plus the uplink (network, the transceiver's jitter
     buffer and decoder) and the VAD's frame granularity;
   - *agent* = ``response_started`` arrives - ``end_of_turn`` arrives: the event to the
     agent, the agent's reaction, its first frame back, the wait for the 20 ms playout tick
     (``response_started`` leaves the transceiver with the response's first frame);
   - *jitter buffer + network* = first loud frame heard - ``response_started`` arrives:
     the downlink: RTP through the relay, the client's jitter buffer, Opus decoding.

   Run twice: the client's aiortc jitter buffer as shipped (prefetch 4 packets) and with
   a prefetch of 1 (what a latency-tuned client would use).
2. **Barge-in**: 0.5 s into each answer the client speaks again: from the start of that
   speech to the ``barge_in`` event and to the last loud frame of the answer at the
   client (the audio stops). Includes the VAD's ``start_ms`` (60 ms) of speech needed to
   decide it is speech.
3. **Agent death**: mid-answer, the agent process is killed (SIGKILL: the socket closes)
   or frozen (SIGSTOP: the socket stays open, pings go unanswered); from the signal to
   the ``error`` event at the client, and to the ``hangup``. The agent is restarted between.

Numbers are reported, never judged (the tests assert the behaviour, not the speed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc.jitterbuffer import JitterBuffer

from bench import report
from bench.lab.exits import lab_exit_codes
from icegate.errors import IcegateError
from labkit.clients import run_in_namespace
from labkit.demo import AGENT_PORT, Demo, Options, Progress, http_get, wait_until
from transceiver.client import VoiceClient, loud, silence, tone

NAME = "agent_latency"
LAB_NAME = "agentsl"
CLIENT_HOST = "c1"
TX = "tx1"
ANSWER_MS = 4000
SPEECH_MS = 600
HEAR_BEFORE_BARGE_S = 0.5
PREFETCHES = (4, 1)  # aiortc's audio jitter buffer as shipped, and tuned for latency
QUIET_RUN = 5  # consecutive quiet frames that mean the agent's audio has stopped


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def set_prefetch(client: VoiceClient, prefetch: int) -> None:
    """Replace the client's audio jitter buffer (aiortc has no setting for it)."""
    for transceiver in client.pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=prefetch)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise IcegateError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)
    return value


def audio_stopped_at(client: VoiceClient, after: float) -> float | None:
    """Arrival of the first quiet frame after ``after`` that starts a run of quiet frames."""
    frames = [(t, f) for t, f in zip(client.heard.arrivals, client.heard.frames, strict=True) if t >= after]
    for i in range(len(frames) - QUIET_RUN):
        if not any(loud(f) for _, f in frames[i : i + QUIET_RUN]):
            return frames[i][0]
    return None


async def speak(client: VoiceClient) -> tuple[float, float]:
    """Say SPEECH_MS of tone; (start, end) of the speech on the mic's clock."""
    client.mic.play(np.concatenate([tone(300.0, SPEECH_MS), silence(100)]))
    started = await until(lambda: client.mic.script_started, 2.0, "the mic to start")
    return started, started + SPEECH_MS / 1000


async def conversation(url: str, turns: int, prefetch: int) -> dict[str, Any]:
    client = VoiceClient(url)
    samples: list[dict[str, Any]] = []
    barge: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        try:
            await client.offer()
            set_prefetch(client, prefetch)
            # connect() makes its own offer: reuse the one made, as connect does
            async with http.post(f"{url}/v1/sessions", data=client.pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as resp:  # fmt: skip
                body = await resp.text()
                assert resp.status == 201, body
                client.location = resp.headers["Location"]
            await client.accept(body, time.monotonic())
            await asyncio.sleep(0.5)
            for k in range(1, turns + 1):
                start, end = await speak(client)
                if k > 1:  # this speech barges into the previous answer
                    event_at = await client.wait_event("barge_in", count=k - 1)
                    await asyncio.sleep(0.3)
                    stop = audio_stopped_at(client, start)
                    barge.append(
                        {"event_ms": ms(event_at - start), "audio_stop_ms": ms(stop and stop - start)}
                    )
                eot = await client.wait_event("end_of_turn", count=k)
                started = await client.wait_event("response_started", count=k)
                first = await until(lambda e=end: client.heard.first_loud_after(e), 5.0, "the answer")  # type: ignore[misc]
                samples.append(
                    {
                        "turn_ms": ms(first - end),
                        "endpointing_ms": ms(eot - end),
                        "agent_ms": ms(started - eot),
                        "downlink_ms": ms(first - started),
                    }
                )
                await asyncio.sleep(HEAR_BEFORE_BARGE_S)
        finally:
            await client.hangup(http)
    return {"prefetch": prefetch, "turns": samples, "barge_in": barge}


async def death(url: str, kill: Callable[[], float]) -> dict[str, Any]:
    """Mid-answer, ``kill()`` the agent (returns when it signalled); times to error and hang-up."""
    client = VoiceClient(url)
    async with aiohttp.ClientSession() as http:
        try:
            await client.connect(http)
            await asyncio.sleep(0.3)
            _, end = await speak(client)
            await until(lambda: client.heard.first_loud_after(end), 5.0, "the answer")
            await asyncio.sleep(0.3)
            signalled = await asyncio.to_thread(kill)
            error_at = await client.wait_event("error", timeout=5.0)
            hangup_at = await client.wait_event("hangup", timeout=5.0)
            await until(lambda: client.pc.connectionState in ("closed", "failed"), 5.0, "the call to end")
            ended = time.monotonic()
            return {
                "error_ms": ms(error_at - signalled),
                "hangup_ms": ms(hangup_at - signalled),
                "closed_ms": ms(ended - signalled),
                "error": next(e for _, e in client.events if e["type"] == "error"),
            }
        finally:
            await client.hangup(None)


def restart_agent(demo: Demo) -> int:
    lab = demo.lab
    if lab.process(f"agent-{TX}") is not None:
        lab.stop_process(f"agent-{TX}")
    argv = [*demo.icegate, "agent", "run", "--kind", "tone", "--listen", f"127.0.0.1:{AGENT_PORT}",
            "--tone-ms", str(ANSWER_MS)]  # fmt: skip
    lab.start_process(f"agent-{TX}", TX, argv)
    namespace = lab.namespace(TX)
    wait_until(lambda: http_get(namespace, f"http://127.0.0.1:{AGENT_PORT}/")[0] != 0, 20, "the agent")
    record = lab.process(f"agent-{TX}")
    assert record is not None
    return record.pid


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(v), 1), "min": v[0], "max": v[-1], "n": len(v)}


def measure(demo: Demo, turns: int, say: Progress) -> dict[str, Any]:
    lab = demo.lab
    url = lab.transceiver(TX).signaling_url
    client_ns = lab.namespace(CLIENT_HOST)
    restart_agent(demo)
    vad = {"start_ms": 60, "hangover_ms": 100, "silence_ms": 500}  # the transceiver's defaults
    out: dict[str, Any] = {"mode": demo.options.mode, "datapath": demo.datapath, "vad": vad, "runs": []}
    for prefetch in PREFETCHES:
        say(f"{turns} turns, client jitter buffer prefetch {prefetch}")
        run = run_in_namespace(client_ns, lambda p=prefetch: conversation(url, turns, p))  # type: ignore[misc]
        run["summary"] = {
            key: summary([t[key] for t in run["turns"]])
            for key in ("turn_ms", "endpointing_ms", "agent_ms", "downlink_ms")
        } | {
            f"barge_{key}": summary([b[key] for b in run["barge_in"]])
            for key in ("event_ms", "audio_stop_ms")
        }
        out["runs"].append(run)
        s = run["summary"]
        say(f"turn {s['turn_ms']['median']} ms (endpointing {s['endpointing_ms']['median']}, agent "
            f"{s['agent_ms']['median']}, downlink {s['downlink_ms']['median']}); barge-in audio stop "
            f"{s['barge_audio_stop_ms']['median']} ms")  # fmt: skip
    out["death"] = {}
    for how, signum in (("killed", signal.SIGKILL), ("frozen", signal.SIGSTOP)):
        pid = restart_agent(demo)

        def kill(pid: int = pid, signum: int = signum) -> float:
            os.kill(pid, signum)
            return time.monotonic()

        result = run_in_namespace(client_ns, lambda k=kill: death(url, k))  # type: ignore[misc]
        if signum == signal.SIGSTOP:
            os.kill(pid, signal.SIGKILL)
        out["death"][how] = result
        say(f"agent {how}: error after {result['error_ms']} ms, hang-up after {result['hangup_ms']} ms")
    restart_agent(demo)
    return out


COLUMNS = ("client jitter buffer", "turn ms", "endpointing wait", "agent", "jitter buffer + network",
           "barge-in event", "barge-in audio stops")  # fmt: skip


def table(data: Mapping[str, Any]) -> str:
    rows = []
    for run in data["runs"]:
        s = run["summary"]
        rows.append([f"prefetch {run['prefetch']}", s["turn_ms"]["median"], s["endpointing_ms"]["median"],
                     s["agent_ms"]["median"], s["downlink_ms"]["median"], s["barge_event_ms"]["median"],
                     s["barge_audio_stop_ms"]["median"]])  # fmt: skip
    vad = data["vad"]
    wait = vad["hangover_ms"] + vad["silence_ms"]
    text = (
        f"Relay {data['datapath']}; endpointing: hangover {vad['hangover_ms']} + silence "
        f"{vad['silence_ms']} ms = {wait} ms configured; medians of {data['turns']} turns (ms)\n\n"
    )
    text += report.markdown_table(COLUMNS, rows)
    text += "\n| agent death | error event at the client | hang-up | call closed |\n|---|---|---|---|\n"
    for how, d in data["death"].items():
        text += f"| {how} | {d['error_ms']} | {d['hangup_ms']} | {d['closed_ms']} |\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["auto", "xdp", "userspace"], default="userspace")
    parser.add_argument("--turns", type=int, default=8, help="turns per jitter-buffer setting (default 8)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    parser.add_argument(
        "--lab-name", default=LAB_NAME, help=f"lab name, namespace prefix (default {LAB_NAME})"
    )
    args = parser.parse_args()
    if args.turns < 2:
        parser.error("--turns must be at least 2 (barge-in needs an answer to interrupt)")
    say = Progress()
    say(f"bench.agent_latency: relay mode {args.mode}, {args.turns} turns per run, lab {args.lab_name}")
    demo = Demo(Options(agent="tone", mode=args.mode, lab_name=args.lab_name), say)
    with lab_exit_codes(say), demo.running():
        data = measure(demo, args.turns, say)
    data["turns"] = args.turns
    json_path, md_path = report.write(NAME, data, table(data), args.out)
    say(f"wrote {json_path} and {md_path}")
    print(table(data), end="")


if __name__ == "__main__":
    sys.exit(main())
