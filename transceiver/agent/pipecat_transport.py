"""A Pipecat pipeline as the agent behind a transceiver: a Pipecat transport for protocol v1.

Pipecat (PyPI ``pipecat-ai``, the ``icegate[pipecat]`` extra) builds voice agents as
pipelines of frame processors between a transport's input and output. This module is
that transport for the icegate agent protocol (docs/AGENT_PROTOCOL.md; docs/PIPECAT.md
is the guide). The transceiver connects to the agent, so the Pipecat side is the
WebSocket server: :func:`make_app` serves one call per connection, answers ``hello``
with the rates the bot asked for (:class:`IcegateParams`), then hands an
:class:`IcegateTransport` to the bot, which builds and runs its pipeline::

    async def bot(transport: IcegateTransport) -> None:
        pipeline = Pipeline([transport.input(), MyProcessor(), transport.output()])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(PipelineWorker(pipeline, params=transport.pipeline_params()))
        await runner.run()  # until either side hangs up

What crosses the socket, and what it becomes:

================================  ==================================================
transceiver -> agent              Pipecat frame (pushed by the input transport)
================================  ==================================================
binary frame                      ``InputAudioRawFrame`` at ``accept.input_rate``
``speech_started``                ``VADUserStartedSpeakingFrame`` (``start_secs`` =
                                  ``onset_ms``); ``UserStartedSpeakingFrame`` unless
                                  ``resumed``
``speech_stopped``                ``VADUserStoppedSpeakingFrame`` (``stop_secs`` =
                                  ``trailing_ms``)
``end_of_turn``                   ``UserStoppedSpeakingFrame``
``barge_in``                      an interruption (``InterruptionFrame`` both ways);
                                  event handler ``on_barge_in(transport, response,
                                  heard_ms)``
``transcript`` role ``user``      ``TranscriptionFrame`` (``InterimTranscriptionFrame``
                                  if not final); other roles as ``data`` below
``data``                          ``InputTransportMessageFrame`` (``message`` = payload)
``hangup``, socket closed         ``CancelWorkerFrame`` (the pipeline is cancelled);
                                  event handler ``on_client_disconnected``
================================  ==================================================

================================  ==================================================
Pipecat frame at the output       agent -> transceiver
================================  ==================================================
``OutputAudioRawFrame`` (and      ``response_started`` before the first frame after
``TTSAudioRawFrame``)             silence, then binary frames of ``output_frame_ms``,
                                  paced to at most ``lead_ms`` ahead of real time
``BotStoppedSpeakingFrame``,      ``response_done`` (bare ``OutputAudioRawFrame`` with
interruption, end                 no TTS framing: after ``RESPONSE_IDLE_S`` without audio)
``TTSTextFrame``                  ``transcript`` role ``agent``
``TranscriptionFrame``            ``transcript`` role ``user`` (interim: ``final: false``)
``OutputTransportMessageFrame``   ``data`` (RTVI messages are not sent)
``EndFrame``                      ``hangup`` after the audio before it (reason: the
                                  frame's ``reason`` or ``done``)
``CancelFrame``                   ``hangup`` at once, unless the transceiver hung up
================================  ==================================================

The transceiver decides turns and barge-in (its VAD and endpointing, per call): the turn
frames are announced here, so a Pipecat user aggregator should use
``ExternalUserTurnStrategies`` rather than run a VAD of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    CancelWorkerFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection
from pipecat.processors.frameworks.rtvi.models import MESSAGE_LABEL as RTVI_LABEL
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from icegate.errors import WireError
from transceiver.agent.serving import WS_CLOSE_PROTOCOL, agent_app, answer_hello, load_spec
from transceiver.agent_protocol import (
    FRAME_MS_CHOICES,
    MAX_DATA_BYTES,
    MAX_EVENT_BYTES,
    RATES,
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

logger = logging.getLogger(__name__)

RESPONSE_IDLE_S = 0.4  # bare output audio (no TTS framing) that pauses this long ends its response
MAX_PENDING = 250  # messages held until the pipeline starts (5 s of 20 ms frames); oldest dropped


@dataclass(frozen=True)
class IcegateParams:
    """What the bot asks for in the handshake (§2); the transceiver resamples to it.

    A rate the transceiver does not offer falls back to 48 kHz, a frame duration to 20 ms
    (Pipecat resamples on its side then)."""

    input_rate: int = 16000  # the caller's voice, as the pipeline's input wants it
    output_rate: int = 24000  # the pipeline's voice (a TTS's native rate saves a resampling)
    frame_ms: int = 20  # both directions; the output transport writes chunks of this length
    lead_ms: int = 300  # how far ahead of real time responses are sent (§5 allows up to ~1 s)

    def __post_init__(self) -> None:
        for name in ("input_rate", "output_rate"):
            if getattr(self, name) not in RATES:
                raise ValueError(f"{name}: expected one of {list(RATES)}, got {getattr(self, name)}")
        if self.frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(f"frame_ms: expected one of {list(FRAME_MS_CHOICES)}, got {self.frame_ms}")
        if not 0 <= self.lead_ms <= 1000:
            raise ValueError(f"lead_ms: expected 0-1000, got {self.lead_ms}")


@dataclass(frozen=True)
class Call:
    """The call, as ``hello`` described it, and what ``accept`` settled."""

    session: str
    negotiated: Negotiated
    metadata: dict[str, Any] = field(default_factory=dict)
    endpointing: dict[str, Any] = field(default_factory=dict)
    flow: dict[str, Any] = field(default_factory=dict)


def choose(hello: Event, params: IcegateParams) -> Negotiated:
    """What to accept: the bot's rates and frame duration where offered, else 48 kHz / 20 ms."""
    if hello.type is not EventType.HELLO:
        raise WireError(f"expected hello, got {hello.type.value}")
    wanted = Negotiated(
        AudioFormat(params.input_rate, params.frame_ms), AudioFormat(params.output_rate, params.frame_ms)
    )
    return answer_formats(hello, wanted, "agent")


