"""Voice activity and endpointing: which frames are voice, and when the caller's turn ends.

A :class:`Detector` says whether one 20 ms frame (48 kHz s16 mono) is voice:

- ``energy``: RMS level >= ``threshold_db`` dBFS (cheap; any loud noise is "voice");
- ``webrtc``: the WebRTC VAD (package ``webrtcvad-wheels``; GMM on sub-band energies),
  fed the 48 kHz frame directly (it takes 8/16/32/48 kHz, 10/20/30 ms);
- ``silero``: the Silero VAD model (the ONNX file inside the ``silero-vad`` package, run
  with onnxruntime on CPU, never torch) on 32 ms windows at 16 kHz; a frame is voice
  while the latest window's speech probability >= ``silero_threshold``.

:class:`Endpointer` turns voiced/unvoiced frames into the protocol's turn events
(docs/AGENT_PROTOCOL.md §4)::

    idle --(start_ms of voice)--> speaking --(hangover_ms unvoiced)--> pausing
    pausing --(start_ms of voice)--> speaking (speech_started, resumed)
    pausing --(silence_ms more unvoiced)--> idle (end_of_turn: the endpointing decision)

``barge_in`` is reported with ``speech_started`` when the agent is speaking at that
moment; the caller of :meth:`Endpointer.push` cuts the agent's audio.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from icegate.errors import ConfigError
from transceiver.agent_protocol import FRAME_MS, NATIVE, AudioFormat, EventType, event
from transceiver.agent_protocol import Event as TurnEvent
from transceiver.audio import PcmConverter
from transceiver.config import VadConfig

SILENCE_DB = -96.0  # the level of digital silence (one LSB of s16 is about -90 dBFS)
SILERO_WINDOW = AudioFormat(16000, 32)  # 512 samples: the window the 16 kHz model takes
SILERO_CONTEXT = 64  # samples of the previous window the model sees before each one

__all__ = ["Detector", "Endpointer", "TurnEvent", "level_db", "make_detector"]


def level_db(pcm: bytes | np.ndarray) -> float:
    """RMS level of signed 16-bit samples in dBFS (full-scale sine: -3 dBFS)."""
    samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    if samples.size == 0:
        return SILENCE_DB
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    if power <= 0.0:
        return SILENCE_DB
    return max(SILENCE_DB, 10.0 * math.log10(power / (32768.0 * 32768.0)))


class Detector(Protocol):
    name: str

    def is_voice(self, pcm: bytes) -> bool:
        """One 20 ms frame of 48 kHz s16le mono."""
        ...


class EnergyDetector:
    name = "energy"

    def __init__(self, threshold_db: float) -> None:
        self.threshold_db = threshold_db

    def is_voice(self, pcm: bytes) -> bool:
        return level_db(pcm) >= self.threshold_db


class WebRtcDetector:
    name = "webrtc"

    def __init__(self, mode: int) -> None:
        try:
            import webrtcvad
        except ImportError as exc:
            raise ConfigError("vad.detector", "webrtc needs the webrtcvad-wheels package") from exc
        self._vad = webrtcvad.Vad(mode)

    def is_voice(self, pcm: bytes) -> bool:
        return bool(self._vad.is_speech(pcm, NATIVE.rate))


@cache
def _silero_session() -> Any:
    """One onnxruntime session for every Silero detector (its state is per detector)."""
    spec = importlib.util.find_spec("silero_vad")  # locates the package without importing it (torch)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("vad.detector", "silero needs the silero-vad package (its ONNX model)")
    model = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("vad.detector", "silero needs onnxruntime") from exc
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1  # one frame at a time: threads only add hand-offs
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class SileroDetector:
    name = "silero"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._session = _silero_session()
        self._to16k = PcmConverter(NATIVE, SILERO_WINDOW)
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, SILERO_CONTEXT), np.float32)
        self._sr = np.array(SILERO_WINDOW.rate, np.int64)
        self.probability = 0.0

    def is_voice(self, pcm: bytes) -> bool:
        for window in self._to16k.push(pcm):
            x = np.frombuffer(window, "<i2").astype(np.float32)[None, :] / 32768.0
            x = np.concatenate([self._context, x], axis=1)
            out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
            self._context = x[:, -SILERO_CONTEXT:]
            self.probability = float(out[0][0])
        return self.probability >= self.threshold


def make_detector(config: VadConfig) -> Detector:
    if config.detector == "webrtc":
        return WebRtcDetector(config.webrtc_mode)
    if config.detector == "silero":
        return SileroDetector(config.silero_threshold)
    return EnergyDetector(config.threshold_db)


IDLE, SPEAKING, PAUSING = "idle", "speaking", "pausing"


@dataclass
class Endpointer:
    config: VadConfig
    detector: Detector | None = None  # made from config when not given
    state: str = IDLE
    turn: int = 0  # turns started so far; the current one while not idle
    _run: int = 0  # consecutive voiced frames
    _since_voice: int = 0  # frames since the turn's last voiced frame
    _speech: int = 0  # frames from the turn's onset to its last voiced frame

    def __post_init__(self) -> None:
        if self.detector is None:
            self.detector = make_detector(self.config)

    @property
    def speaking(self) -> bool:
        """The caller's turn is in progress (speaking or pausing within it)."""
        return self.state != IDLE

    @property
    def _start_frames(self) -> int:
        return max(1, self.config.start_ms // FRAME_MS)

    @property
    def _stop_frames(self) -> int:
        return max(1, self.config.hangover_ms // FRAME_MS)

    @property
    def _end_frames(self) -> int:
        return max(self._stop_frames, (self.config.hangover_ms + self.config.silence_ms) // FRAME_MS)

    def decision(self) -> dict[str, Any]:
        """What ``end_of_turn`` reports as the endpointing decision."""
        c = self.config
        out: dict[str, Any] = {"vad": c.detector, "silence_ms": c.silence_ms, "hangover_ms": c.hangover_ms}
        if c.detector == "energy":
            out["threshold_db"] = c.threshold_db
        elif c.detector == "webrtc":
            out["mode"] = c.webrtc_mode
        else:
            out["threshold"] = c.silero_threshold
        return out

    def push(self, pcm: bytes, *, agent_speaking: bool = False) -> list[TurnEvent]:
        """Feed one frame; return the events it completes (usually none)."""
        assert self.detector is not None
        return self.push_voiced(self.detector.is_voice(pcm), agent_speaking=agent_speaking)

    def push_voiced(self, voiced: bool, *, agent_speaking: bool = False) -> list[TurnEvent]:
        self._run = self._run + 1 if voiced else 0
        onset_ms = self._start_frames * FRAME_MS
        if self.state == IDLE:
            if self._run < self._start_frames:
                return []
            self.state, self.turn = SPEAKING, self.turn + 1
            self._since_voice, self._speech = 0, self._start_frames
            started = event(EventType.SPEECH_STARTED, turn=self.turn, onset_ms=onset_ms, resumed=False)
            if agent_speaking:
                return [started, event(EventType.BARGE_IN, turn=self.turn)]
            return [started]
        if self.state == SPEAKING:
            if voiced:
                self._speech += self._since_voice + 1
                self._since_voice = 0
                return []
            self._since_voice += 1
            if self._since_voice < self._stop_frames:
                return []
            self.state = PAUSING
            return [event(EventType.SPEECH_STOPPED, turn=self.turn, trailing_ms=self._since_voice * FRAME_MS)]
        # PAUSING: a click does not resume the turn; start_ms of voice does.
        self._since_voice += 1
        if self._run >= self._start_frames:
            self.state = SPEAKING
            self._speech += self._since_voice
            self._since_voice = 0
            return [event(EventType.SPEECH_STARTED, turn=self.turn, onset_ms=onset_ms, resumed=True)]
        if self._since_voice < self._end_frames:
            return []
        self.state = IDLE
        return [
            event(
                EventType.END_OF_TURN,
                turn=self.turn,
                trailing_ms=self._since_voice * FRAME_MS,
                speech_ms=self._speech * FRAME_MS,
                decision=self.decision(),
            )
        ]
