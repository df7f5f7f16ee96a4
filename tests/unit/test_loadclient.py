"""labkit.loadclient's pieces without a network: one certificate for every peer connection,
the encoded microphone, decoding on the loop, the self-check. Each reaches into an aiortc
1.16 private attribute or behaviour, so an upgrade that moves one fails here (the e2e test
tests/e2e/test_loadclient.py runs real sessions through the lab)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import numpy as np
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, Packet

from labkit import loadclient
from labkit.loadclient import InlineDecoding, LoadVoiceClient, SelfCheck, peer_connection
from transceiver.audio import MonoConverter, silence_payload
from transceiver.client import FRAME, Heard, dominant_frequency, encoded_script, tone

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def fingerprint(sdp: str) -> str:
    match = re.search(r"^a=fingerprint:(.+)$", sdp, re.M)
    assert match, sdp
    return match[1].strip()


def test_peer_connections_share_one_certificate() -> None:
    async def offers() -> list[str]:
        certificate = loadclient.shared_certificate()
        out = []
        for pc in (peer_connection(certificate), peer_connection(certificate), peer_connection()):
            pc.addTransceiver("audio")
            await pc.setLocalDescription(await pc.createOffer())
            out.append(pc.localDescription.sdp)
            await pc.close()
        return out

    shared, again, own = asyncio.run(offers())
    assert fingerprint(shared) == fingerprint(again)  # the one certificate, in both offers
    assert fingerprint(own) != fingerprint(shared)  # aiortc's default: a certificate per connection


def test_encoded_mic_hands_the_sender_the_script_then_silence() -> None:
    async def frames() -> tuple[list[Packet], LoadVoiceClient]:
        client = LoadVoiceClient("unused")
        script = tone(440.0, 100)  # five frames
        client.mic.play(script)
        out = []
        for _ in range(8):
            packet = await client.mic.recv()
            assert isinstance(packet, Packet)
            out.append(packet)
        await client.pc.close()
        return out, client

    packets, client = asyncio.run(frames())
    assert [p.pts for p in packets] == [i * FRAME for i in range(8)]
    payloads = [bytes(p) for p in packets]
    assert payloads[:5] == list(encoded_script(tone(440.0, 100).tobytes()))
    assert payloads[5:] == [silence_payload()] * 3
    assert client.mic.frames_sent == 8 and client.mic.script_started is not None
    assert client.mic.frames_late == 0  # paced in real time on an idle loop


def test_encoded_script_decodes_to_its_pitch() -> None:
    decoder, converter = OpusDecoder(), MonoConverter()
    pcm = []
    for i, payload in enumerate(encoded_script(tone(523.3, 400).tobytes())):
        for frame in decoder.decode(JitterFrame(payload, i * FRAME)):
            assert isinstance(frame, AudioFrame)
            pcm.append(np.frombuffer(converter.convert(frame), "<i2"))
    assert abs(dominant_frequency(np.concatenate(pcm)[FRAME * 4 :]) - 523.3) < 5.0


def test_inline_decoding_records_what_the_receiver_hands_over() -> None:
    async def scenario() -> tuple[Heard, bool]:
        client = LoadVoiceClient("unused")
        await client.offer()  # the audio transceiver exists now, its receiver not started
        (transceiver,) = [t for t in client.pc.getTransceivers() if t.kind == "audio"]
        queue = transceiver.receiver._RTCRtpReceiver__decoder_queue  # pinned: aiortc 1.16
        assert isinstance(queue, InlineDecoding)
        for i, payload in enumerate(encoded_script(tone(392.0, 200).tobytes())):
            queue.put((OPUS, JitterFrame(payload, i * FRAME)))
        for i in range(10, 13):  # the transceiver's encoded silence: heard as silence, not decoded
            queue.put((OPUS, JitterFrame(silence_payload(), i * FRAME)))
        waiting = asyncio.get_running_loop().run_in_executor(None, queue.get)  # aiortc's decoder thread
        await asyncio.sleep(0.05)
        blocked = not waiting.done()
        queue.put(None)  # the receiver stops
        await waiting
        await client.pc.close()
        return client.heard, blocked

    heard, blocked = asyncio.run(scenario())
    assert blocked  # the thread waited for the stop, it decoded nothing
    assert len(heard.frames) == 13 and all(f.size == FRAME for f in heard.frames)
    assert abs(dominant_frequency(heard.pcm()[FRAME * 4 : FRAME * 10]) - 392.0) < 5.0
    assert all(not f.any() for f in heard.frames[10:])


def test_self_check_passes_an_idle_loop_and_flags_a_blocked_one() -> None:
    async def check(block_s: float, late: int) -> dict[str, Any]:
        probe = SelfCheck()
        probe.start()
        await asyncio.sleep(0.1)
        time.sleep(block_s)  # a callback that holds the loop
        await asyncio.sleep(0.05)
        return await probe.finish([{"frames_sent": 100, "frames_late": late}])

    idle = asyncio.run(check(0.0, 0))
    assert idle["frames_late_share"] == 0.0 and idle["cpu_share"] < 1.0
    # (its lag depends on the machine: a busy one may delay even an idle loop)
    assert "not the bottleneck" in loadclient.describe(idle | {"bottleneck": False, "over_limits": []})
    blocked = asyncio.run(check(0.2, 5))
    assert blocked["loop_lag_ms_max"] >= 150
    assert {"loop_lag_ms_p99", "frames_late_share"} <= set(blocked["over_limits"])
    assert blocked["bottleneck"] is True and blocked["stalls"]
    assert "BOTTLENECK" in loadclient.describe(blocked)


def test_wait_event_wakes_on_the_next_message() -> None:
    """VoiceClient.wait_event sleeps until a message arrives (no 10 ms polling per session)."""

    async def scenario() -> tuple[float, float, str]:
        client = LoadVoiceClient("unused")
        loop = asyncio.get_running_loop()

        def arrive(kind: str) -> None:
            client.events.append((time.monotonic(), {"type": kind}))
            client._arrived.set()  # what the data channel's message handler does

        loop.call_later(0.05, arrive, "speech_started")
        loop.call_later(0.1, arrive, "response_done")
        started = time.monotonic()
        at = await client.wait_event("response_done", timeout=2.0)
        waited = time.monotonic() - started
        try:
            await client.wait_event("response_done", count=2, timeout=0.1)
        except AssertionError as exc:
            error = str(exc)
        await client.pc.close()
        return at - started, waited, error

    at, waited, error = asyncio.run(scenario())
    assert 0.09 < at < 0.5 and waited < 0.5
    assert error.startswith("no 2x response_done within 0.1s")