class IcegateTransport(BaseTransport):
    """One call's WebSocket, after the handshake, as a Pipecat transport.

    Event handlers: ``on_client_connected(transport, call)`` once the pipeline has
    started; ``on_client_disconnected(transport, reason)`` when the transceiver hung up
    or the socket closed; ``on_barge_in(transport, response, heard_ms)`` when the
    caller spoke over a response (``heard_ms`` of it had been played)."""

    def __init__(self, ws: web.WebSocketResponse, call: Call, params: IcegateParams) -> None:
        super().__init__(name=f"icegate-{call.session}")
        self._ws = ws
        self.call = call
        self.params = params
        fmt_in, fmt_out = call.negotiated.input, call.negotiated.output
        self.transport_params = TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=fmt_in.rate,
            audio_out_enabled=True,
            audio_out_sample_rate=fmt_out.rate,
            # One output chunk is one frame of the protocol (§1: exactly one frame a message).
            audio_out_10ms_chunks=fmt_out.frame_ms // 10,
            audio_out_end_silence_secs=0,  # the transceiver plays silence itself
        )
        self.hung_up: str | None = None  # the transceiver's reason, once it ended the call
        self._input = IcegateInputTransport(self, self.transport_params, name=f"{self.name}-in")
        self._output = IcegateOutputTransport(self, self.transport_params, name=f"{self.name}-out")
        for name in ("on_client_connected", "on_client_disconnected", "on_barge_in"):
            self._register_event_handler(name)

    def input(self) -> IcegateInputTransport:
        return self._input

    def output(self) -> IcegateOutputTransport:
        return self._output

    def pipeline_params(self, **overrides: Any) -> PipelineParams:
        """``PipelineParams`` with the negotiated rates (the pipeline's processors use them)."""
        rates = {
            "audio_in_sample_rate": self.call.negotiated.input.rate,
            "audio_out_sample_rate": self.call.negotiated.output.rate,
        }
        return PipelineParams(**(rates | overrides))

    # -- the socket -------------------------------------------------------------------

    async def send_audio(self, frame: bytes) -> bool:
        if self._ws.closed:
            return False
        try:
            await self._ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def send_event(self, ev: Event) -> bool:
        """Send one event; one that the protocol would refuse is logged and dropped, not sent
        (the transceiver closes the socket on a message that breaks §1-§4)."""
        text = ev.encode()
        if len(text.encode()) > MAX_EVENT_BYTES:
            logger.warning("event dropped type=%s bytes=%d max=%d", ev.type, len(text), MAX_EVENT_BYTES)
            return False
        if ev.type is EventType.DATA and len(json.dumps(ev.get("payload"))) > MAX_DATA_BYTES:
            logger.warning("data dropped reason=payload_over_%d_bytes", MAX_DATA_BYTES)
            return False
        if self._ws.closed:
            return False
        try:
            await self._ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def read(self) -> None:
        """Read the socket until it closes, handing every message to the input transport."""
        fmt = self.call.negotiated.input
        reason = "closed"
        try:
            async for msg in self._ws:
                if msg.type == WSMsgType.BINARY:
                    await self._input.receive(check_frame(msg.data, fmt))
                elif msg.type == WSMsgType.TEXT:
                    ev = decode_event(msg.data, TO_AGENT)
                    if ev.type is EventType.HANGUP:
                        reason = str(ev.get("reason"))
                        break
                    await self._input.receive(ev)
        except WireError as exc:
            logger.warning("agent protocol error action=close error=%s", exc)
            reason = "protocol error"
            await self.send_event(event(EventType.ERROR, code="protocol", message=str(exc)))
            await self._ws.close(code=WS_CLOSE_PROTOCOL)
        except ConnectionError as exc:
            reason = f"connection lost: {exc}"
        # (Not when cancelled: the bot has returned and run_call is closing the socket.)
        self.hung_up = reason
        await self._input.disconnected(reason)

    async def _call(self, handler: str, *args: Any) -> None:
        await self._call_event_handler(handler, *args)


