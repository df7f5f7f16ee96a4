"""The caller's audio jitter buffer (transceiver/jitter.py) against aiortc's, packet by packet."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from transceiver.jitter import VoiceJitterBuffer

FRAME = 960  # 20 ms at 48 kHz


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * FRAME % 2**32)
    p._data = bytes([seq % 256]) * 3  # type: ignore[attr-defined]  # what aiortc's receiver depayloaded
    return p


def released(buffer: JitterBuffer, seqs: list[int]) -> list[int | None]:
    """For each packet added in this order, the frame handed out (by its first payload byte)."""
    out: list[int | None] = []
    for seq in seqs:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else frame.data[0])
    return out


def test_aiortc_holds_every_audio_packet_until_the_next_arrives_whatever_the_prefetch() -> None:
    for prefetch in (0, 1):
        assert released(JitterBuffer(16, prefetch=prefetch), [0, 1, 2, 3]) == [None, 0, 1, 2]


def test_prefetch_0_decodes_each_packet_on_arrival() -> None:
    assert released(VoiceJitterBuffer(16, 0), [0, 1, 2, 3]) == [0, 1, 2, 3]


def test_prefetch_n_holds_n_packets() -> None:
    assert released(VoiceJitterBuffer(16, 1), [0, 1, 2, 3]) == [None, 0, 1, 2]
    assert released(VoiceJitterBuffer(16, 2), [0, 1, 2, 3]) == [None, None, 0, 1]


def test_a_lost_packet_is_skipped_without_a_backlog() -> None:
    assert released(VoiceJitterBuffer(16, 0), [0, 1, 3, 4, 5]) == [0, 1, 3, 4, 5]
    # prefetch 1: waits one packet for 2, then goes on; still one packet held afterwards
    assert released(VoiceJitterBuffer(16, 1), [0, 1, 3, 4, 5, 6]) == [None, 0, 1, 3, 4, 5]


def test_a_reordered_packet_is_waited_for_within_the_prefetch_else_dropped() -> None:
    assert released(VoiceJitterBuffer(16, 1), [0, 1, 3, 2, 4, 5]) == [None, 0, 1, 2, 3, 4]
    assert released(VoiceJitterBuffer(16, 0), [0, 1, 3, 2, 4]) == [0, 1, 3, None, 4]


def test_sequence_numbers_wrap() -> None:
    assert released(VoiceJitterBuffer(16, 0), [65534, 65535, 65536, 65537]) == [254, 255, 0, 1]
