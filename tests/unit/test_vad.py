"""transceiver.vad with synthetic speech and silence."""

from __future__ import annotations

import numpy as np
import pytest

from transceiver.agent_protocol import FRAME_SAMPLES, SAMPLE_RATE, EventType
from transceiver.config import VadConfig
from transceiver.vad import SILENCE_DB, Endpointer, level_db

CONFIG = VadConfig(threshold_db=-40.0, start_ms=60, hangover_ms=100, silence_ms=400)
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
        for ev in ep.push(frame, agent_speaking=i in (agent or set())):
            out.append((i, ev.type, dict(ev.fields)))
    return out


def test_level_db() -> None:
    assert level_db(silence(1)[0]) == SILENCE_DB
    assert level_db(b"") == SILENCE_DB
    assert level_db(tone(1.0)[0]) == pytest.approx(-3.01, abs=0.05)
    assert level_db(tone(0.1)[0]) == pytest.approx(-23.01, abs=0.05)
    assert level_db(tone(0.5)[0].tobytes()) == pytest.approx(-9.03, abs=0.05)


def test_one_utterance_starts_and_ends() -> None:
    frames = silence(10) + tone(0.3, frames=50) + silence(40)
    events = run(frames)
    assert events == [
        (12, EventType.SPEECH_STARTED, {"onset_frames": 3}),  # 60 ms of speech
        (59 + 25, EventType.SPEECH_STOPPED, {"trailing_frames": 25}),  # 100 ms hangover + 400 ms
    ]
    # The offsets point back at the exact speech boundaries.
    start_at, end_at = events[0][0] - 3 + 1, events[1][0] - 25
    assert (start_at, end_at) == (10, 59)


def test_short_clicks_and_quiet_noise_are_not_speech() -> None:
    frames = silence(5) + tone(0.5, frames=2) + silence(20) + noise(-60, 100) + tone(0.5, frames=1)
    assert run(frames) == []


def test_hangover_bridges_gaps_shorter_than_the_endpoint() -> None:
    # speech, 300 ms pause (< 500 ms endpoint), speech: one utterance
    frames = tone(0.3, frames=20) + silence(15) + tone(0.3, frames=20, start=35) + silence(30)
    kinds = [e[1] for e in run(frames)]
    assert kinds == [EventType.SPEECH_STARTED, EventType.SPEECH_STOPPED]


def test_pause_longer_than_the_endpoint_makes_two_turns() -> None:
    frames = tone(0.3, frames=20) + silence(30) + tone(0.3, frames=20) + silence(30)
    kinds = [e[1] for e in run(frames)]
    assert kinds == [EventType.SPEECH_STARTED, EventType.SPEECH_STOPPED] * 2


def test_silence_threshold_is_configurable() -> None:
    short = VadConfig(threshold_db=-40.0, start_ms=20, hangover_ms=0, silence_ms=200)
    events = run(tone(0.3, frames=10) + silence(20), short)
    assert events == [
        (0, EventType.SPEECH_STARTED, {"onset_frames": 1}),
        (19, EventType.SPEECH_STOPPED, {"trailing_frames": 10}),
    ]


def test_speech_in_noise_is_found_above_the_threshold() -> None:
    frames = noise(-55, 20) + [a + b for a, b in zip(tone(0.2, frames=30), noise(-55, 30), strict=True)]
    frames += noise(-55, 40)
    kinds = [e[1] for e in run(frames)]
    assert kinds == [EventType.SPEECH_STARTED, EventType.SPEECH_STOPPED]


def test_barge_in_only_when_speech_starts_over_the_agent() -> None:
    frames = tone(0.3, frames=10) + silence(40) + tone(0.3, frames=10) + silence(40)
    agent_playing = set(range(30, 60))  # the agent answers the first turn, the user interrupts
    events = run(frames, agent=agent_playing)
    kinds = [e[1] for e in events]
    assert kinds == [
        EventType.SPEECH_STARTED,
        EventType.SPEECH_STOPPED,
        EventType.SPEECH_STARTED,
        EventType.BARGE_IN,
        EventType.SPEECH_STOPPED,
    ]
    assert events[3][0] == 52  # the third frame of the interruption: immediately on detection


def test_continued_speech_while_agent_starts_is_not_a_barge_in() -> None:
    frames = tone(0.3, frames=40) + silence(30)
    events = run(frames, agent=set(range(10, 70)))  # speech began before the agent spoke
    assert [e[1] for e in events] == [EventType.SPEECH_STARTED, EventType.SPEECH_STOPPED]
