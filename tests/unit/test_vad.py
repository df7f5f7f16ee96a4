"""transceiver.vad with synthetic speech and silence."""

from __future__ import annotations

import numpy as np
import pytest

from icegate.errors import ConfigError
from transceiver.agent_protocol import FRAME_SAMPLES, SAMPLE_RATE, EventType
from transceiver.config import VadConfig
from transceiver.vad import SILENCE_DB, Endpointer, level_db, make_detector

CONFIG = VadConfig(threshold_db=-40.0, start_ms=60, hangover_ms=100, silence_ms=400)
DECISION = {"vad": "energy", "silence_ms": 400, "hangover_ms": 100, "threshold_db": -40.0}
S, P, E, B = EventType.SPEECH_STARTED, EventType.SPEECH_STOPPED, EventType.END_OF_TURN, EventType.BARGE_IN
rng = np.random.default_rng(1)


def tone(amplitude: float, hz: float = 250.0, frames: int = 1, start: int = 0) -> list[np.ndarray]:
    t = (np.arange(frames * FRAME_SAMPLES) + start * FRAME_SAMPLES) / SAMPLE_RATE
    wave = (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return list(wave.reshape(frames, FRAME_SAMPLES))


def noise(db: float, frames: int) -> list[np.ndarray]:
    rms = 32768 * 10 ** (db / 20)
    return list(np.clip(rng.normal(0, rms, (frames, FRAME_SAMPLES)), -32768, 32767).astype(np.int16))


def silence(frames: int) -> list[np.ndarray]:
    return [np.zeros(FRAME_SAMPLES, np.int16) for _ in range(frames)]


def run(frames: list[np.ndarray], config: VadConfig = CONFIG, agent: set[int] | None = None) -> list[tuple]:
    ep = Endpointer(config)
    out = []
    for i, frame in enumerate(frames):
        for ev in ep.push(frame.tobytes(), agent_speaking=i in (agent or set())):
            out.append((i, ev.type, dict(ev.fields)))
    return out


def test_level_db() -> None:
    assert level_db(silence(1)[0]) == SILENCE_DB
    assert level_db(b"") == SILENCE_DB
    assert level_db(tone(1.0)[0]) == pytest.approx(-3.01, abs=0.05)
    assert level_db(tone(0.1)[0]) == pytest.approx(-23.01, abs=0.05)
    assert level_db(tone(0.5)[0].tobytes()) == pytest.approx(-9.03, abs=0.05)


def test_one_utterance_starts_pauses_and_ends() -> None:
    frames = silence(10) + tone(0.3, frames=50) + silence(40)
    events = run(frames)
    assert events == [
        (12, S, {"turn": 1, "onset_ms": 60, "resumed": False}),  # 60 ms of speech
        (59 + 5, P, {"turn": 1, "trailing_ms": 100}),  # the hangover: voice stopped
        (59 + 25, E, {"turn": 1, "trailing_ms": 500, "speech_ms": 1000, "decision": DECISION}),
    ]
    # The offsets point back at the exact speech boundaries.
    start_at, end_at = events[0][0] - 3 + 1, events[2][0] - 25
    assert (start_at, end_at) == (10, 59)


def test_short_clicks_and_quiet_noise_are_not_speech() -> None:
    frames = silence(5) + tone(0.5, frames=2) + silence(20) + noise(-60, 100) + tone(0.5, frames=1)
    assert run(frames) == []


def test_a_pause_shorter_than_the_endpoint_resumes_the_same_turn() -> None:
    # speech, 300 ms pause (< 100 + 400 ms endpoint), speech: one turn, paused once
    frames = tone(0.3, frames=20) + silence(15) + tone(0.3, frames=20, start=35) + silence(30)
    events = run(frames)
    assert [e[1] for e in events] == [S, P, S, P, E]
    assert events[2][2] == {"turn": 1, "onset_ms": 60, "resumed": True}
    assert events[4][2]["speech_ms"] == (20 + 15 + 20) * 20


def test_a_click_in_a_pause_does_not_resume_or_extend_the_turn() -> None:
    frames = tone(0.3, frames=20) + silence(10) + tone(0.5, frames=1) + silence(30)
    events = run(frames)
    assert [e[1] for e in events] == [S, P, E]
    assert events[2][0] == 19 + 25  # counted from the last voiced frame of the speech


def test_pause_longer_than_the_endpoint_makes_two_turns() -> None:
    frames = tone(0.3, frames=20) + silence(30) + tone(0.3, frames=20) + silence(30)
    events = run(frames)
    assert [e[1] for e in events] == [S, P, E] * 2
    assert [e[2]["turn"] for e in events] == [1, 1, 1, 2, 2, 2]


def test_silence_threshold_is_configurable() -> None:
    short = VadConfig(threshold_db=-40.0, start_ms=20, hangover_ms=0, silence_ms=200)
    events = run(tone(0.3, frames=10) + silence(20), short)
    assert [(i, kind) for i, kind, _ in events] == [(0, S), (10, P), (19, E)]
    assert events[2][2]["trailing_ms"] == 200


def test_speech_in_noise_is_found_above_the_threshold() -> None:
    frames = noise(-55, 20) + [a + b for a, b in zip(tone(0.2, frames=30), noise(-55, 30), strict=True)]
    frames += noise(-55, 40)
    assert [e[1] for e in run(frames)] == [S, P, E]


def test_barge_in_only_when_speech_starts_over_the_agent() -> None:
    frames = tone(0.3, frames=10) + silence(40) + tone(0.3, frames=10) + silence(40)
    agent_playing = set(range(30, 60))  # the agent answers the first turn, the user interrupts
    events = run(frames, agent=agent_playing)
    assert [e[1] for e in events] == [S, P, E, S, B, P, E]
    assert events[4] == (52, B, {"turn": 2})  # the third frame of the interruption: at once


def test_continued_speech_while_agent_starts_is_not_a_barge_in() -> None:
    frames = tone(0.3, frames=40) + silence(30)
    events = run(frames, agent=set(range(10, 70)))  # speech began before the agent spoke
    assert [e[1] for e in events] == [S, P, E]


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
def test_model_detectors_hear_speech_and_not_silence_or_hum(detector: str, speech_48k: np.ndarray) -> None:
    """Real speech (espeak-ng) is voice; silence and a steady 50 Hz hum are not."""
    det = make_detector(VadConfig(detector=detector))
    frames = list(speech_48k[: speech_48k.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES))
    voiced = sum(det.is_voice(f.tobytes()) for f in frames)
    assert voiced >= len(frames) // 3, f"{voiced}/{len(frames)}"
    det = make_detector(VadConfig(detector=detector))
    quiet = silence(25) + tone(0.05, hz=50.0, frames=50)
    assert sum(det.is_voice(f.tobytes()) for f in quiet) <= len(quiet) // 10
    energy = make_detector(CONFIG)  # what the models are for: the hum is loud enough for energy
    assert energy.name == "energy" and sum(energy.is_voice(f.tobytes()) for f in quiet) == 50


def test_bad_detector_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"vad.detector: expected one of energy, webrtc, silero"):
        VadConfig(detector="psychic").validate("vad")


@pytest.fixture(scope="module")
def speech_48k() -> np.ndarray:
    from transceiver.agent.voice import synthesize

    return synthesize("the quick brown fox jumps over the lazy dog", SAMPLE_RATE)
