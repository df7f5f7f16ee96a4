"""Built-in voice agents served over the agent protocol (:mod:`transceiver.agent_protocol`).

``icegate agent run --kind echo|tone --listen host:port`` serves one of them on a
WebSocket at ``/``; the transceiver connects once per session.

- ``echo`` replays each utterance once the transceiver reports its endpoint
  (``speech_stopped``), trimmed to the speech plus a short pre-roll and tail.
- ``tone`` answers every utterance with a tone (440 Hz, 300 ms by default): the
  shortest possible response, used to measure turn latency.

Responses are sent as fast as the socket takes them; the transceiver paces them to the
client. A new utterance or a ``barge_in`` ends the response in progress
(``response_done`` with ``interrupted: true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from typing import Literal

import numpy as np
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from icegate.errors import WireError
from icegate.observe import http_responses, register_process
from transceiver.agent_protocol import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    TO_AGENT,
    Event,
    EventType,
    check_frame,
    decode_event,
    event,
)

logger = logging.getLogger(__name__)

AgentKind = Literal["echo", "tone"]
PREROLL_FRAMES = 2  # replayed before the detected onset: the VAD needs a few frames to be sure
TAIL_FRAMES = 3  # kept after the last loud frame: the decay of the last syllable
MAX_UTTERANCE_FRAMES = 30 * 50  # 30 s


def tone_frames(hz: float = 440.0, ms: int = 300, amplitude: float = 0.3) -> list[bytes]:
    """``ms`` of a sine at ``hz`` as whole 20 ms frames of s16le mono."""
    frames = max(1, ms // 20)
    t = np.arange(frames * FRAME_SAMPLES) / SAMPLE_RATE
    wave = (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    return [chunk.tobytes() for chunk in wave.reshape(frames, FRAME_SAMPLES)]


class Agent:
    """One session's agent: reacts to events and frames, answers with responses."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._response: asyncio.Task[None] | None = None

    async def on_frame(self, pcm: bytes) -> None:
        """One 20 ms frame of the user's audio."""

    async def on_utterance_start(self, onset_frames: int) -> None:
        """The user started speaking; the last ``onset_frames`` frames were speech."""

    async def on_utterance_end(self, trailing_frames: int) -> None:
        """The user's turn ended; the last ``trailing_frames`` frames were not speech."""

    async def on_event(self, ev: Event) -> None:
        if ev.type is EventType.SPEECH_STARTED:
            await self.on_utterance_start(int(ev.get("onset_frames", 0)))
        elif ev.type is EventType.SPEECH_STOPPED:
            await self.on_utterance_end(int(ev.get("trailing_frames", 0)))
        elif ev.type in (EventType.BARGE_IN, EventType.SESSION_ENDED):
            await self.stop_response()

    def respond(self, frames: Sequence[bytes]) -> None:
        """Start sending a response (ending the one in progress first)."""
        previous = self._response
        self._response = asyncio.create_task(self._send(next(self._ids), list(frames), previous))

    async def stop_response(self) -> None:
        task, self._response = self._response, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send(self, response: int, frames: list[bytes], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        interrupted = True
        await self.ws.send_str(event(EventType.RESPONSE_STARTED, response=response).encode())
        try:
            for frame in frames:
                await self.ws.send_bytes(frame)
            interrupted = False
        finally:
            if not self.ws.closed:
                done = event(EventType.RESPONSE_DONE, response=response, interrupted=interrupted)
                # Shielded: a cancelled response still owes the transceiver its response_done.
                await asyncio.shield(self.ws.send_str(done.encode()))


class EchoAgent(Agent):
    def __init__(self, ws: web.WebSocketResponse) -> None:
        super().__init__(ws)
        self._recent: deque[bytes] = deque(maxlen=PREROLL_FRAMES + 50)
        self._utterance: list[bytes] | None = None

    async def on_frame(self, pcm: bytes) -> None:
        if self._utterance is None:
            self._recent.append(pcm)
        elif len(self._utterance) < MAX_UTTERANCE_FRAMES:
            self._utterance.append(pcm)

    async def on_utterance_start(self, onset_frames: int) -> None:
        keep = min(len(self._recent), onset_frames + PREROLL_FRAMES)
        self._utterance = list(self._recent)[len(self._recent) - keep :]
        self._recent.clear()

    async def on_utterance_end(self, trailing_frames: int) -> None:
        if self._utterance is None:
            return
        utterance, self._utterance = self._utterance, None
        cut = max(0, trailing_frames - TAIL_FRAMES)
        if cut:
            utterance = utterance[: len(utterance) - cut]
        if utterance:
            self.respond(utterance)


class ToneAgent(Agent):
    def __init__(self, ws: web.WebSocketResponse, frames: Sequence[bytes]) -> None:
        super().__init__(ws)
        self._frames = frames

    async def on_utterance_end(self, trailing_frames: int) -> None:
        self.respond(self._frames)


def make_app(kind: AgentKind, *, tone_hz: float = 440.0, tone_ms: int = 300) -> web.Application:
    """An aiohttp application serving agents of ``kind`` on ``GET /`` (WebSocket), and
    its metrics on ``GET /metrics`` (``icegate_agent_*``, ``process_*``)."""
    tone = tone_frames(tone_hz, tone_ms)
    registry = CollectorRegistry(auto_describe=True)
    register_process(registry, "agent")
    connections = Gauge(
        "icegate_agent_connections", "Sessions connected to this agent now.", registry=registry
    )
    sessions = Counter("icegate_agent_sessions", "Sessions this agent served.", registry=registry)

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=FRAME_BYTES * 4)
        await ws.prepare(request)
        agent: Agent = EchoAgent(ws) if kind == "echo" else ToneAgent(ws, tone)
        connections.inc()
        sessions.inc()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await agent.on_frame(check_frame(msg.data))
                elif msg.type == WSMsgType.TEXT:
                    ev = decode_event(msg.data, TO_AGENT)
                    await agent.on_event(ev)
                    if ev.type is EventType.SESSION_ENDED:
                        logger.info("session ended reason=%s", ev.get("reason"))
                        break
        except WireError as exc:
            logger.warning("agent protocol error action=close error=%s", exc)
            await ws.close(code=1003, message=str(exc).encode()[:120])
        finally:
            connections.dec()
            await agent.stop_response()
            await ws.close()
        return ws

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[http_responses(registry, "icegate_agent")])
    app.router.add_get("/", handle)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(
    kind: AgentKind, host: str, port: int, *, tone_hz: float = 440.0, tone_ms: int = 300
) -> web.AppRunner:
    """Start serving; the caller owns the runner (``await runner.cleanup()``)."""
    runner = web.AppRunner(make_app(kind, tone_hz=tone_hz, tone_ms=tone_ms), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
