"""The agent SDK: subclass :class:`Agent`, serve it with ``icegate agent run --app module:Class``.

One :class:`Agent` instance per session (per WebSocket). The SDK does the handshake
(docs/AGENT_PROTOCOL.md §2) asking for the class's ``input_rate``/``output_rate``/
``frame_ms``, resamples when the transceiver offers something else, turns events into
typed objects and paces responses to real time within the transceiver's queue (§5)::

    class Parrot(Agent):
        input_rate = 16000

        async def on_end_of_turn(self, ev: EndOfTurn) -> None:
            await self.transcript(f"you spoke for {ev.speech_ms} ms")
            self.respond(self.heard, rate=self.input_rate)

Handlers are coroutines that must not block the event loop for long (the transceiver's
WebSocket pings go unanswered and it declares the agent dead, §7): run recognisers and
synthesisers with ``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from icegate.errors import WireError
from transceiver.agent.serving import WS_CLOSE_PROTOCOL, agent_app, answer_hello, load_spec
from transceiver.agent_protocol import (
    TO_AGENT,
    AudioFormat,
    Event,
    EventType,
    Negotiated,
    answer_formats,
    check_frame,
    decode_event,
    event,
)
from transceiver.audio import PcmConverter

logger = logging.getLogger(__name__)

MAX_LEAD_MS = 1000  # how far ahead of real time a response is sent (bounded by the transceiver's queue)


# -- typed events ----------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    session: str
    metadata: dict[str, Any]
    endpointing: dict[str, Any]
    flow: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted:
    turn: int
    onset_ms: int  # the last onset_ms of audio received were the start of speech
    resumed: bool  # the caller paused and went on within the same turn


@dataclass(frozen=True)
class SpeechStopped:
    turn: int
    trailing_ms: int  # the last trailing_ms of audio received came after the speech


@dataclass(frozen=True)
class EndOfTurn:
    turn: int
    trailing_ms: int
    speech_ms: int
    decision: dict[str, Any]  # the VAD and the thresholds that decided


@dataclass(frozen=True)
class BargeIn:
    turn: int | None
    response: Any  # the response that was cut (None: nothing was playing yet)
    heard_ms: int  # how much of it the transceiver had played to the caller


@dataclass(frozen=True)
class Transcript:
    role: str
    text: str
    final: bool = True


@dataclass(frozen=True)
class Data:
    payload: Any


@dataclass(frozen=True)
class Hangup:
    reason: str


@dataclass(frozen=True)
class Error:
    code: str
    message: str = ""


# -- the base class ----------------------------------------------------------------------


@dataclass
class _Link:
    ws: web.WebSocketResponse
    negotiated: Negotiated
    wanted: Negotiated
    to_agent: PcmConverter  # transceiver's input rate -> the agent's
    flow: dict[str, Any] = field(default_factory=dict)


class Agent:
    """Base class of a voice agent; override the ``on_*`` coroutines you need."""

    input_rate: int = 16000  # the caller's voice, as this agent wants it
    output_rate: int = 16000  # the rate of the PCM this agent's responses are given in
    frame_ms: int = 20

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self._link: _Link | None = None
        self._ids = itertools.count(1)
        self._response: asyncio.Task[None] | None = None
        self.response_id: int | None = None  # the response being sent, if any

    # -- override these ------------------------------------------------------------------

    async def on_start(self, hello: Hello) -> None:
        """The session began (after the handshake)."""

    async def on_audio(self, samples: np.ndarray) -> None:
        """One frame of the caller's voice: int16 at ``input_rate``, ``frame_ms`` long."""

    async def on_speech_started(self, ev: SpeechStarted) -> None: ...

    async def on_speech_stopped(self, ev: SpeechStopped) -> None: ...

    async def on_end_of_turn(self, ev: EndOfTurn) -> None: ...

    async def on_barge_in(self, ev: BargeIn) -> None:
        """The caller spoke over a response; the SDK has already stopped sending it."""

    async def on_transcript(self, ev: Transcript) -> None: ...

    async def on_data(self, ev: Data) -> None: ...

    async def on_hangup(self, ev: Hangup) -> None: ...

    async def on_error(self, ev: Error) -> None:
        logger.warning("transceiver error code=%s message=%s", ev.code, ev.message)

    async def on_close(self) -> None:
        """The socket is closing, whatever the reason: release what the session holds."""

    @classmethod
    def warm_up(cls) -> None:
        """Called once, on a thread, before the server listens: load models here, not per call."""

    # -- actions ------------------------------------------------------------------------

    def respond(self, pcm: np.ndarray, rate: int | None = None) -> int:
        """Start speaking ``pcm`` (int16 mono at ``rate``, default ``output_rate``); returns the response id.

        A response in progress is ended first. Frames are sent at most ``MAX_LEAD_MS``
        (or half the transceiver's queue) ahead of real time."""
        response = next(self._ids)
        previous = self._response
        self._response = asyncio.create_task(self._send(response, pcm, rate or self.output_rate, previous))
        return response

    async def wait_response(self) -> None:
        """Until the response in progress has been sent (or was stopped)."""
        task = self._response
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def stop_response(self) -> None:
        task, self._response = self._response, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def transcript(self, text: str, role: str = "agent", final: bool = True) -> None:
        await self._send_event(event(EventType.TRANSCRIPT, role=role, text=text, final=final))

    async def data(self, payload: Any) -> None:
        await self._send_event(event(EventType.DATA, payload=payload))

    async def hangup(self, reason: str = "done") -> None:
        """End the call once the caller has heard what was sent before."""
        await self.wait_response()
        await self._send_event(event(EventType.HANGUP, reason=reason))

    # -- internals ------------------------------------------------------------------------

    async def _send_event(self, ev: Event) -> None:
        if self._link is not None and not self._link.ws.closed:
            await self._link.ws.send_str(ev.encode())

    async def _send(
        self, response: int, pcm: np.ndarray, rate: int, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        link = self._link
        if link is None:
            return
        out = link.negotiated.output
        converter = PcmConverter(AudioFormat(rate, out.frame_ms), out)
        frames = converter.push(np.asarray(pcm, dtype="<i2").tobytes()) + converter.flush()
        lead_s = min(MAX_LEAD_MS, int(link.flow.get("max_queued_ms", 2 * MAX_LEAD_MS)) // 2) / 1000
        self.response_id = response
        await link.ws.send_str(event(EventType.RESPONSE_STARTED, response=response).encode())
        started = time.monotonic()
        try:
            for i, frame in enumerate(frames):
                ahead = i * out.frame_ms / 1000 - (time.monotonic() - started)
                if ahead > lead_s:
                    await asyncio.sleep(ahead - lead_s)
                await link.ws.send_bytes(frame)
        finally:
            self.response_id = None
            if not link.ws.closed:
                done = event(EventType.RESPONSE_DONE, response=response)
                # Shielded: a cancelled response still owes the transceiver its response_done.
                await asyncio.shield(link.ws.send_str(done.encode()))

    async def _dispatch(self, ev: Event) -> None:
        f = ev.fields
        match ev.type:
            case EventType.SPEECH_STARTED:
                await self.on_speech_started(SpeechStarted(f["turn"], f["onset_ms"], bool(f.get("resumed"))))
            case EventType.SPEECH_STOPPED:
                await self.on_speech_stopped(SpeechStopped(f["turn"], f["trailing_ms"]))
            case EventType.END_OF_TURN:
                await self.on_end_of_turn(
                    EndOfTurn(f["turn"], f["trailing_ms"], f["speech_ms"], f["decision"])
                )
            case EventType.BARGE_IN:
                await self.stop_response()
                await self.on_barge_in(BargeIn(f.get("turn"), f.get("response"), f["heard_ms"]))
            case EventType.TRANSCRIPT:
                await self.on_transcript(Transcript(f["role"], f["text"], bool(f.get("final", True))))
            case EventType.DATA:
                await self.on_data(Data(f["payload"]))
            case EventType.HANGUP:
                logger.info("session ended reason=%s", f["reason"])
                await self.stop_response()
                await self.on_hangup(Hangup(f["reason"]))
            case EventType.ERROR:
                await self.on_error(Error(f["code"], str(f.get("message", ""))))


def wanted_formats(agent: type[Agent]) -> Negotiated:
    """The rates and frame duration ``agent`` asks for."""
    return Negotiated(
        AudioFormat(agent.input_rate, agent.frame_ms), AudioFormat(agent.output_rate, agent.frame_ms)
    )


def choose(hello: Event, agent: type[Agent]) -> tuple[Negotiated, Negotiated]:
    """(what to accept, what the agent wants): its own choices where offered, else 48 kHz/20 ms."""
    wanted = wanted_formats(agent)
    return answer_formats(hello, wanted, "SDK"), wanted


async def run_session(ws: web.WebSocketResponse, factory: Callable[[], Agent]) -> None:
    """Serve one session on an open WebSocket: handshake, then events and audio until either side ends."""
    # On a thread: constructors load models (seconds on a busy host), and a blocked loop
    # answers no pings: the transceiver would declare the agent dead (§7).
    agent = await asyncio.to_thread(factory)
    first = await ws.receive()
    if first.type != WSMsgType.TEXT:
        await ws.close(code=WS_CLOSE_PROTOCOL, message=b"expected hello")
        return
    answered = await answer_hello(ws, first.data, lambda hello: choose(hello, type(agent))[0])
    if answered is None:
        return
    hello, negotiated = answered
    wanted = wanted_formats(type(agent))
    agent._link = _Link(
        ws, negotiated, wanted, PcmConverter(negotiated.input, wanted.input), dict(hello.get("flow") or {})
    )
    agent.hello = Hello(
        hello.get("session"),
        dict(hello.get("metadata") or {}),
        dict(hello.get("endpointing") or {}),
        dict(hello.get("flow") or {}),
    )
    try:
        await agent.on_start(agent.hello)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                for frame in agent._link.to_agent.push(check_frame(msg.data, negotiated.input)):
                    await agent.on_audio(np.frombuffer(frame, "<i2"))
            elif msg.type == WSMsgType.TEXT:
                ev = decode_event(msg.data, TO_AGENT)
                await agent._dispatch(ev)
                if ev.type is EventType.HANGUP:
                    break
    except WireError as exc:
        logger.warning("agent protocol error action=close error=%s", exc)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(event(EventType.ERROR, code="protocol", message=str(exc)).encode())
        await ws.close(code=WS_CLOSE_PROTOCOL)
    finally:
        await agent.stop_response()
        await agent.on_close()
        await ws.close()


def make_app(factory: Callable[[], Agent]) -> web.Application:
    """An aiohttp application serving ``factory()`` agents on ``GET /`` (WebSocket), and
    its metrics on ``GET /metrics`` (``icegate_agent_*``, ``process_*``)."""
    return agent_app(lambda ws: run_session(ws, factory))


async def serve(factory: Callable[[], Agent], host: str, port: int) -> web.AppRunner:
    """Start serving; the caller owns the runner (``await runner.cleanup()``)."""
    warm_up = getattr(factory, "warm_up", None)
    if callable(warm_up):
        await asyncio.to_thread(warm_up)
    runner = web.AppRunner(make_app(factory), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def load_app(spec: str) -> type[Agent]:
    """``module:Class`` -> the class (an :class:`Agent` subclass); ValueError saying what is wrong."""
    cls = load_spec(spec, "module:Class")
    name = spec.partition(":")[2]
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{spec!r}: {name} is not an Agent subclass")
    return cls