class IcegateInputTransport(BaseInputTransport):
    """The caller's side: audio and turn events from the transceiver, as frames (module table)."""

    def __init__(self, transport: IcegateTransport, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._started = False
        self._pending: deque[bytes | Event] = deque(maxlen=MAX_PENDING)
        self._gone: str | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        while self._pending:  # what arrives meanwhile joins the queue, in order
            await self._deliver(self._pending.popleft())
        self._started = True
        await self._transport._call("on_client_connected", self._transport.call)
        if self._gone is not None:
            await self._end(self._gone)

    async def receive(self, item: bytes | Event) -> None:
        """A message from the transceiver: a frame of the caller's audio or an event."""
        if self._started:
            await self._deliver(item)
        else:
            self._pending.append(item)

    async def disconnected(self, reason: str) -> None:
        """The transceiver hung up, or the socket closed: the pipeline is cancelled."""
        if self._gone is not None:
            return
        self._gone = reason
        if self._started:
            await self._end(reason)

    async def _end(self, reason: str) -> None:
        logger.info(
            "call ended by the transceiver session=%s reason=%s", self._transport.call.session, reason
        )
        await self._transport._call("on_client_disconnected", reason)
        await self.push_frame(CancelWorkerFrame(reason=f"transceiver: {reason}"), FrameDirection.UPSTREAM)

    async def _deliver(self, item: bytes | Event) -> None:
        if isinstance(item, bytes):
            rate = self._transport.call.negotiated.input.rate
            await self.push_audio_frame(InputAudioRawFrame(audio=item, sample_rate=rate, num_channels=1))
            return
        # An event follows the audio it describes (§4.1): let the frames queued before it out
        # first. BaseInputTransport's audio queue and task are its internals (as of 1.14); the
        # echo tests' lengths fail if a later Pipecat reorders them.
        if self._audio_task is not None and not self._audio_task.done():
            await self._audio_in_queue.join()
        f = item.fields
        match item.type:
            case EventType.SPEECH_STARTED:
                await self.broadcast_frame(VADUserStartedSpeakingFrame, start_secs=f["onset_ms"] / 1000)
                if not f.get("resumed"):
                    await self.broadcast_frame(UserStartedSpeakingFrame)
            case EventType.SPEECH_STOPPED:
                await self.broadcast_frame(VADUserStoppedSpeakingFrame, stop_secs=f["trailing_ms"] / 1000)
            case EventType.END_OF_TURN:
                await self.broadcast_frame(UserStoppedSpeakingFrame)
            case EventType.BARGE_IN:
                # The transceiver has already cut the response; Pipecat stops producing it.
                await self._transport.output().end_response(until_interrupted=True)
                await self.broadcast_interruption()
                await self._transport._call("on_barge_in", f.get("response"), f["heard_ms"])
            case EventType.TRANSCRIPT if f["role"] == "user":
                final = bool(f.get("final", True))
                kind = TranscriptionFrame if final else InterimTranscriptionFrame
                stamp = datetime.now(UTC).isoformat()
                await self.push_frame(
                    kind(text=f["text"], user_id=self._transport.call.session, timestamp=stamp)
                )
            case EventType.TRANSCRIPT | EventType.DATA:
                message = f["payload"] if item.type is EventType.DATA else {"type": "transcript", **f}
                await self.broadcast_frame(InputTransportMessageFrame, message=message)
            case EventType.ERROR:
                logger.warning("transceiver error code=%s message=%s", f["code"], f.get("message", ""))


class IcegateOutputTransport(BaseOutputTransport):
    """The agent's voice and events to the transceiver, paced and framed as responses (§4, §5)."""

    def __init__(self, transport: IcegateTransport, params: TransportParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._fmt = transport.call.negotiated.output
        flow_ms = int(transport.call.flow.get("max_queued_ms", 2000))
        self._lead_s = min(transport.params.lead_ms, flow_ms // 2) / 1000
        self._responses = 0
        self.response: int | None = None  # the response being sent, if any
        self._tts = False  # Pipecat announced bot speech: BotStoppedSpeakingFrame ends the response
        self._clock = 0.0  # when frame 0 of the response is due to be heard
        self._sent = 0  # frames of the response sent
        self._wrote = asyncio.Event()
        self._idle: asyncio.Task[None] | None = None
        self._hung_up = False
        # After a barge-in, until the interruption has come down the pipeline and emptied the
        # media sender's queue: what is still queued belongs to the cut response, not a new one.
        self._muted = False

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._idle = self.create_task(self._end_paused_responses(), name=f"{self.name}-idle")

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)  # the audio queued before the EndFrame has been written
        await self._stop_idle()
        await self.end_response()
        await self._hangup(frame.reason if isinstance(frame.reason, str) else "done")

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_idle()
        await self.end_response()
        if self._transport.hung_up is None:
            await self._hangup(frame.reason if isinstance(frame.reason, str) else "cancelled")

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop_idle()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._muted = False
            await self.end_response()

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        # Everything the media sender handled comes through here once its turn came, in
        # order with the audio around it: the place to send the events that ride along.
        if direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, BotStartedSpeakingFrame):
                self._tts = True
            elif isinstance(frame, BotStoppedSpeakingFrame):
                await self.end_response()
            elif isinstance(frame, TTSTextFrame):
                await self._transport.send_event(event(EventType.TRANSCRIPT, role="agent", text=frame.text))
            elif isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame):
                final = isinstance(frame, TranscriptionFrame)
                await self._transport.send_event(
                    event(EventType.TRANSCRIPT, role="user", text=frame.text, final=final)
                )
        await super().push_frame(frame, direction)

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        message = frame.message
        if isinstance(message, dict) and message.get("label") == RTVI_LABEL:
            return  # Pipecat's own client protocol: the transceiver's client does not speak it
        await self._transport.send_event(event(EventType.DATA, payload=message))

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._muted:
            return True  # taken, and dropped: the tail of a response the caller cut
        audio = frame.audio
        size = self._fmt.frame_bytes
        if len(audio) % size:
            audio += bytes(size - len(audio) % size)  # §1: whole frames only
        if self.response is None:
            self._responses += 1
            self.response = self._responses
            self._clock, self._sent = time.monotonic(), 0
            await self._transport.send_event(event(EventType.RESPONSE_STARTED, response=self.response))
        response = self.response
        for i in range(0, len(audio), size):
            await self._pace()
            if self.response != response:
                return True  # cut by a barge-in or an interruption while waiting: dropped
            if not await self._transport.send_audio(audio[i : i + size]):
                return False
            self._sent += 1
        self._wrote.set()
        return True

    async def end_response(self, *, until_interrupted: bool = False) -> None:
        """``response_done`` for the response being sent, if any; ``until_interrupted``: and
        drop output audio until an interruption reaches this transport."""
        self._muted = self._muted or until_interrupted
        response, self.response, self._tts = self.response, None, False
        if response is not None:
            await self._transport.send_event(event(EventType.RESPONSE_DONE, response=response))

    async def _pace(self) -> None:
        """At most ``lead`` ahead of real time (§5); audio that came late earns no credit."""
        frame_s = self._fmt.frame_ms / 1000
        now = time.monotonic()
        self._clock = max(self._clock, now - self._sent * frame_s)
        ahead = self._clock + self._sent * frame_s - now
        if ahead > self._lead_s:
            await asyncio.sleep(ahead - self._lead_s)

    async def _end_paused_responses(self) -> None:
        """Bare output audio carries no end marker: a pause of ``RESPONSE_IDLE_S`` ends it."""
        while True:
            await self._wrote.wait()
            self._wrote.clear()
            try:
                await asyncio.wait_for(self._wrote.wait(), RESPONSE_IDLE_S)
            except TimeoutError:
                if not self._tts:
                    await self.end_response()

    async def _stop_idle(self) -> None:
        if self._idle is not None:
            await self.cancel_task(self._idle)
            self._idle = None

    async def _hangup(self, reason: str) -> None:
        if not self._hung_up:
            self._hung_up = True
            await self._transport.send_event(event(EventType.HANGUP, reason=reason))


