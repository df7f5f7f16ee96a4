"""A WHIP voice client: an unmodified aiortc peer, as any standard WebRTC client would be.

:class:`VoiceClient` POSTs its offer to ``/v1/sessions`` (RFC 9725 shape), plays a PCM
script (48 kHz mono s16) into its microphone track in real time, records what it hears
with the arrival time of every frame, and collects the turn events of the ``events``
data channel. :func:`converse` runs a whole scripted session (connect, N turns of
"say a tone, wait for the agent's answer", RTCP statistics, hang up) and returns a
JSON-ready result; ``python -m transceiver.client URL --out result.json`` runs it as a
process. ``icegate demo`` and B6 run many on one event loop through the load client
(``labkit.loadclient``), with :class:`EncodedScriptTrack` as the microphone.

The client never uses a STUN server (``iceServers=[]``): it offers its host candidates
and the transceiver learns its address from the checks that arrive through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import click
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcicetransport import RTCIceTransport
from av import AudioFrame, Packet
from yarl import URL

from transceiver.audio import FrameClock, MonoConverter, VoiceEncoder, silence_payload

RATE = 48000
FRAME = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, RATE)
SPEECH_MS = 600  # one utterance of a scripted turn
UNHEARD_S = 2.0  # --repeat-unheard: no speech_started this long after an utterance: say it again
JITTER_TAIL_S = 0.3  # after response_done: the answer's last frames still on their way to the speaker
MIC_START_S = 5.0  # a played script's first frame must reach the sender within this (it is due in 20 ms)
LATE_S = 0.02  # a frame handed to the sender this much after it was due counts as late
LOUD = 0.05  # RMS (fraction of full scale) above which a heard frame counts as the agent's voice


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


class Microphone(MediaStreamTrack):
    """The client's microphone: plays a script in real time, then silence, 20 ms per frame.

    Subclasses say how a frame goes to aiortc's sender: :class:`ScriptTrack` as PCM (the
    sender encodes it, as for any microphone), :class:`EncodedScriptTrack` as Opus packets
    encoded once per script. Both keep count of the frames they hand over and of those
    handed over more than ``LATE_S`` after they were due (a starved event loop)."""

    kind = "audio"

    def __init__(self, script: np.ndarray | None = None) -> None:
        super().__init__()
        self._script = np.zeros(0, np.int16)
        self._pos = 0
        self._clock = FrameClock()
        self._first: float | None = None  # when the first frame was due (the clock's start)
        self.script_started: float | None = None  # monotonic time the current script began playing
        self.frames_sent = 0
        self.frames_late = 0  # handed over more than LATE_S after they were due
        self.max_late_s = 0.0
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

    async def _next(self) -> tuple[int, int | None]:
        """Wait for the next frame's time; its pts and the offset of its samples in the
        script (None: silence)."""
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._clock.tick()
        now = time.monotonic()
        if self._first is None:
            self._first = now
        late = now - (self._first + pts / RATE)
        if late > LATE_S:
            self.frames_late += 1
        self.max_late_s = max(self.max_late_s, late)
        self.frames_sent += 1
        if self.done:
            return pts, None
        if self._pos == 0:
            self.script_started = now
        offset = self._pos
        self._pos += FRAME
        return pts, offset


class ScriptTrack(Microphone):
    """A microphone that hands aiortc PCM frames (its sender encodes each one)."""

    async def recv(self) -> AudioFrame:
        pts, offset = await self._next()
        chunk = np.zeros(FRAME, np.int16)
        if offset is not None:
            part = self._script[offset : offset + FRAME]
            chunk[: part.size] = part
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = TIME_BASE
        return frame


class EncodedScriptTrack(Microphone):
    """A microphone that hands aiortc Opus packets: each script is encoded once, when it is
    played (a cache shares the work between sessions playing the same script), and silence
    is one cached packet. aiortc's sender only packetises a packet, where a PCM frame costs
    it an audio-level computation and an encode on an executor thread (transceiver.audio);
    this is what lets one load-client process carry many sessions."""

    _payloads: tuple[bytes, ...] = ()

    def play(self, script: np.ndarray) -> None:
        super().play(script)
        self._payloads = encoded_script(self._script.tobytes())

    async def recv(self) -> Packet:
        pts, offset = await self._next()
        if offset is None:
            payload = silence_payload()
        else:
            payloads = self._payloads
            payload = payloads[offset // FRAME] if offset // FRAME < len(payloads) else silence_payload()
        packet = Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


@functools.lru_cache(maxsize=64)
def encoded_script(pcm: bytes) -> tuple[bytes, ...]:
    """Opus payloads of s16le mono 48 kHz ``pcm``, one per 20 ms frame (the last padded with silence)."""
    samples = np.frombuffer(pcm, np.int16)
    frames = -(-samples.size // FRAME)
    padded = np.zeros(frames * FRAME, np.int16)
    padded[: samples.size] = samples
    encoder = VoiceEncoder()
    return tuple(
        bytes(encoder.encode(padded[i * FRAME : (i + 1) * FRAME].tobytes(), i * FRAME, silent=False))
        for i in range(frames)
    )


def loud(frame: np.ndarray, threshold: float = LOUD) -> bool:
    return bool(np.sqrt(np.mean(frame.astype(np.float64) ** 2)) >= threshold * 32767)


@dataclass
class Heard:
    """What the client's speaker received: mono PCM with the arrival time of each 20 ms frame."""

    frames: list[np.ndarray] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    def first_loud_after(self, t: float, threshold: float = LOUD) -> float | None:
        for arrival, frame in zip(self.arrivals, self.frames, strict=True):
            if arrival >= t and loud(frame, threshold):
                return arrival
        return None

    def gaps(self, longer_than_s: float = 0.03) -> list[tuple[float, float]]:
        """Pauses in the media: ``(wall-clock start, seconds)`` of every wait between two
        frame arrivals longer than ``longer_than_s`` (frames come every 20 ms)."""
        to_wall = time.time() - time.monotonic()
        pairs = zip(self.arrivals, self.arrivals[1:], strict=False)
        return [(a + to_wall, b - a) for a, b in pairs if b - a > longer_than_s]

    def between(self, start: float, end: float) -> np.ndarray:
        """The PCM of the frames that arrived in ``[start, end]``."""
        chosen = [f for f, t in zip(self.frames, self.arrivals, strict=True) if start <= t <= end]
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int16)


