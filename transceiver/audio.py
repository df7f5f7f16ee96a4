"""Audio conversions on the per-frame path, kept cheap because every session pays them 50 times a second.

- :class:`VoiceEncoder`: the agent's voice to Opus, done here instead of in aiortc. An
  ``RTCRtpSender`` given ``av.AudioFrame`` objects computes the RFC 6465 audio level in
  pure Python (~90 µs a frame) and encodes stereo at 96 kbit/s on an executor thread
  (~215 µs plus the hop); given ``av.Packet`` objects it only packetises them. We encode
  mono voice (32 kbit/s, ``voip``) and send one cached packet of encoded silence whenever
  the agent is quiet, which is most of a conversation. Opus decoders take mono packets
  in an ``opus/48000/2`` stream (RFC 7587 §7).
- :class:`FrameClock`: real-time pacing of a track that yields one 20 ms frame per
  ``recv()``, as a microphone would.
- :class:`MonoConverter`: a decoded client frame to s16le mono 48 kHz bytes; for what
  aiortc's Opus decoder produces (s16 interleaved stereo, 48 kHz) a numpy view of the
  first channel (voice is mono-coded, both channels carry it), an ``AudioResampler``
  (which mixes down) for anything else.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from av import AudioFrame, AudioResampler, CodecContext, Packet
from av.audio.codeccontext import AudioCodecContext

from transceiver.agent_protocol import FRAME_SAMPLES, SAMPLE_RATE, AudioFormat

if TYPE_CHECKING:  # aiortc is heavy to import; agents (the SDK) use this module without it
    from aiortc import RTCPeerConnection

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
BIT_RATE = 32000
RING_OUT_FRAMES = 3  # silence still run through the encoder after speech, so it decays cleanly
_SILENCE_PCM = bytes(FRAME_SAMPLES * 2)


class FrameClock:
    """The pts of a track's next 20 ms frame, returned once that frame is due.

    The first call starts the clock; each later one advances pts by a frame and sleeps
    until start + pts (absolute deadlines, so a late frame does not delay the rest)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.pts = 0

    async def tick(self) -> int:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self.pts += FRAME_SAMPLES
            delay = self._start + self.pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return self.pts


def _opus_encoder() -> AudioCodecContext:
    codec = CodecContext.create("libopus", "w")
    assert isinstance(codec, AudioCodecContext)
    codec.bit_rate = BIT_RATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    return codec


def _frame(pcm: bytes, pts: int) -> AudioFrame:
    frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
    frame.sample_rate = SAMPLE_RATE
    frame.planes[0].update(pcm)
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


@cache
def silence_payload() -> bytes:
    """One 20 ms Opus packet of digital silence, from an encoder that has settled on silence."""
    codec = _opus_encoder()
    packets: list[Packet] = []
    for i in range(10):
        packets += codec.encode(_frame(_SILENCE_PCM, i * FRAME_SAMPLES))
    return bytes(packets[-1])


class VoiceEncoder:
    """20 ms s16le mono frames -> Opus packets with ``pts`` in 1/48000 s (what ``RTCRtpSender`` packs)."""

    def __init__(self) -> None:
        self._codec: AudioCodecContext | None = (
            None  # made at the first sound: a silent session never needs one
        )
        self._quiet = RING_OUT_FRAMES

    def encode(self, pcm: bytes, pts: int, *, silent: bool) -> Packet:
        if silent and self._quiet >= RING_OUT_FRAMES:
            payload = silence_payload()
        else:
            self._quiet = self._quiet + 1 if silent else 0
            if self._codec is None:
                self._codec = _opus_encoder()
            out = self._codec.encode(_frame(pcm, pts))
            payload = bytes(out[-1]) if out else silence_payload()
        packet = Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


class MonoConverter:
    """Decoded client audio -> s16le mono 48 kHz bytes."""

    def __init__(self) -> None:
        self._resampler: AudioResampler | None = None

    def convert(self, frame: AudioFrame) -> bytes:
        if frame.sample_rate == SAMPLE_RATE and frame.format.name == "s16":
            channels = len(frame.layout.channels)
            samples = np.frombuffer(memoryview(frame.planes[0]), dtype="<i2", count=frame.samples * channels)
            return samples[::channels].tobytes() if channels > 1 else samples.tobytes()
        if self._resampler is None:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        return b"".join(bytes(m.planes[0])[: m.samples * 2] for m in self._resampler.resample(frame))


class PcmConverter:
    """s16le mono at one :class:`AudioFormat` -> whole frames of another (rate and frame size).

    Streams: samples left over from one ``push`` (a partial frame, the resampler's filter
    delay) come out with the next. libswresample (through PyAV) does the rate change,
    low-pass filtered, so 48 kHz -> 16 kHz does not alias into a recogniser's band."""

    def __init__(self, src: AudioFormat, dst: AudioFormat) -> None:
        self.src = src
        self.dst = dst
        self._resampler = (
            None if src.rate == dst.rate else AudioResampler(format="s16", layout="mono", rate=dst.rate)
        )
        self._pending = b""

    def push(self, pcm: bytes) -> list[bytes]:
        if self._resampler is None:
            self._pending += pcm
        elif pcm:
            frame = AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
            frame.sample_rate = self.src.rate
            frame.planes[0].update(pcm)
            for out in self._resampler.resample(frame):
                self._pending += bytes(out.planes[0])[: out.samples * 2]
        size = self.dst.frame_bytes
        whole = len(self._pending) // size * size
        frames = [self._pending[i : i + size] for i in range(0, whole, size)]
        self._pending = self._pending[whole:]
        return frames

    def flush(self) -> list[bytes]:
        """The end of the stream: what is buffered (the resampler's delay, a partial frame)
        as whole frames, the last padded with silence; then ready for a new stream."""
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._pending += bytes(out.planes[0])[: out.samples * 2]
        size = self.dst.frame_bytes
        tail = self._pending + bytes(-len(self._pending) % size)
        self.reset()
        return [tail[i : i + size] for i in range(0, len(tail), size)]

    def reset(self) -> None:
        """Drop what is buffered (a cut response must not leak into the next one)."""
        self._pending = b""
        if self._resampler is not None:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=self.dst.rate)


AIORTC_AUDIO_JITTER_CAPACITY = 16  # packets (aiortc 1.16's RTCRtpReceiver: capacity 16, prefetch 4)


def set_receive_prefetch(pc: RTCPeerConnection, packets: int) -> None:
    """Hold ``packets`` of the caller's audio before decoding (aiortc: 4 and one more, 100 ms).

    Every 20 ms packet held delays the caller's voice to the VAD, so the end of a turn
    and a barge-in are seen that much later (docs/AGENTS.md has the figures). aiortc has
    no setting for it: its receivers' private buffer is replaced by a
    :class:`transceiver.jitter.VoiceJitterBuffer`, after ``setRemoteDescription`` created
    them and before any packet arrived; tests/unit/test_transceiver_audio.py fails if an
    upgrade moves the attribute."""
    from transceiver.jitter import VoiceJitterBuffer

    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            receiver = transceiver.receiver
            if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
                raise RuntimeError("aiortc's RTCRtpReceiver has no jitter buffer attribute to set")
            buffer = VoiceJitterBuffer(capacity=AIORTC_AUDIO_JITTER_CAPACITY, prefetch=packets)
            receiver._RTCRtpReceiver__jitter_buffer = buffer