# -- serving ----------------------------------------------------------------------------

Bot = Callable[[IcegateTransport], Awaitable[None]]


async def run_call(ws: web.WebSocketResponse, bot: Bot, params: IcegateParams) -> None:
    """One call on an open WebSocket: the handshake, then ``bot(transport)`` until it returns."""
    first = await ws.receive()
    answered = await answer_hello(
        ws, first.data if first.type == WSMsgType.TEXT else None, lambda hello: choose(hello, params)
    )
    if answered is None:
        return
    hello, negotiated = answered
    call = Call(
        str(hello.get("session")),
        negotiated,
        dict(hello.get("metadata") or {}),
        dict(hello.get("endpointing") or {}),
        dict(hello.get("flow") or {}),
    )
    logger.info(
        "call started session=%s input=%d/%dms output=%d/%dms", call.session,
        negotiated.input.rate, negotiated.input.frame_ms, negotiated.output.rate, negotiated.output.frame_ms,
    )  # fmt: skip
    transport = IcegateTransport(ws, call, params)
    # Read from now on, before the pipeline exists: the transceiver's pings need answers (§7).
    reader = asyncio.create_task(transport.read(), name=f"icegate-read-{call.session}")
    try:
        await bot(transport)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close()


def make_app(bot: Bot, params: IcegateParams | None = None) -> web.Application:
    """An aiohttp application serving ``bot`` on ``GET /``, one call per WebSocket, and its
    metrics on ``GET /metrics`` (the SDK's agents' ``icegate_agent_*`` and ``process_*``)."""
    chosen = params or IcegateParams()
    return agent_app(lambda ws: run_call(ws, bot, chosen))


def load_bot(spec: str) -> Bot:
    """``module:function`` -> the bot, ``async function(transport)``; ValueError saying what is wrong."""
    bot = load_spec(spec, "module:function")
    name = spec.partition(":")[2]
    if not inspect.iscoroutinefunction(bot):
        raise ValueError(f"{spec!r}: {name} is not an async function (the bot: async def {name}(transport))")
    return bot


async def serve(bot: Bot, host: str, port: int, params: IcegateParams | None = None) -> web.AppRunner:
    """Start serving; the caller owns the runner (``await runner.cleanup()``)."""
    runner = web.AppRunner(make_app(bot, params), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
