"""transceiver.audio: our Opus encoding decodes to what went in; silence costs a cached packet."""

from __future__ import annotations

import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from av import AudioFrame

from transceiver.audio import (
    RING_OUT_FRAMES,
    AudioFormat,
    MonoConverter,
    PcmConverter,
    VoiceEncoder,
    silence_payload,
)
from transceiver.bridge import SILENCE
from transceiver.client import dominant_frequency, tone

FRAME = 960


def decode(packets: list[bytes]) -> np.ndarray:
    """What a client hears: aiortc's own Opus decoder, then our mono conversion."""
    decoder, converter = OpusDecoder(), MonoConverter()
    out = []
    for i, payload in enumerate(packets):
        for frame in decoder.decode(JitterFrame(payload, i * FRAME)):
            assert isinstance(frame, AudioFrame)
            out.append(np.frombuffer(converter.convert(frame), "<i2"))
    return np.concatenate(out)


def test_voice_round_trips_through_opus() -> None:
    encoder = VoiceEncoder()
    speech = tone(440.0, 400).reshape(-1, FRAME)
    packets = [encoder.encode(f.tobytes(), i * FRAME, silent=False) for i, f in enumerate(speech)]
    assert [p.pts for p in packets] == [i * FRAME for i in range(len(speech))]
    heard = decode([bytes(p) for p in packets])
    assert abs(dominant_frequency(heard[FRAME * 4 :]) - 440.0) < 3.0


def test_silence_is_one_cached_packet_after_the_ring_out() -> None:
    encoder = VoiceEncoder()
    assert bytes(encoder.encode(SILENCE, 0, silent=True)) == silence_payload()  # never spoke: no encoder
    assert encoder._codec is None
    speech = tone(440.0, 60).reshape(-1, FRAME)
    for i, frame in enumerate(speech):
        encoder.encode(frame.tobytes(), i * FRAME, silent=False)
    after = [
        bytes(encoder.encode(SILENCE, (10 + i) * FRAME, silent=True)) for i in range(RING_OUT_FRAMES + 3)
    ]
    assert after[RING_OUT_FRAMES:] == [silence_payload()] * 3
    assert np.max(np.abs(decode([silence_payload()] * 5))) <= 2  # digital silence, give or take an LSB


def test_mono_converter_takes_stereo_s16_and_anything_else() -> None:
    left = tone(300.0, 20)
    stereo = np.stack([left, left]).T.reshape(1, -1)
    frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = 48000
    assert MonoConverter().convert(frame) == left.tobytes()
    planar = AudioFrame.from_ndarray(
        np.stack([left, left]).astype(np.float32) / 32768, format="fltp", layout="stereo"
    )
    planar.sample_rate = 48000
    converted = np.frombuffer(MonoConverter().convert(planar), "<i2")
    assert abs(dominant_frequency(converted) - 300.0) < 60.0  # resampled (and delayed) but the same tone


def test_receive_prefetch_replaces_aiortcs_audio_jitter_buffer() -> None:
    """Fails if an aiortc upgrade moves the receiver's private jitter buffer (transceiver.audio)."""
    import asyncio

    from aiortc import RTCPeerConnection, RTCSessionDescription

    from transceiver.audio import set_receive_prefetch

    async def main() -> None:
        caller, callee = RTCPeerConnection(), RTCPeerConnection()
        try:
            caller.addTransceiver("audio")
            await caller.setLocalDescription(await caller.createOffer())
            await callee.setRemoteDescription(RTCSessionDescription(caller.localDescription.sdp, "offer"))
            [receiver] = [t.receiver for t in callee.getTransceivers()]
            assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 4  # aiortc's own
            set_receive_prefetch(callee, 1)
            assert type(receiver._RTCRtpReceiver__jitter_buffer).__name__ == "VoiceJitterBuffer"
            assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
            assert receiver._RTCRtpReceiver__jitter_buffer.capacity == 16
        finally:
            await caller.close()
            await callee.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("rate", "frame_ms"), [(8000, 20), (16000, 20), (24000, 10), (24000, 40), (48000, 20)]
)
def test_a_stream_flushed_at_its_end_keeps_every_sample(rate: int, frame_ms: int) -> None:
    """700 ms at the agent's rate -> 35 frames of 20 ms at 48 kHz, none of it left inside the
    resampler (an agent's answer lost its last ~20 ms before flush existed)."""
    converter = PcmConverter(AudioFormat(rate, frame_ms), AudioFormat(48000, 20))
    pcm = (np.sin(2 * np.pi * 523 * np.arange(rate * 7 // 10) / rate) * 8000).astype("<i2").tobytes()
    step = rate * frame_ms // 1000 * 2
    frames = [f for i in range(0, len(pcm), step) for f in converter.push(pcm[i : i + step])]
    frames += converter.flush()
    assert len(frames) == 35 and all(len(f) == 1920 for f in frames)
    heard = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float32)
    assert dominant_frequency(heard, 48000) == pytest.approx(523, abs=5)
    assert converter.flush() == [] and converter.push(pcm[:step]) is not None  # ready for the next stream
