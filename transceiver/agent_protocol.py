"""The transceiver <-> voice agent protocol: one WebSocket per session (docs/ARCHITECTURE.md §6).

Binary messages are audio: exactly one frame each, 20 ms of signed 16-bit little-endian
PCM, 48 kHz, mono (960 samples, 1,920 bytes), in both directions. The transceiver sends
every frame the client's microphone produced, continuously; the agent sends frames of its
responses as fast as it likes (the transceiver paces them out to the client in real time).

Text messages are JSON objects with a ``type``:

    transceiver -> agent
      session_started   {session, sample_rate, channels, frame_ms}
      speech_started    {onset_frames}      the user began speaking onset_frames frames ago
      speech_stopped    {trailing_frames}   the user stopped trailing_frames frames ago (endpoint)
      barge_in          {response}          the user spoke over response; its audio was cut
      session_ended     {reason}
    agent -> transceiver
      response_started  {response}          frames that follow belong to this response
      response_done     {response, interrupted}

Offsets are relative to the frame stream ("the frame before this event was the N-th since
speech began"), so neither side needs a shared clock or frame counter. The same turn
events (speech_*, barge_in, response_*) go to the client on the ``events`` data channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from icegate.errors import WireError

SAMPLE_RATE = 48000
CHANNELS = 1
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FRAME_BYTES = FRAME_SAMPLES * 2 * CHANNELS  # 1920
MAX_EVENT_BYTES = 4096


class EventType(StrEnum):
    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"
    BARGE_IN = "barge_in"
    RESPONSE_STARTED = "response_started"
    RESPONSE_DONE = "response_done"


TO_AGENT = frozenset(
    {
        EventType.SESSION_STARTED,
        EventType.SESSION_ENDED,
        EventType.SPEECH_STARTED,
        EventType.SPEECH_STOPPED,
        EventType.BARGE_IN,
    }
)
FROM_AGENT = frozenset({EventType.RESPONSE_STARTED, EventType.RESPONSE_DONE})
# What the client sees on the data channel.
TURN_EVENTS = frozenset(
    {
        EventType.SPEECH_STARTED,
        EventType.SPEECH_STOPPED,
        EventType.BARGE_IN,
        EventType.RESPONSE_STARTED,
        EventType.RESPONSE_DONE,
    }
)


@dataclass(frozen=True)
class Event:
    type: EventType
    fields: dict[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def encode(self) -> str:
        return json.dumps({"type": self.type.value, **self.fields}, separators=(",", ":"))


def event(kind: EventType, **fields: Any) -> Event:
    return Event(kind, fields)


def decode_event(text: str | bytes, allowed: frozenset[EventType] | None = None) -> Event:
    """Parse one text message; raise :class:`WireError` saying what is wrong."""
    if len(text) > MAX_EVENT_BYTES:
        raise WireError(f"event of {len(text)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise WireError(f"event is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise WireError("event is not a JSON object")
    kind = obj.pop("type", None)
    try:
        parsed = EventType(kind)
    except ValueError:
        raise WireError(f"unknown event type {kind!r}") from None
    if allowed is not None and parsed not in allowed:
        raise WireError(f"event {parsed.value} is not expected in this direction")
    return Event(parsed, obj)


def check_frame(data: bytes) -> bytes:
    """A binary message must be exactly one frame."""
    if len(data) != FRAME_BYTES:
        raise WireError(f"audio frame of {len(data)} bytes, expected {FRAME_BYTES}")
    return data
