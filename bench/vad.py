"""Endpointing per VAD on recorded speech with pauses: false cut-offs and detection delay.

    .venv/bin/python -m bench.vad [--silence-ms 300 500] [--snr-db 20] [--out bench/results]

The speech is recorded offline with espeak-ng (three voices, two speaking rates) and
assembled into turns: each turn is two to three phrases with a thinking pause between
them (150-400 ms, shorter than any endpoint under test), turns are separated by 2 s of
silence, and background noise (white, at ``--snr-db`` below the speech's RMS) runs
under everything. The truth is known from the assembly: where each turn's speech
starts and ends (the phrases trimmed to their voiced samples).

Each detector (:mod:`transceiver.vad`: energy, webrtc, silero) runs through the real
:class:`transceiver.vad.Endpointer`, frame by frame, as the transceiver runs it:

- **false cut-off**: an ``end_of_turn`` inside a turn (during a pause): the agent would
  answer a caller who has not finished;
- **missed**: a turn with no ``speech_started`` at all;
- **end delay**: the turn's last voiced sample -> its ``end_of_turn`` (the configured
  hangover + silence, plus what the detector adds by hearing the decay or noise as voice);
- **start delay**: the turn's first voiced sample -> ``speech_started``;
- **cost**: µs of CPU per 20 ms frame.

Numbers are reported, not judged.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from transceiver.agent.voice import synthesize
from transceiver.agent_protocol import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, EventType
from transceiver.config import VadConfig
from transceiver.vad import Endpointer

NAME = "vad"
DETECTORS = ("energy", "webrtc", "silero")
VOICES = (("en-us", 150), ("en-us+f2", 130), ("en-us+m3", 170))
PHRASES = (
    ("i would like to book a table", "for four people", "tomorrow evening"),
    ("what time does the museum open", "on sundays"),
    ("please send the invoice", "to my office address", "not my home"),
    ("can you tell me", "how far it is to the station"),
    ("my order number is seven three one", "and it has not arrived"),
    ("turn the heating up", "just a little"),
)
PAUSES_MS = (150, 250, 400)
GAP_MS = 2000
VOICED = 0.02  # |sample| above this fraction of full scale counts as voice when trimming


@dataclass
class Turn:
    start: int  # sample index of the first voiced sample
    end: int  # of the last voiced sample


def trimmed(pcm: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(np.abs(pcm) > VOICED * 32767)
    return pcm[idx[0] : idx[-1] + 1] if idx.size else pcm[:0]


def assemble(snr_db: float, seed: int = 7) -> tuple[np.ndarray, list[Turn]]:
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = [np.zeros(SAMPLE_RATE, np.int16)]
    turns: list[Turn] = []
    pos = SAMPLE_RATE
    for i, phrases in enumerate(PHRASES * 2):
        voice, wpm = VOICES[i % len(VOICES)]
        start = pos
        for j, phrase in enumerate(phrases):
            if j:
                pause = np.zeros(SAMPLE_RATE * int(rng.choice(PAUSES_MS)) // 1000, np.int16)
                parts.append(pause)
                pos += pause.size
            speech = trimmed(synthesize(phrase, SAMPLE_RATE, voice=voice, wpm=wpm))
            parts.append(speech)
            pos += speech.size
        turns.append(Turn(start, pos - 1))
        gap = np.zeros(SAMPLE_RATE * GAP_MS // 1000, np.int16)
        parts.append(gap)
        pos += gap.size
    clean = np.concatenate(parts).astype(np.float64)
    clean = np.concatenate([clean, np.zeros(-clean.size % FRAME_SAMPLES)])
    speech_rms = float(np.sqrt(np.mean(np.concatenate([clean[t.start : t.end] for t in turns]) ** 2)))
    noise = rng.normal(0.0, speech_rms * 10 ** (-snr_db / 20), clean.size)
    return np.clip(clean + noise, -32768, 32767).astype(np.int16), turns


def run_one(pcm: np.ndarray, turns: Sequence[Turn], config: VadConfig) -> dict[str, Any]:
    ep = Endpointer(config)
    events: list[tuple[int, EventType]] = []  # (frame index, type)
    frames = pcm.reshape(-1, FRAME_SAMPLES)
    started = time.process_time()
    for i, frame in enumerate(frames):
        for ev in ep.push(frame.tobytes()):
            events.append((i, ev.type))
    cost_us = (time.process_time() - started) / len(frames) * 1e6
    frame_end = lambda i: (i + 1) * FRAME_SAMPLES  # noqa: E731 - the sample after frame i
    false_cuts = missed = 0
    end_delays: list[float] = []
    start_delays: list[float] = []
    for turn in turns:
        inside = [(i, t) for i, t in events if turn.start <= frame_end(i) <= turn.end]
        false_cuts += sum(t is EventType.END_OF_TURN for _, t in inside)
        starts = [
            i for i, t in events if t is EventType.SPEECH_STARTED and turn.start <= frame_end(i) <= turn.end
        ]
        if not starts:
            missed += 1
            continue
        start_delays.append((frame_end(starts[0]) - turn.start) * 1000 / SAMPLE_RATE)
        ends = [i for i, t in events if t is EventType.END_OF_TURN and frame_end(i) > turn.end]
        if ends:
            end_delays.append((frame_end(ends[0]) - turn.end) * 1000 / SAMPLE_RATE)
    return {
        "detector": config.detector,
        "silence_ms": config.silence_ms,
        "endpoint_ms": config.hangover_ms + config.silence_ms,
        "turns": len(turns),
        "false_cutoffs": false_cuts,
        "missed": missed,
        "end_delay_ms_median": round(statistics.median(end_delays), 1) if end_delays else None,
        "end_delay_ms_max": round(max(end_delays), 1) if end_delays else None,
        "start_delay_ms_median": round(statistics.median(start_delays), 1) if start_delays else None,
        "cost_us_per_frame": round(cost_us, 1),
        "turn_events": sum(t is EventType.END_OF_TURN for _, t in events),
    }


COLUMNS = ("SNR dB", "detector", "endpoint ms", "false cut-offs", "missed", "end delay ms (median / max)",
           "start delay ms", "end_of_turn events", "µs/frame")  # fmt: skip


def table(data: dict[str, Any]) -> str:
    rows = [[r["snr_db"], r["detector"], r["endpoint_ms"], f"{r['false_cutoffs']}/{r['turns']}", r["missed"],
             f"{r['end_delay_ms_median']} / {r['end_delay_ms_max']}", r["start_delay_ms_median"],
             r["turn_events"], r["cost_us_per_frame"]] for r in data["results"]]  # fmt: skip
    head = (
        f"{data['turns']} turns ({data['pauses_ms']} ms pauses inside turns), espeak-ng voices "
        f"{', '.join(v for v, _ in VOICES)}, white noise at {data['snr_db']} dB SNR "
        f"(energy threshold -45 dBFS); hangover {data['hangover_ms']} ms\n\n"
    )
    return head + report.markdown_table(COLUMNS, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silence-ms", type=int, nargs="+", default=[300, 500])
    parser.add_argument("--snr-db", type=float, nargs="+", default=[40.0, 20.0])
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    base = VadConfig()
    results = []
    for snr_db in args.snr_db:
        pcm, turns = assemble(snr_db)
        for silence_ms in args.silence_ms:
            for detector in DETECTORS:
                one = run_one(pcm, turns, replace(base, detector=detector, silence_ms=silence_ms))
                results.append({"snr_db": snr_db, **one})
    data = {
        "turns": len(turns),
        "pauses_ms": list(PAUSES_MS),
        "snr_db": args.snr_db,
        "hangover_ms": base.hangover_ms,
        "frame_ms": FRAME_MS,
        "seconds": round(pcm.size / SAMPLE_RATE, 1),
        "results": results,
    }
    report.write(NAME, data, table(data), args.out)
    print(table(data), end="")


if __name__ == "__main__":
    main()
