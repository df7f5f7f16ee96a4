"""WebRTC voice clients for the integration and e2e tiers and the benchmarks.

:class:`VoiceClient` is an unmodified aiortc peer, as any WHIP client would be: it POSTs
its offer to ``/v1/sessions``, plays a PCM script (48 kHz mono s16) into its microphone
track in real time, records what it hears, and collects the turn events of the
``events`` data channel. :class:`DirectAnswerer` is a plain aiortc answerer with its own
sockets and no relay: the baseline for set-up time comparisons.

The client never uses a STUN server (``iceServers=[]``): the tests have no internet and
the transceiver learns the client's address from its checks through the relay.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler

from icegate import netns

RATE = 48000
FRAME = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, RATE)
T = TypeVar("T")


def tone(hz: float, ms: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.int16)


def dominant_frequency(pcm: np.ndarray, rate: int = RATE) -> float:
    """The strongest frequency of ``pcm`` (Hann-windowed FFT peak)."""
    if pcm.size < 2:
        return 0.0
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / pcm.size)


class ScriptTrack(MediaStreamTrack):
    """The client's microphone: plays ``script`` in real time, then silence, 20 ms per frame."""

    kind = "audio"

    def __init__(self, script: np.ndarray | None = None) -> None:
        super().__init__()
        self._script = np.zeros(0, np.int16)
        self._pos = 0
        self._pts = 0
        self._start: float | None = None
        self.script_started: float | None = None  # monotonic time the current script began playing
        if script is not None:
            self.play(script)

    def play(self, script: np.ndarray) -> None:
        """Start ``script`` at the next frame (replacing what is left of the current one)."""
        self._script = script.astype(np.int16)
        self._pos = 0
        self.script_started = None

    @property
    def done(self) -> bool:
        return self._pos >= self._script.size

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            delay = self._start + self._pts / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk = np.zeros(FRAME, np.int16)
        if not self.done:
            if self._pos == 0:
                self.script_started = time.monotonic()
            part = self._script[self._pos : self._pos + FRAME]
            chunk[: part.size] = part
            self._pos += FRAME
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame


@dataclass
class Heard:
    """What the client's speaker received: mono PCM with the arrival time of each 20 ms frame."""

    frames: list[np.ndarray] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    def first_loud_after(self, t: float, threshold: float = 0.05) -> float | None:
        for arrival, frame in zip(self.arrivals, self.frames, strict=True):
            if arrival >= t and np.sqrt(np.mean(frame.astype(np.float64) ** 2)) >= threshold * 32767:
                return arrival
        return None


async def record(track: MediaStreamTrack, heard: Heard) -> None:
    resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame)
        now = time.monotonic()
        for mono in resampler.resample(frame):
            heard.frames.append(mono.to_ndarray().reshape(-1).copy())
            heard.arrivals.append(now)


@dataclass
class VoiceClient:
    """One WHIP-style voice session against ``base_url`` (``http://host:port``)."""

    base_url: str
    token: str | None = None
    mic: ScriptTrack = field(default_factory=ScriptTrack)
    heard: Heard = field(default_factory=Heard)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    location: str | None = None
    answer: str | None = None
    setup_s: float | None = None  # POST sent -> connected
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def offer(self) -> str:
        """Create the offer (tracks, data channel, gathered candidates) without sending it."""
        pc = self.pc
        pc.addTrack(self.mic)
        channel = pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self.events.append((time.monotonic(), json.loads(message)))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(record(track, self.heard)))

        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp

    async def connect(self, http: aiohttp.ClientSession, timeout: float = 15.0) -> float:
        """POST the offer, apply the answer, wait for ``connected``; return the set-up time."""
        offer = await self.offer()
        started = time.monotonic()
        async with http.post(f"{self.base_url}/v1/sessions", data=offer, headers=self._headers()) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise AssertionError(f"POST /v1/sessions: {resp.status} {body}")
            self.location = resp.headers["Location"]
            self.answer = body
        connected = asyncio.get_running_loop().create_future()

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(self.pc.connectionState)

        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        state = await asyncio.wait_for(connected, timeout)
        if state != "connected":
            raise AssertionError(f"session ended up {state}")
        self.setup_s = time.monotonic() - started
        return self.setup_s

    def event_types(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    async def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> float:
        """Wait until ``count`` events of ``kind`` arrived; return the arrival time of the last."""
        deadline = time.monotonic() + timeout
        while True:
            times = [t for t, e in self.events if e["type"] == kind]
            if len(times) >= count:
                return times[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {kind} within {timeout}s; got {self.event_types()}")
            await asyncio.sleep(0.01)

    async def hangup(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location is not None:
            async with http.delete(f"{self.base_url}{self.location}", headers=self._headers()):
                pass
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The far end's DTLS close_notify makes aiortc schedule a close() of its own: let it finish.
        await asyncio.sleep(0.05)


class DirectAnswerer:
    """A plain aiortc answerer (own sockets, no relay, no mux) that echoes audio back."""

    def __init__(self) -> None:
        self.peers: list[RTCPeerConnection] = []

    async def answer(self, offer: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.peers))


async def connect_direct(client: VoiceClient, answerer: DirectAnswerer, timeout: float = 15.0) -> float:
    """Like :meth:`VoiceClient.connect` but answered in-process by ``answerer``: the baseline."""
    offer = await client.offer()
    started = time.monotonic()
    answer = await answerer.answer(offer)
    connected = asyncio.get_running_loop().create_future()

    @client.pc.on("connectionstatechange")
    def on_state() -> None:
        if client.pc.connectionState in ("connected", "failed", "closed") and not connected.done():
            connected.set_result(client.pc.connectionState)

    await client.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    state = await asyncio.wait_for(connected, timeout)
    if state != "connected":
        raise AssertionError(f"direct session ended up {state}")
    client.setup_s = time.monotonic() - started
    return client.setup_s


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values))) if values else float("nan")


def run_in_namespace(
    namespace: str | None, main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 300
) -> T:
    """Run ``main()`` on a new event loop in a thread inside ``namespace`` (None: here); return its result.

    Every socket the coroutine opens (aiortc's ICE sockets, HTTP) lives in that namespace.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            if namespace is None:
                result.append(asyncio.run(main()))
            else:
                with netns.entered(namespace):
                    result.append(asyncio.run(main()))
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=body, name=f"client-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"client run in {namespace} did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]
