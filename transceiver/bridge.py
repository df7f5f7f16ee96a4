"""One session's media bridge: client audio -> VAD -> agent, agent audio -> client.

::

    client mic --(aiortc RemoteStreamTrack)--> 20 ms 48 kHz frames --> Endpointer
                                                   | resample to accept.input_rate   | turn events
                                                   v                                 v
                               outbox (bounded) -> agent WebSocket <------  events data channel
                                                   |                          (both ways)
    client ear <--(AgentVoiceTrack, paced)-- playout queue (bounded) <-- agent frames, resampled
                                                                          + response markers

The agent protocol (version 1) is docs/AGENT_PROTOCOL.md; its codec is
:mod:`transceiver.agent_protocol`. The playout queue holds the agent's frames *and* its
markers (response_started/done, transcripts, data, hangup), so the client hears about
them when the audio before them has played. Barge-in empties the queue at once, drops
the rest of the interrupted response and tells the agent how much of it was played.
Nothing here blocks the media path on the agent: both queues are bounded and overflow is
dropped and counted (§5). An agent that cannot be reached, fails the handshake, breaks
the protocol or stops answering pings is reported to the client at once (``error``) and
then, per ``on_failure``, the session hangs up after a short fallback tone (§7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, Packet

from icegate.errors import WireError
from transceiver.agent_protocol import (
    CLIENT_EVENTS,
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    FROM_AGENT,
    FROM_CLIENT,
    NATIVE,
    SAMPLE_RATE,
    VERSION,
    ErrorCode,
    Event,
    EventType,
    Negotiated,
    check_frame,
    decode_event,
    event,
    hello_audio,
    negotiate,
)
from transceiver.audio import FrameClock, MonoConverter, PcmConverter, VoiceEncoder
from transceiver.config import AgentLinkConfig, VadConfig
from transceiver.vad import Endpointer

logger = logging.getLogger(__name__)

SILENCE = bytes(FRAME_BYTES)
FALLBACK_HZ = 425.0  # the ITU-T E.180 "number unobtainable"-style tone: audible, not speech
WS_CLOSE_PROTOCOL = 1002
MAX_UNSENT_EVENTS = 32  # held for a client whose data channel is not open yet; oldest dropped


def fallback_frames(ms: int, hz: float = FALLBACK_HZ) -> list[bytes]:
    frames = ms // FRAME_MS
    t = np.arange(frames * FRAME_SAMPLES) / SAMPLE_RATE
    wave = (0.2 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    return [chunk.tobytes() for chunk in wave.reshape(frames, FRAME_SAMPLES)] if frames else []


class EventSink(Protocol):
    """Where events for the client go: the ``events`` ``RTCDataChannel``."""

    @property
    def readyState(self) -> str: ...

    def send(self, data: str) -> None: ...


class AgentVoiceTrack(MediaStreamTrack):
    """The audio the client hears: the playout queue, one Opus packet every 20 ms (silence if empty)."""

    kind = "audio"

    def __init__(self, bridge: MediaBridge) -> None:
        super().__init__()
        self._bridge = bridge
        self._encoder = VoiceEncoder()
        self._clock = FrameClock()

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._clock.tick()
        pcm = self._bridge.next_playout_frame()
        return self._encoder.encode(pcm, pts, silent=pcm is SILENCE)


class MediaBridge:
    def __init__(
        self,
        session_id: str,
        vad: VadConfig,
        *,
        agent_url: str | None = None,
        http: aiohttp.ClientSession | None = None,
        link: AgentLinkConfig | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_turn_latency: Callable[[float], None] | None = None,
        on_barge_in: Callable[[], None] | None = None,
        on_hangup: Callable[[str], None] | None = None,
        on_count: Callable[[str], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.track = AgentVoiceTrack(self)
        self.endpointer = Endpointer(vad)
        self.link = link or AgentLinkConfig()
        self.metadata = dict(metadata or {})
        self._events: EventSink | None = None
        self._unsent: deque[str] = deque(maxlen=MAX_UNSENT_EVENTS)  # before the data channel opens
        self.frames_in = 0
        self.turns = 0
        self.negotiated: Negotiated | None = None
        self.counters: Counter[str] = Counter()  # drops and failures, by reason (see counter names below)
        self.agent_state = "none" if agent_url is None else "connecting"
        self._agent_url = agent_url
        self._http = http
        self._on_turn_latency = on_turn_latency
        self._on_barge_in = on_barge_in
        self._on_hangup = on_hangup
        self._on_count = on_count
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._to_agent_in = PcmConverter(NATIVE, NATIVE)
        self._from_agent_out = PcmConverter(NATIVE, NATIVE)
        self._outbox: deque[bytes | Event] = deque()
        self._outbox_frames = 0
        self._outbox_ready = asyncio.Event()
        self._playout: deque[bytes | Event] = deque()
        self._queued = 0  # audio frames in _playout
        self._receiving: Any = None  # response the agent is sending
        self._muted: Any = None  # response cut by barge-in: its remaining frames are dropped
        self._overflowed: Any = None  # response already told it overflowed the playout queue
        self._playing: Any = None  # response whose audio the client is hearing
        self._played = 0  # frames of _playing played so far
        self._endpoint_at: float | None = None
        self._hangup_reason: str | None = None
        self._hung_up = False
        self._last_heard = time.monotonic()  # anything from the agent, pongs included
        self._closed = False

    # -- wiring ----------------------------------------------------------------------

    async def connect_agent(self) -> None:
        """Connect and shake hands (no-op without an agent URL); a failure goes to :meth:`_agent_failed`."""
        if self._agent_url is None or self._http is None:
            return
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(self.link.handshake_timeout_s):
                ws = await self._http.ws_connect(self._agent_url, autoping=False, max_msg_size=65536)
                await ws.send_str(self._hello().encode())
                msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise WireError(f"expected accept, got a {msg.type.name} message")
            self.negotiated = negotiate(decode_event(msg.data, FROM_AGENT))
        except WireError as exc:
            if ws is not None and not ws.closed:
                with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                    await ws.send_str(
                        event(EventType.ERROR, code=ErrorCode.NEGOTIATION, message=str(exc)).encode()
                    )
            self._ws = ws  # closed by _agent_failed, after the report
            await self._agent_failed(
                ErrorCode.AGENT_UNREACHABLE, f"handshake: {exc}", close_code=WS_CLOSE_PROTOCOL
            )
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._ws = ws
            reason = "handshake timed out" if isinstance(exc, TimeoutError) else str(exc)
            await self._agent_failed(ErrorCode.AGENT_UNREACHABLE, f"{self._agent_url}: {reason}")
            return
        if self._closed:
            await ws.close()
            return
        self._ws = ws
        self._last_heard = time.monotonic()
        self.agent_state = "connected"
        self._to_agent_in = PcmConverter(NATIVE, self.negotiated.input)
        self._from_agent_out = PcmConverter(self.negotiated.output, NATIVE)
        self._tasks.append(asyncio.create_task(self._read_agent(ws)))
        self._tasks.append(asyncio.create_task(self._send_agent(ws)))
        self._tasks.append(asyncio.create_task(self._heartbeat(ws)))

    def _hello(self) -> Event:
        return event(
            EventType.HELLO,
            version=VERSION,
            session=self.session_id,
            metadata=self.metadata,
            audio=hello_audio(),
            endpointing=self.endpointer.decision(),
            flow={
                "max_queued_ms": self.link.max_queued_ms,
                "max_input_queued_ms": self.link.max_input_queued_ms,
            },
            link={
                "handshake_timeout_s": self.link.handshake_timeout_s,
                "heartbeat_s": self.link.heartbeat_s,
                "pong_timeout_s": self.link.heartbeat_s / 2,
            },
        )

    def attach_input(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read_input(track)))

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.track.stop()
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await ws.send_str(event(EventType.HANGUP, reason=reason).encode())
            await ws.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()

    def _count(self, reason: str) -> None:
        """One drop or failure: ``client_bad_event``, ``input_dropped``, ``output_dropped``,
        ``agent_bad_message``, ``agent_unreachable``, ``agent_lost``."""
        self.counters[reason] += 1
        if self._on_count is not None:
            self._on_count(reason)

    def describe(self) -> dict[str, Any]:
        """The agent link, for ``GET /v1/sessions/{id}``."""
        n = self.negotiated
        return {
            "state": self.agent_state,
            "input": None if n is None else {"rate": n.input.rate, "frame_ms": n.input.frame_ms},
            "output": None if n is None else {"rate": n.output.rate, "frame_ms": n.output.frame_ms},
            "endpointing": self.endpointer.decision(),
            "queued_ms": self._queued * FRAME_MS,
            "counters": dict(self.counters),
        }

    @property
    def agent_speaking(self) -> bool:
        """The agent is being heard (the fallback tone after a failure is not the agent)."""
        return self.agent_state != "failed" and (self._playing is not None or self._queued > 0)

    @property
    def events(self) -> EventSink | None:
        return self._events

    @events.setter
    def events(self, channel: EventSink | None) -> None:
        """The client's ``events`` channel; what was meant for it before it opened is sent now
        (an agent that fails at connect does so before the client's data channel exists)."""
        self._events = channel
        while channel is not None and channel.readyState == "open" and self._unsent:
            channel.send(self._unsent.popleft())

    # -- client -> agent -------------------------------------------------------------

    async def _read_input(self, track: MediaStreamTrack) -> None:
        converter = MonoConverter()
        pending = b""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            pending += converter.convert(frame)
            while len(pending) >= FRAME_BYTES:
                pcm, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
                await self.input_frame(pcm)

    async def input_frame(self, pcm: bytes) -> None:
        """One 20 ms frame from the client: to the agent, through the VAD, turn events out."""
        self.frames_in += 1
        turn_events = self.endpointer.push(pcm, agent_speaking=self.agent_speaking)
        if self._ws is not None:
            for frame in self._to_agent_in.push(pcm):
                self._enqueue(frame)
        for ev in turn_events:
            if ev.type is EventType.BARGE_IN:
                ev = self._barge_in(ev)
            elif ev.type is EventType.END_OF_TURN:
                self.turns += 1
                self._endpoint_at = time.monotonic()
            self._enqueue(ev)
            self._to_client(ev)
        await asyncio.sleep(0)  # let the sender run between frames fed faster than real time

    def client_message(self, text: str | bytes) -> None:
        """A message from the client's ``events`` data channel: data, transcript or hangup."""
        try:
            ev = decode_event(text, FROM_CLIENT)
        except WireError as exc:
            self._count("client_bad_event")
            logger.debug("client event dropped session=%s error=%s", self.session_id, exc)
            return
        if ev.type is EventType.HANGUP:
            self._hangup(f"caller: {ev.get('reason')}")
            return
        self._enqueue(ev)

    def _barge_in(self, ev: Event) -> Event:
        cut = self._receiving if self._receiving is not None else self._playing
        heard_frames = self._played if self._playing is not None else 0
        if cut is None:  # the whole answer has arrived, but its first frame has not been played yet
            for item in self._playout:
                if isinstance(item, Event) and item.type is EventType.RESPONSE_STARTED:
                    cut = item.get("response")
                    break
        self._playout.clear()
        self._queued = 0
        self._from_agent_out.reset()
        if self._receiving is not None:
            self._muted = self._receiving
        if self._playing is not None:
            self._to_client(event(EventType.RESPONSE_DONE, response=self._playing, interrupted=True))
            self._playing = None
        if self._on_barge_in is not None:
            self._on_barge_in()
        return event(EventType.BARGE_IN, turn=ev.get("turn"), response=cut, heard_ms=heard_frames * FRAME_MS)

    def _enqueue(self, item: bytes | Event) -> None:
        """To the agent, through the bounded outbox: the oldest audio makes room (§5)."""
        if self._ws is None:
            return
        if isinstance(item, bytes):
            limit = max(1, self.link.max_input_queued_ms // self.negotiated_input_ms)
            if self._outbox_frames >= limit:
                for i, queued in enumerate(self._outbox):
                    if isinstance(queued, bytes):
                        del self._outbox[i]
                        self._outbox_frames -= 1
                        self._count("input_dropped")
                        break
            self._outbox_frames += 1
        self._outbox.append(item)
        self._outbox_ready.set()

    @property
    def negotiated_input_ms(self) -> int:
        return self.negotiated.input.frame_ms if self.negotiated else FRAME_MS

    async def _send_agent(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                await self._outbox_ready.wait()
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, bytes):
                        self._outbox_frames -= 1
                        await ws.send_bytes(item)
                    else:
                        await ws.send_str(item.encode())
                self._outbox_ready.clear()
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            await self._agent_failed(ErrorCode.AGENT_LOST, f"send: {exc}")

    def _to_client(self, ev: Event) -> None:
        if ev.type not in CLIENT_EVENTS:
            return
        channel = self._events
        if channel is not None and channel.readyState == "open":
            channel.send(ev.encode())
        else:
            self._unsent.append(ev.encode())

    # -- agent -> client -------------------------------------------------------------

    async def _read_agent(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        assert self.negotiated is not None
        fmt = self.negotiated.output
        try:
            async for msg in ws:
                self._last_heard = time.monotonic()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.agent_frame(check_frame(msg.data, fmt))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.agent_event(decode_event(msg.data, FROM_AGENT))
                elif msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
        except WireError as exc:
            self._count("agent_bad_message")
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await ws.send_str(event(EventType.ERROR, code=ErrorCode.PROTOCOL, message=str(exc)).encode())
            await self._agent_failed(
                ErrorCode.AGENT_LOST, f"protocol error: {exc}", close_code=WS_CLOSE_PROTOCOL
            )
            return
        if self._closed or self._hangup_reason is not None:
            return
        reason = f"link lost: {ws.exception()}" if ws.exception() else f"closed (code {ws.close_code})"
        await self._agent_failed(ErrorCode.AGENT_LOST, reason)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping after ``heartbeat_s`` without a message from the agent; no answer within half
        of it: dead (§7). Started after the handshake, which has its own timeout, so an agent
        that loads a model for a second before its ``accept`` is not taken for dead."""
        interval = self.link.heartbeat_s
        while not ws.closed:
            idle = time.monotonic() - self._last_heard
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            sent = time.monotonic()
            try:
                await ws.ping()
            except (aiohttp.ClientError, OSError, RuntimeError):
                return  # the reader sees the link go
            await asyncio.sleep(interval / 2)
            if self._last_heard < sent and not ws.closed:
                await self._agent_failed(
                    ErrorCode.AGENT_LOST, f"no answer to a ping within {interval / 2:.2f} s"
                )
                return

    def agent_frame(self, pcm: bytes) -> None:
        if self._receiving is not None and self._receiving == self._muted:
            return
        self._queue_playout(self._from_agent_out.push(pcm))

    def _queue_playout(self, frames: list[bytes]) -> None:
        limit = self.link.max_queued_ms // FRAME_MS
        for frame in frames:
            if self._queued >= limit:
                self._count("output_dropped")
                if self._overflowed != self._receiving:
                    self._overflowed = self._receiving
                    self._enqueue(
                        event(
                            EventType.ERROR,
                            code="overflow",
                            message=f"response {self._receiving}: more than {self.link.max_queued_ms} ms "
                            "queued for playout; audio dropped (pace to real time)",
                        )
                    )
                continue
            self._playout.append(frame)
            self._queued += 1

    def agent_event(self, ev: Event) -> None:
        response = ev.get("response")
        if ev.type is EventType.RESPONSE_STARTED:
            self._receiving = response
            self._from_agent_out.reset()
            self._playout.append(ev)
        elif ev.type is EventType.RESPONSE_DONE:
            if response == self._muted:
                self._muted = None  # the client was told at the barge-in
                self._from_agent_out.reset()
            else:
                # The resampler's delay and a partial frame: the response's last few ms.
                self._queue_playout(self._from_agent_out.flush())
                self._playout.append(event(EventType.RESPONSE_DONE, response=response, interrupted=False))
            self._receiving = None
        elif ev.type is EventType.HANGUP:
            self._hangup_reason = f"agent: {ev.get('reason')}"
            self._playout.append(ev)  # after the goodbye the agent queued
        elif ev.type is EventType.ERROR:
            logger.warning(
                "agent error session=%s code=%s message=%s",
                self.session_id,
                ev.get("code"),
                ev.get("message"),
            )
            self._to_client(ev)
        else:  # transcript, data: in order with the audio
            self._playout.append(ev)

    def next_playout_frame(self) -> bytes:
        """The next 20 ms for the client (called by the track at playout time)."""
        while self._playout:
            item = self._playout.popleft()
            if isinstance(item, bytes):
                self._queued -= 1
                self._played += 1
                if self._endpoint_at is not None:
                    if self._on_turn_latency is not None:
                        self._on_turn_latency(time.monotonic() - self._endpoint_at)
                    self._endpoint_at = None
                return item
            if item.type is EventType.RESPONSE_STARTED:
                self._playing, self._played = item.get("response"), 0
            elif item.type is EventType.RESPONSE_DONE:
                self._playing = None
            elif item.type is EventType.HANGUP:
                self._to_client(item)
                self._hangup(self._hangup_reason or str(item.get("reason")), tell_client=False)
                continue
            self._to_client(item)
        return SILENCE

    # -- failure and hang-up (§7) --------------------------------------------------------

    async def _agent_failed(self, code: str, reason: str, *, close_code: int = 1000) -> None:
        if self._closed or self.agent_state == "failed":
            return
        self.agent_state = "failed"
        self._count(code)
        logger.warning("agent failed session=%s code=%s reason=%s", self.session_id, code, reason)
        ws, self._ws = self._ws, None
        self._outbox.clear()
        self._outbox_frames = 0
        self._to_client(event(EventType.ERROR, code=code, message=reason))
        # Whatever the agent had queued is dropped: the caller hears the fallback, then the end.
        self._playout.clear()
        self._queued = 0
        self._receiving = self._playing = None
        if self.link.on_failure == "hangup":
            for frame in fallback_frames(self.link.fallback_ms):
                self._playout.append(frame)
                self._queued += 1
            self._playout.append(event(EventType.HANGUP, reason=f"agent failed: {code}"))
            # The track plays the fallback only once the call is connected: hang up by then anyway.
            deadline = (self.link.fallback_ms + 300) / 1000
            asyncio.get_running_loop().call_later(deadline, self._hangup, f"agent failed: {code}")
        if ws is not None and not ws.closed:
            # A frozen agent never answers the close handshake: do not wait for it long.
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
                await asyncio.wait_for(ws.close(code=close_code), 0.5)

    def _hangup(self, reason: str, *, tell_client: bool = True) -> None:
        if self._closed or self._hung_up:
            return
        self._hung_up = True
        self._hangup_reason = reason
        if tell_client:
            self._to_client(event(EventType.HANGUP, reason=reason))
        if self._on_hangup is not None:
            self._on_hangup(reason)
