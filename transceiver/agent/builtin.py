"""The reference agents, written on the SDK (:mod:`transceiver.agent.sdk`) as examples.

- :class:`EchoAgent` replays each utterance once the turn ends (``end_of_turn``),
  trimmed to the speech plus a short pre-roll and tail; 48 kHz both ways, so the caller
  hears their own voice unresampled.
- :class:`ToneAgent` answers every turn with a tone (440 Hz, 300 ms by default): the
  shortest possible response, used to measure turn latency.
- :class:`LoopbackAgent` sends each loud frame back the moment it arrives, without
  waiting for the turn to end: mouth-to-ear latency (bench/b5_voice.py). Sessions that
  use it set a ``start_ms`` longer than their bursts, or the VAD would take the caller's
  burst over the agent's audio for a barge-in.

``icegate agent run --kind echo|tone`` serves them; ``--app module:Class`` serves any agent.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from transceiver.agent.sdk import Agent, EndOfTurn, SpeechStarted
from transceiver.vad import level_db

PREROLL_MS = 40  # replayed before the detected onset: the VAD needs a few frames to be sure
TAIL_MS = 60  # kept after the last voiced frame: the decay of the last syllable
MAX_UTTERANCE_MS = 30_000
LOOPBACK_DB = -30.0  # a frame at least this loud is looped back (a marked burst, not line noise)


def tone(hz: float, ms: int, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class EchoAgent(Agent):
    input_rate = 48000
    output_rate = 48000

    def __init__(self) -> None:
        super().__init__()
        self._recent: deque[np.ndarray] = deque(maxlen=(PREROLL_MS + 1000) // self.frame_ms)
        self._utterance: list[np.ndarray] | None = None

    async def on_audio(self, samples: np.ndarray) -> None:
        if self._utterance is None:
            self._recent.append(samples)
        elif len(self._utterance) < MAX_UTTERANCE_MS // self.frame_ms:
            self._utterance.append(samples)

    async def on_speech_started(self, ev: SpeechStarted) -> None:
        if ev.resumed or self._utterance is not None:
            return
        keep = min(len(self._recent), (ev.onset_ms + PREROLL_MS) // self.frame_ms)
        self._utterance = list(self._recent)[len(self._recent) - keep :]
        self._recent.clear()

    async def on_end_of_turn(self, ev: EndOfTurn) -> None:
        if self._utterance is None:
            return
        utterance, self._utterance = self._utterance, None
        cut = max(0, (ev.trailing_ms - TAIL_MS) // self.frame_ms)
        if cut:
            utterance = utterance[: len(utterance) - cut]
        if utterance:
            self.respond(np.concatenate(utterance))


class ToneAgent(Agent):
    input_rate = 16000  # it listens to nothing; the lowest rate costs least
    output_rate = 48000
    hz = 440.0
    ms = 300

    async def on_end_of_turn(self, ev: EndOfTurn) -> None:
        self.respond(tone(self.hz, self.ms, self.output_rate))


def tone_agent(hz: float, ms: int) -> type[ToneAgent]:
    """A :class:`ToneAgent` class answering with ``hz`` for ``ms``."""
    return type("ToneAgent", (ToneAgent,), {"hz": hz, "ms": ms})


class LoopbackAgent(Agent):
    """Each burst's first loud frame back at once, as a one-frame response; 48 kHz both
    ways, so the frame comes back sample for sample."""

    input_rate = 48000
    output_rate = 48000

    def __init__(self) -> None:
        super().__init__()
        self._in_burst = False

    async def on_audio(self, samples: np.ndarray) -> None:
        loud = level_db(samples) >= LOOPBACK_DB
        if loud and not self._in_burst:
            self.respond(samples)
        self._in_burst = loud
