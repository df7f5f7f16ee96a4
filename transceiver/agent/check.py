"""``icegate agent check URL``: an agent put through one call as the transceiver would make it.

No WebRTC: the real :class:`transceiver.bridge.MediaBridge` connects to the agent, shakes
hands, feeds it a spoken turn (600 ms of tone, then silence until the endpoint) faster
than real time, plays out whatever comes back, then hangs up. The report says what was
negotiated, which events came back, how long the agent took from ``end_of_turn`` to its
first frame, whether its audio fit the protocol, and every problem the bridge counted
(docs/AGENT_PROTOCOL.md §9 is the checklist this follows).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import numpy as np

from transceiver.agent_protocol import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from transceiver.bridge import SILENCE, MediaBridge
from transceiver.config import AgentLinkConfig, VadConfig

SPEECH_MS = 600
VAD = VadConfig()


class _Collect:
    readyState = "open"

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []

    def send(self, data: str) -> None:
        self.events.append((time.monotonic(), json.loads(data)))

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.events]


def _utterance() -> np.ndarray:
    t = np.arange(SAMPLE_RATE * SPEECH_MS // 1000) / SAMPLE_RATE
    speech = (0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    endpoint = (VAD.hangover_ms + VAD.silence_ms + 200) * SAMPLE_RATE // 1000
    return np.concatenate([speech, np.zeros(endpoint, "<i2")])


async def check(url: str, *, timeout: float = 10.0, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    channel = _Collect()
    report: dict[str, Any] = {"url": url, "ok": False, "problems": []}
    problems: list[str] = report["problems"]
    async with aiohttp.ClientSession() as http:
        bridge = MediaBridge("agent-check", VAD, agent_url=url, http=http, link=AgentLinkConfig(),
                             metadata=metadata or {})  # fmt: skip
        bridge.events = channel
        try:
            await bridge.connect_agent()
            described = bridge.describe()
            report["negotiated"] = {"input": described["input"], "output": described["output"]}
            if bridge.agent_state != "connected":
                said = str(channel.events[0][1].get("message")) if channel.events else "failed"
                problems.append(said if said.startswith("handshake") else f"handshake: {said}")
                report["events"] = channel.types()
                return report
            for chunk in _utterance().reshape(-1, FRAME_SAMPLES):
                await bridge.input_frame(chunk.tobytes())
            eot = next(t for t, e in channel.events if e["type"] == "end_of_turn")
            first: float | None = None
            frames = 0
            deadline = time.monotonic() + timeout
            while "response_done" not in channel.types() and time.monotonic() < deadline:
                if bridge.agent_state == "failed":
                    break
                if bridge._playout:  # played as fast as it arrives: the timing is the agent's
                    if bridge.next_playout_frame() is not SILENCE:
                        frames += 1
                        first = first or time.monotonic()
                else:
                    await asyncio.sleep(0.002)
            report["events"] = channel.types()
            report["first_frame_ms"] = None if first is None else round((first - eot) * 1000, 1)
            report["response_ms"] = frames * FRAME_MS
            if "response_started" not in channel.types():
                problems.append(f"no response_started within {timeout:g} s of end_of_turn")
            elif "response_done" not in channel.types():
                problems.append(f"no response_done within {timeout:g} s")
            if frames == 0 and "response_started" in channel.types():
                problems.append("the response carried no audio")
        finally:
            await bridge.close("completed")
        report["counters"] = dict(bridge.counters)
        problems += [f"{reason}: {n}" for reason, n in sorted(bridge.counters.items())]
        errors = [e for _, e in channel.events if e["type"] == "error"]
        problems += [f"error {e.get('code')}: {e.get('message')}" for e in errors]
    report["ok"] = not problems
    return report
