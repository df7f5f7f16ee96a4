"""An agent written from docs/AGENT_PROTOCOL.md alone, against the real bridge.

``DocAgent`` imports nothing from icegate: plain aiohttp, json and numpy, following the
document's §9 checklist (8 kHz in, 24 kHz out, 40 ms frames, its own pacing, string
response ids, transcripts, hangup). If the bridge and the document drift apart, this fails.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

from labkit.support import Processes, free_port, wait_for
from transceiver.agent_protocol import FRAME_SAMPLES
from transceiver.bridge import SILENCE, MediaBridge
from transceiver.client import dominant_frequency, silence, tone
from transceiver.config import VadConfig

REPO = Path(__file__).resolve().parents[2]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


LOG: list[dict[str, Any]] = []  # events the agent received
FRAMES: list[int] = []  # frames of caller audio it received, per call


async def doc_agent(request: web.Request) -> web.WebSocketResponse:
    """§9: accept, read every frame, answer on end_of_turn, obey barge_in and hangup."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    log = LOG
    hello = json.loads((await ws.receive()).data)
    assert hello["type"] == "hello" and hello["version"] == 1
    assert 8000 in hello["audio"]["input_rates"] and 24000 in hello["audio"]["output_rates"]
    assert 40 in hello["audio"]["frame_ms"]
    await ws.send_json({"type": "accept", "version": 1, "input_rate": 8000, "output_rate": 24000,
                        "input_frame_ms": 40, "output_frame_ms": 40})  # fmt: skip
    frames = 0
    sending: asyncio.Task[None] | None = None

    async def answer(turn: int) -> None:
        rid = f"answer-{turn}"
        await ws.send_json({"type": "transcript", "role": "agent", "text": f"turn {turn}"})
        await ws.send_json({"type": "response_started", "response": rid})
        t = np.arange(24000) / 24000  # 1 s at 24 kHz, 40 ms (960 samples) a frame
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 700 * t)).astype("<i2")
        start = time.monotonic()
        try:
            for i in range(25):
                ahead = i * 0.04 - (time.monotonic() - start)
                if ahead > 0.5:
                    await asyncio.sleep(ahead - 0.5)
                await ws.send_bytes(pcm[i * 960 : (i + 1) * 960].tobytes())
        finally:
            await ws.send_json({"type": "response_done", "response": rid})

    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            assert len(msg.data) == 640  # 40 ms at 8 kHz
            frames += 1
            continue
        ev = json.loads(msg.data)
        log.append(ev)
        if ev["type"] == "end_of_turn":
            sending = asyncio.create_task(answer(ev["turn"]))
        elif ev["type"] == "barge_in" and sending is not None:
            sending.cancel()
        elif ev["type"] == "hangup":
            break
    FRAMES.append(frames)
    await ws.close()
    return ws


def test_an_agent_written_from_the_document() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        app = web.Application()
        app.router.add_get("/", doc_agent)
        server = TestServer(app)
        await server.start_server()
        sent: list[dict[str, Any]] = []

        class Channel:
            readyState = "open"

            def send(self, data: str) -> None:
                sent.append(json.loads(data))

        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("/")).replace("http", "ws")
            bridge = MediaBridge(
                "doc", VadConfig(threshold_db=-40.0, silence_ms=400), agent_url=url, http=http
            )
            bridge.events = Channel()
            await bridge.connect_agent()
            try:
                for chunk in np.concatenate([tone(300.0, 400), silence(600)]).reshape(-1, FRAME_SAMPLES):
                    await bridge.input_frame(chunk.tobytes())
                heard: list[bytes] = []
                deadline = time.monotonic() + 5
                while not any(e["type"] == "response_done" for e in sent):
                    assert time.monotonic() < deadline, sent
                    if bridge._playout:
                        heard.append(bridge.next_playout_frame())
                    else:
                        await asyncio.sleep(0.005)
                audio = [f for f in heard if f is not SILENCE]
                assert 49 <= len(audio) <= 51  # 1 s at 24 kHz / 40 ms -> 20 ms frames at 48 kHz
                assert abs(dominant_frequency(np.frombuffer(b"".join(audio[2:-2]), "<i2")) - 700) < 5
            finally:
                await bridge.close("completed")
        await asyncio.sleep(0.1)
        await server.close()
        return LOG, sent, FRAMES[0]

    log, sent, frames = asyncio.run(main())
    assert [e["type"] for e in log] == ["speech_started", "speech_stopped", "end_of_turn", "hangup"]
    assert log[-1] == {"type": "hangup", "reason": "completed"}
    assert frames >= 20  # 1 s of caller audio at 40 ms frames, minus the resampler's delay
    assert [e["type"] for e in sent][3:] == ["transcript", "response_started", "response_done"]
    assert sent[-1] == {"type": "response_done", "response": "answer-1", "interrupted": False}


def test_the_agent_an_outsider_wrote_from_the_document_passes_the_check(procs: Processes) -> None:
    """examples/raw_protocol_agent.py was written from the document alone by someone who had
    not seen the code (issue 17's check); it must keep passing ``icegate agent check``: the
    16/24 kHz negotiation, its transcripts and data, and all 700 ms of its answer."""
    port = free_port()
    agent = procs.start(
        [sys.executable, str(REPO / "examples" / "raw_protocol_agent.py"), "--port", str(port)]
    )
    wait_for(lambda: agent.poll() is None and port_open(port), 10, what="the example agent listening")
    done = subprocess.run(
        [sys.executable, "-c", "from icegate.cli import main; main()", "agent", "check",
         f"ws://127.0.0.1:{port}/", "--json"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report
    assert report["negotiated"] == {
        "input": {"rate": 16000, "frame_ms": 20},
        "output": {"rate": 24000, "frame_ms": 20},
    }
    assert report["response_ms"] == 700
    assert report["events"][3:] == ["transcript", "transcript", "data", "response_started", "response_done"]
