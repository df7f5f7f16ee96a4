"""One session's media bridge: client audio -> VAD -> agent, agent audio -> client.

::

    client mic --(aiortc RemoteStreamTrack)--> 20 ms s16 mono frames --> Endpointer
                                                   |                        | turn events
                                                   v                        v
                                            agent WebSocket  <------  events data channel
                                                   |
    client ear <--(AgentVoiceTrack, paced)-- playout queue <-- agent frames + response markers

The playout queue holds the agent's frames *and* its response_started/response_done
markers, so the client hears about a response when its audio starts and ends, and the
turn latency (endpoint -> first response frame played) is measured at playout.
Barge-in empties the queue at once and discards the rest of the interrupted response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, Packet

from icegate.errors import WireError
from transceiver.agent_protocol import (
    CHANNELS,
    FRAME_BYTES,
    FRAME_MS,
    FROM_AGENT,
    SAMPLE_RATE,
    Event,
    EventType,
    check_frame,
    decode_event,
    event,
)
from transceiver.audio import FrameClock, MonoConverter, VoiceEncoder
from transceiver.config import VadConfig
from transceiver.vad import Endpointer

logger = logging.getLogger(__name__)

MAX_PLAYOUT_FRAMES = 60 * 1000 // FRAME_MS  # 60 s of agent audio queued at most
SILENCE = bytes(FRAME_BYTES)


class EventSink(Protocol):
    """Where turn events for the client go: the ``events`` ``RTCDataChannel``."""

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
        on_turn_latency: Callable[[float], None] | None = None,
        on_barge_in: Callable[[], None] | None = None,
        on_agent_unreachable: Callable[[], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.track = AgentVoiceTrack(self)
        self.endpointer = Endpointer(vad)
        self.events: EventSink | None = None
        self.frames_in = 0
        self.turns = 0
        self._agent_url = agent_url
        self._http = http
        self._on_turn_latency = on_turn_latency
        self._on_barge_in = on_barge_in
        self._on_agent_unreachable = on_agent_unreachable
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._playout: deque[bytes | Event] = deque()
        self._queued = 0  # audio frames in _playout
        self._receiving: Any = None  # response the agent is sending
        self._muted: Any = None  # response cut by barge-in: its remaining frames are dropped
        self._playing: Any = None  # response whose audio the client is hearing
        self._endpoint_at: float | None = None
        self._closed = False

    # -- wiring ----------------------------------------------------------------------

    async def connect_agent(self) -> None:
        """Open the agent WebSocket (no-op without an agent URL); failures leave the session agent-less."""
        if self._agent_url is None or self._http is None:
            return
        try:
            self._ws = await self._http.ws_connect(self._agent_url, max_msg_size=FRAME_BYTES * 4)
            await self._ws.send_str(
                event(
                    EventType.SESSION_STARTED,
                    session=self.session_id,
                    sample_rate=SAMPLE_RATE,
                    channels=CHANNELS,
                    frame_ms=FRAME_MS,
                ).encode()
            )
        except (aiohttp.ClientError, OSError) as exc:
            logger.warning(
                "agent unreachable session=%s url=%s error=%s", self.session_id, self._agent_url, exc
            )
            if self._on_agent_unreachable is not None:
                self._on_agent_unreachable()
            if self._ws is not None:
                await self._ws.close()
                self._ws = None
            return
        self._tasks.append(asyncio.create_task(self._read_agent(self._ws)))

    def attach_input(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read_input(track)))

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.track.stop()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await self._ws.send_str(event(EventType.SESSION_ENDED, reason=reason).encode())
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    @property
    def agent_speaking(self) -> bool:
        return self._playing is not None or self._queued > 0

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
        await self._to_agent(pcm)
        for ev in turn_events:
            if ev.type is EventType.BARGE_IN:
                ev = self._barge_in()
            elif ev.type is EventType.SPEECH_STOPPED:
                self.turns += 1
                self._endpoint_at = time.monotonic()
            await self._to_agent(ev)
            self._to_client(ev)

    def _barge_in(self) -> Event:
        cut = self._receiving if self._receiving is not None else self._playing
        if cut is None:  # the whole answer has arrived, but its first frame has not been played yet
            for item in self._playout:
                if isinstance(item, Event) and item.type is EventType.RESPONSE_STARTED:
                    cut = item.get("response")
                    break
        self._playout.clear()
        self._queued = 0
        if self._receiving is not None:
            self._muted = self._receiving
        if self._playing is not None:
            self._to_client(event(EventType.RESPONSE_DONE, response=self._playing, interrupted=True))
            self._playing = None
        if self._on_barge_in is not None:
            self._on_barge_in()
        return event(EventType.BARGE_IN, response=cut)

    async def _to_agent(self, item: bytes | Event) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        try:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item.encode())
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            logger.warning("agent link lost session=%s error=%s", self.session_id, exc)
            self._ws = None

    def _to_client(self, ev: Event) -> None:
        channel = self.events
        if channel is not None and channel.readyState == "open":
            channel.send(ev.encode())

    # -- agent -> client -------------------------------------------------------------

    async def _read_agent(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.agent_frame(check_frame(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.agent_event(decode_event(msg.data, FROM_AGENT))
        except WireError as exc:
            logger.warning("agent protocol error session=%s error=%s", self.session_id, exc)
            await ws.close(code=1003)

    def agent_frame(self, pcm: bytes) -> None:
        if self._receiving is not None and self._receiving == self._muted:
            return
        if self._queued < MAX_PLAYOUT_FRAMES:
            self._playout.append(pcm)
            self._queued += 1

    def agent_event(self, ev: Event) -> None:
        response = ev.get("response")
        if ev.type is EventType.RESPONSE_STARTED:
            self._receiving = response
            self._playout.append(ev)
        elif ev.type is EventType.RESPONSE_DONE:
            self._receiving = None
            if response == self._muted:
                self._muted = None  # the client was told at the barge-in
            else:
                self._playout.append(ev)

    def next_playout_frame(self) -> bytes:
        """The next 20 ms for the client (called by the track at playout time)."""
        while self._playout:
            item = self._playout.popleft()
            if isinstance(item, bytes):
                self._queued -= 1
                if self._endpoint_at is not None:
                    if self._on_turn_latency is not None:
                        self._on_turn_latency(time.monotonic() - self._endpoint_at)
                    self._endpoint_at = None
                return item
            if item.type is EventType.RESPONSE_STARTED:
                self._playing = item.get("response")
            else:
                self._playing = None
            self._to_client(item)
        return SILENCE