async def record(track: MediaStreamTrack, heard: Heard) -> None:
    converter = MonoConverter()  # a numpy view of one channel for what aiortc's decoder yields
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame)
        heard.frames.append(np.frombuffer(converter.convert(frame), np.int16))
        heard.arrivals.append(time.monotonic())


@dataclass
class VoiceClient:
    """One WHIP-style voice session against ``base_url`` (``http://host:port``)."""

    base_url: str
    token: str | None = None
    mic: Microphone = field(default_factory=ScriptTrack)
    heard: Heard = field(default_factory=Heard)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    location: str | None = None
    session_url: str | None = None  # the session's absolute URL (after any 307 from a front door)
    decision: str | None = None  # a geo front door's ``Icegate-Decision`` header, when one steered us
    answer: str | None = None
    setup_s: float | None = None  # POST sent -> connected
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set by every event message

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
            self._arrived.set()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(record(track, self.heard)))

        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def connect(self, http: aiohttp.ClientSession, timeout: float = 15.0) -> float:
        """POST the offer, apply the answer, wait for ``connected``; return the set-up time."""
        offer = await self.offer()
        started = time.monotonic()
        async with http.post(f"{self.base_url}/v1/sessions", data=offer, headers=self._headers()) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise AssertionError(f"POST /v1/sessions: {resp.status} {body}")
            self.location = resp.headers["Location"]
            self.session_url = str(resp.url.join(URL(self.location)))
            for hop in resp.history:  # a front door's 307 says where and why (geo.frontdoor)
                self.decision = hop.headers.get("Icegate-Decision", self.decision)
            self.answer = body
        return await self.accept(body, started, timeout)

    async def accept(self, answer: str, started: float, timeout: float = 15.0) -> float:
        """Apply ``answer`` and wait for ``connected``; the set-up time is counted from ``started``."""
        connected = asyncio.get_running_loop().create_future()

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(self.pc.connectionState)

        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        state = await asyncio.wait_for(connected, timeout)
        if state != "connected":
            raise AssertionError(f"session ended up {state}")
        self.setup_s = time.monotonic() - started
        return self.setup_s

    def event_types(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    def event_times(self, kind: str) -> list[float]:
        return [t for t, e in self.events if e["type"] == kind]

    async def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> float:
        """Wait until ``count`` events of ``kind`` arrived; return the arrival time of the last."""
        deadline = time.monotonic() + timeout
        while True:
            times = self.event_times(kind)
            if len(times) >= count:
                return times[count - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count}x {kind} within {timeout}s; got {self.event_types()}")
            # Woken by the next message, not by polling: dozens of sessions in one load client
            # would otherwise wake the loop thousands of times a second for nothing.
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def ice_transport(self) -> RTCIceTransport | None:
        """The ICE transport the audio runs on (the bundled one)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio" and transceiver.sender.transport is not None:
                ice: RTCIceTransport = transceiver.sender.transport.transport
                return ice
        return None

    def addresses(self) -> dict[str, list[str]]:
        """``ip:port`` of the local and the remote candidates of the audio transport."""
        ice = self.ice_transport()
        if ice is None:
            return {"local": [], "remote": []}
        return {
            "local": [f"{c.ip}:{c.port}" for c in ice.iceGatherer.getLocalCandidates()],
            "remote": [f"{c.ip}:{c.port}" for c in ice.getRemoteCandidates()],
        }

    async def rtp_stats(self) -> dict[str, Any]:
        """Loss and round trip from RTCP: what the far end reported (receiver reports) and our receiver."""
        out: dict[str, Any] = {}
        for stats in (await self.pc.getStats()).values():
            if stats.type == "remote-inbound-rtp":  # the transceiver's receiver reports on our stream
                out["up_packets_lost"] = stats.packetsLost
                out["up_fraction_lost"] = stats.fractionLost
                if stats.roundTripTime is not None:
                    out["rtcp_rtt_ms"] = round(stats.roundTripTime * 1000, 2)
            elif stats.type == "inbound-rtp":  # our receiver (what our own reports say)
                out["down_packets_received"] = stats.packetsReceived
                out["down_packets_lost"] = stats.packetsLost
            elif stats.type == "outbound-rtp":
                out["up_packets_sent"] = stats.packetsSent
        return out

    async def hangup(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location is not None:
            url = self.session_url or f"{self.base_url}{self.location}"
            async with http.delete(url, headers=self._headers()):
                pass
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The far end's DTLS close_notify makes aiortc schedule a close() of its own: let it finish.
        await asyncio.sleep(0.05)


async def speaking(mic: Microphone, timeout: float = MIC_START_S) -> float:
    """Wait for the sender to take the first frame of the script just played; its time."""
    deadline = time.monotonic() + timeout
    while mic.script_started is None:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the microphone did not start within {timeout:g} s: the sender took no frame "
                "(a starved event loop: see the load client's self-check)"
            )
        await asyncio.sleep(0.005)
    return mic.script_started


async def take_turn(
    client: VoiceClient, number: int, hz: float, timeout: float, repeats: int = 0
) -> dict[str, Any]:
    """Say ``SPEECH_MS`` of ``hz`` and wait for answer ``number``.

    Round trip: end of speech -> first loud frame of the answer at the client. With
    ``repeats``, a turn the agent did not hear (no ``speech_started`` within
    ``UNHEARD_S`` of the utterance's start: it was lost on the way, e.g. in a relay
    failover's media gap) is said again, up to that many times, as a person would; the
    turn records how often (``repeated``).
    """
    for repeated in range(repeats + 1):
        client.mic.play(np.concatenate([tone(hz, SPEECH_MS), silence(100)]))
        started = await speaking(client.mic)
        if repeated == repeats:
            break
        try:
            await client.wait_event("speech_started", count=number, timeout=SPEECH_MS / 1000 + UNHEARD_S)
            break
        except AssertionError:
            continue
    end_of_speech = started + SPEECH_MS / 1000
    done = await client.wait_event("response_done", count=number, timeout=timeout)
    first = client.heard.first_loud_after(end_of_speech)
    answer = client.heard.between(first, done) if first is not None else np.zeros(0, np.int16)
    return {
        "rtt_ms": None if first is None else round((first - end_of_speech) * 1000, 1),
        "heard_hz": round(dominant_frequency(answer), 1),
        "answer_ms": round(answer.size * 1000 / RATE),
        "repeated": repeated,
    }


class SpokenTurns:
    """Turns spoken with espeak-ng and answers recognised with pocketsphinx (``--agent speech``).

    Each turn says the next phrase of ``script`` (in the speech agent's voice, which its
    recogniser is tuned for), waits for the answer, recognises it against the answers the
    speech agent knows, and reports what each side said and heard."""

    def __init__(self, script: list[str]) -> None:
        from transceiver.agent import speech

        self._speech = speech
        self.script = script
        self.listener = speech.Recognizer([*speech.DIALOGUE.values(), speech.NOT_UNDERSTOOD])

    async def take(self, client: VoiceClient, number: int, timeout: float) -> dict[str, Any]:
        from transceiver.agent.voice import synthesize

        agent = self._speech.SpeechAgent
        phrase = self.script[(number - 1) % len(self.script)]
        voice = await asyncio.to_thread(synthesize, phrase, RATE, voice=agent.voice, wpm=agent.wpm)
        voiced = np.flatnonzero(np.abs(voice) > LOUD * 32767 / 5)  # espeak-ng ends with silence
        said_ms = (int(voiced[-1]) + 1 if voiced.size else voice.size) * 1000 // RATE
        before = len(client.events)
        client.mic.play(np.concatenate([voice, silence(100)]))
        end_of_speech = await speaking(client.mic) + said_ms / 1000
        done = await client.wait_event("response_done", count=number, timeout=timeout)
        await asyncio.sleep(JITTER_TAIL_S)  # the answer's last frames are still in the jitter buffer
        first = client.heard.first_loud_after(end_of_speech, threshold=0.01)
        end = done + JITTER_TAIL_S
        answer = client.heard.between(first, end) if first is not None else np.zeros(0, np.int16)
        heard = await asyncio.to_thread(self.listener.recognize, _to_16k(answer)) if answer.size else ""
        transcripts = [e for _, e in client.events[before:] if e["type"] == "transcript"]
        return {
            "said": phrase,
            "agent_heard": next((e["text"] for e in transcripts if e["role"] == "user"), None),
            "agent_said": next((e["text"] for e in transcripts if e["role"] == "agent"), None),
            "client_heard": heard,
            "rtt_ms": None if first is None else round((first - end_of_speech) * 1000, 1),
            "answer_ms": round(answer.size * 1000 / RATE),
            "heard_hz": 0.0,
        }


def _to_16k(pcm: np.ndarray) -> np.ndarray:
    from transceiver.agent_protocol import AudioFormat
    from transceiver.audio import PcmConverter

    converter = PcmConverter(AudioFormat(RATE, 20), AudioFormat(16000, 20))
    out = converter.push(pcm.astype("<i2").tobytes() + bytes(FRAME * 2))
    return np.frombuffer(b"".join(out), "<i2")


async def converse(
    url: str,
    hz: float,
    duration_s: float,
    *,
    token: str | None = None,
    timeout: float = 15.0,
    spoken: SpokenTurns | None = None,
    client: VoiceClient | None = None,
    http: aiohttp.ClientSession | None = None,
    repeat_unheard: int = 0,
) -> dict[str, Any]:
    """A whole session: connect, turns (new ones start until ``duration_s`` has passed), stats, hang up.

    Turns are tones of ``hz`` (each said up to ``repeat_unheard`` more times when the agent
    did not hear it: :func:`take_turn`), or phrases with ``spoken``. ``client`` (made for ``url``
    when not given) and ``http`` (a session of its own when not given) let a load client
    run many of these on one event loop. Never raises for a failed session: the result
    carries ``error`` instead.
    """
    client = client or VoiceClient(url, token=token)
    result: dict[str, Any] = {"url": url, "tone_hz": hz, "error": None, "turns": []}
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(aiohttp.ClientSession())
        try:
            async with asyncio.timeout(duration_s + 3 * timeout):
                await client.connect(http, timeout)
                assert client.setup_s is not None
                result["setup_ms"] = round(client.setup_s * 1000, 1)
                result |= client.addresses()
                talking = time.monotonic()
                while not result["turns"] or time.monotonic() - talking < duration_s:
                    number = len(result["turns"]) + 1
                    if spoken is not None:
                        turn = await spoken.take(client, number, timeout)
                    else:
                        turn = await take_turn(client, number, hz, timeout, repeat_unheard)
                    result["turns"].append(turn)
                result["rtp"] = await client.rtp_stats()
        except Exception as exc:  # reported in the result: the caller judges every session
            result["error"] = f"{type(exc).__name__}: {exc}".strip()
        finally:
            result["connection_state"] = client.pc.connectionState
            result["frames_sent"] = client.mic.frames_sent
            result["frames_late"] = client.mic.frames_late
            result["max_late_ms"] = round(client.mic.max_late_s * 1000, 1)
            result["frames_received"] = len(client.heard.frames)
            gaps = client.heard.gaps()
            result["max_gap_ms"] = round(max((g for _, g in gaps), default=0.0) * 1000, 1)
            result["gaps"] = [[round(t, 3), round(g * 1000, 1)] for t, g in gaps]
            last = client.heard.arrivals[-1:]
            result["heard_until"] = round(last[0] + time.time() - time.monotonic(), 3) if last else None
            result["events"] = client.event_types()
            result["location"] = client.location
            result["session_url"] = client.session_url
            result["decision"] = client.decision
            try:
                await client.hangup(http)
            except Exception as exc:  # the session is over either way
                result["hangup_error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


@click.command()
@click.argument("url")
@click.option("--hz", type=float, default=392.0, show_default=True, help="Pitch of the spoken tone.")
@click.option("--duration", type=float, default=2.0, show_default=True, help="Turns for S seconds (>= 1).")
@click.option("--token", help="Bearer token for the signaling endpoint.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result here.")
@click.option("--speech", "script", help="Speak these phrases (separated by '|') instead of tones.")
@click.option(
    "--repeat-unheard",
    type=click.IntRange(0, 5),
    default=0,
    show_default=True,
    help=f"Say a tone turn again, up to N times, when the agent did not hear it within {UNHEARD_S:g} s.",
)
def main(
    url: str,
    hz: float,
    duration: float,
    token: str | None,
    out: Path | None,
    script: str | None,
    repeat_unheard: int,
) -> None:
    """One voice session against the transceiver at URL; prints (or writes) the result as JSON."""
    spoken = SpokenTurns(script.split("|")) if script else None
    result = asyncio.run(
        converse(url, hz, duration, token=token, spoken=spoken, repeat_unheard=repeat_unheard)
    )
    text = json.dumps(result, indent=1)
    if out is None:
        click.echo(text)
    else:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    raise SystemExit(0 if result["error"] is None else 1)


if __name__ == "__main__":
    main()
