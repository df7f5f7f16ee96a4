"""The caller's audio jitter buffer: aiortc's, releasing each packet as soon as it may be decoded.

aiortc's ``JitterBuffer`` is written for video, where a frame spans packets: it hands a
frame out only once a packet with the *next* timestamp has arrived, so every audio
packet waits for the one after it (20 ms), whatever the prefetch (0 and 1 behave alike;
aiortc's default of 4 holds five packets). An Opus packet is one whole frame (RFC 7587
§4.2), so :class:`VoiceJitterBuffer` holds only ``prefetch`` packets: with 0, each packet
goes to the decoder the moment it arrives in order; a missing packet is waited for while
no more than ``prefetch`` later ones are held, then skipped (arriving after that, it is
dropped as late, as aiortc drops any packet behind the buffer's origin). At most one
packet is released per packet added (aiortc's receiver takes one frame per ``add``), and
the buffer never holds more than ``prefetch`` after a release, so no backlog builds up.

A module of its own because it imports aiortc, which agents (:mod:`transceiver.audio`'s
other users) do not need.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame


class VoiceJitterBuffer(JitterBuffer):
    def __init__(self, capacity: int, prefetch: int = 0) -> None:
        super().__init__(capacity, prefetch=prefetch)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None  # add() sets it before calling this
        slots = ((self._origin + i) % self._capacity for i in range(self._capacity))
        held = [i for i, slot in enumerate(slots) if self._packets[slot] is not None]
        if len(held) <= self._prefetch:
            return None
        packet = self._packets[(self._origin + held[0]) % self._capacity]
        assert packet is not None
        self.remove(held[0] + 1)  # the packets before it (never arrived) are given up
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]
