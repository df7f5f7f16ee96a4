"""Energy VAD, endpointing and barge-in: pure logic over 20 ms frames.

A frame is *loud* when its RMS level is at least ``threshold_db`` dBFS.

- ``speech_started``: ``start_ms`` of consecutive loud frames (a click or a knock
  shorter than that is not speech); the last ``onset_frames`` frames, this one
  included, are the start of speech.
- Once speaking, voice activity has a hangover: a frame is *active* while a loud frame
  was seen within ``hangover_ms`` (bridges the gaps between syllables and stops).
- ``speech_stopped`` (the endpoint: the user's turn is over): ``silence_ms`` of
  inactive frames, i.e. ``hangover_ms + silence_ms`` after the last loud frame; the last
  ``trailing_frames`` frames, this one included, came after the speech.
- ``barge_in``: speech starts while the agent is speaking. The caller cuts the agent's
  audio at once and tells the agent.

:class:`Endpointer` holds only counters; the caller feeds frames in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transceiver.agent_protocol import FRAME_MS, EventType, event
from transceiver.agent_protocol import Event as TurnEvent
from transceiver.config import VadConfig

SILENCE_DB = -96.0  # the level of digital silence (one LSB of s16 is about -90 dBFS)

__all__ = ["Endpointer", "TurnEvent", "level_db"]


def level_db(pcm: bytes | np.ndarray) -> float:
    """RMS level of signed 16-bit samples in dBFS (full-scale sine: -3 dBFS)."""
    samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    if samples.size == 0:
        return SILENCE_DB
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    if power <= 0.0:
        return SILENCE_DB
    return max(SILENCE_DB, 10.0 * math.log10(power / (32768.0 * 32768.0)))


@dataclass
class Endpointer:
    config: VadConfig
    speaking: bool = False  # the user's turn is in progress
    _loud_run: int = 0  # consecutive loud frames while not speaking
    _since_loud: int = 1 << 30  # frames since the last loud frame

    @property
    def _start_frames(self) -> int:
        return self.config.start_ms // FRAME_MS

    @property
    def _end_frames(self) -> int:
        return (self.config.hangover_ms + self.config.silence_ms) // FRAME_MS

    def push(self, pcm: bytes | np.ndarray, *, agent_speaking: bool = False) -> list[TurnEvent]:
        """Feed one frame; return the events it completes (usually none)."""
        return self.push_level(level_db(pcm), agent_speaking=agent_speaking)

    def push_level(self, level: float, *, agent_speaking: bool = False) -> list[TurnEvent]:
        loud = level >= self.config.threshold_db
        self._since_loud = 0 if loud else self._since_loud + 1
        if not self.speaking:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run < self._start_frames:
                return []
            self.speaking = True
            self._loud_run = 0
            started = event(EventType.SPEECH_STARTED, onset_frames=self._start_frames)
            if agent_speaking:
                return [started, event(EventType.BARGE_IN)]
            return [started]
        if self._since_loud < self._end_frames:
            return []
        self.speaking = False
        return [event(EventType.SPEECH_STOPPED, trailing_frames=self._since_loud)]
