"""The transceiver <-> voice agent protocol, version 1: the codec (docs/AGENT_PROTOCOL.md).

One WebSocket per session; the transceiver connects to the agent. Text messages are JSON
events (one object with a ``type``), binary messages are audio: exactly one frame each,
signed 16-bit little-endian mono PCM at the rate and frame duration negotiated for that
direction by the handshake (``hello`` -> ``accept``).

This module is the one definition of the wire: event names, the fields each carries
(:data:`SCHEMA`, checked on every decode), who may send it, the rates and frame
durations either side may choose, and :func:`negotiate`, which both the transceiver and
the SDK use to check an ``accept`` against its ``hello``. The transceiver's own audio
path is 48 kHz, 20 ms (:data:`SAMPLE_RATE`, :data:`FRAME_MS`); it resamples to and from
whatever the agent chose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from icegate.errors import WireError

VERSION = 1
# The transceiver's internal audio: what aiortc's Opus decoder produces and its encoder takes.
SAMPLE_RATE = 48000
CHANNELS = 1
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FRAME_BYTES = FRAME_SAMPLES * 2 * CHANNELS  # 1920
# What an agent may choose per direction (hello offers these; accept picks one of each).
RATES = (8000, 16000, 24000, 48000)
FRAME_MS_CHOICES = (10, 20, 40)
MAX_EVENT_BYTES = 16384  # a transcript or a data payload fits; larger is a protocol error
MAX_DATA_BYTES = 8192  # the JSON of a data payload (it also rides the client's data channel)


class EventType(StrEnum):
    # handshake
    HELLO = "hello"  # transceiver -> agent, first message
    ACCEPT = "accept"  # agent -> transceiver, answer to hello
    # the caller's turn (transceiver -> agent, and to the client)
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"
    END_OF_TURN = "end_of_turn"
    BARGE_IN = "barge_in"
    # the agent's response (agent -> transceiver, then to the client at playout)
    RESPONSE_STARTED = "response_started"
    RESPONSE_DONE = "response_done"
    # both ways
    TRANSCRIPT = "transcript"
    DATA = "data"
    HANGUP = "hangup"
    ERROR = "error"


class Direction(StrEnum):
    TO_AGENT = "to_agent"
    FROM_AGENT = "from_agent"
    BOTH = "both"


# type -> (who sends it, {field: accepted JSON types}); fields not listed are allowed and kept.
_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_OBJ = (dict,)
_BOOL = (bool,)
_ID = (int, str)
SCHEMA: dict[EventType, tuple[Direction, dict[str, tuple[type, ...]]]] = {
    EventType.HELLO: (
        Direction.TO_AGENT,
        {"version": _INT, "session": _STR, "metadata": _OBJ, "audio": _OBJ, "endpointing": _OBJ},
    ),
    EventType.ACCEPT: (
        Direction.FROM_AGENT,
        {
            "version": _INT,
            "input_rate": _INT,
            "output_rate": _INT,
            "input_frame_ms": _INT,
            "output_frame_ms": _INT,
        },
    ),
    EventType.SPEECH_STARTED: (Direction.TO_AGENT, {"turn": _INT, "onset_ms": _INT, "resumed": _BOOL}),
    EventType.SPEECH_STOPPED: (Direction.TO_AGENT, {"turn": _INT, "trailing_ms": _INT}),
    EventType.END_OF_TURN: (
        Direction.TO_AGENT,
        {"turn": _INT, "trailing_ms": _INT, "speech_ms": _INT, "decision": _OBJ},
    ),
    EventType.BARGE_IN: (Direction.TO_AGENT, {"turn": _INT, "heard_ms": _INT}),
    EventType.RESPONSE_STARTED: (Direction.FROM_AGENT, {"response": _ID}),
    EventType.RESPONSE_DONE: (Direction.FROM_AGENT, {"response": _ID}),
    EventType.TRANSCRIPT: (Direction.BOTH, {"role": _STR, "text": _STR, "final": _BOOL}),
    EventType.DATA: (Direction.BOTH, {"payload": (dict, list, str, int, float, bool)}),
    EventType.HANGUP: (Direction.BOTH, {"reason": _STR}),
    EventType.ERROR: (Direction.BOTH, {"code": _STR, "message": _STR}),
}
# Optional fields (everything else in SCHEMA is required).
OPTIONAL = {
    (EventType.HELLO, "metadata"),
    (EventType.HELLO, "endpointing"),
    (EventType.SPEECH_STARTED, "resumed"),
    (EventType.BARGE_IN, "turn"),
    (EventType.TRANSCRIPT, "final"),
    (EventType.ERROR, "message"),
}
NUMBER_FIELDS = _NUM  # re-exported for the endpointing decision's values
TO_AGENT = frozenset(t for t, (d, _) in SCHEMA.items() if d in (Direction.TO_AGENT, Direction.BOTH))
FROM_AGENT = frozenset(t for t, (d, _) in SCHEMA.items() if d in (Direction.FROM_AGENT, Direction.BOTH))
# What the client sees on the ``events`` data channel (hello/accept stay between transceiver and agent).
CLIENT_EVENTS = frozenset(SCHEMA) - {EventType.HELLO, EventType.ACCEPT}
# What a client may send on the ``events`` data channel; the transceiver forwards it to the agent.
FROM_CLIENT = frozenset({EventType.DATA, EventType.TRANSCRIPT, EventType.HANGUP})


class ErrorCode(StrEnum):
    """``error.code`` values the transceiver sends (to the agent, and to the client)."""

    PROTOCOL = "protocol"  # a malformed message; the sender is disconnected
    NEGOTIATION = "negotiation"  # accept chose something hello did not offer
    AGENT_UNREACHABLE = "agent_unreachable"  # connect or handshake failed
    AGENT_LOST = "agent_lost"  # the link died mid-call (closed, or heartbeat unanswered)


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
    """Parse and check one text message; raise :class:`WireError` saying what is wrong."""
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
    for name, types in SCHEMA[parsed][1].items():
        if name not in obj:
            if (parsed, name) in OPTIONAL:
                continue
            raise WireError(f"{parsed.value}: missing field {name!r}")
        value = obj[name]
        # bool is an int in Python; a JSON true is not a number here.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise WireError(f"{parsed.value}.{name}: unexpected {type(value).__name__} {value!r}")
    if parsed is EventType.DATA and len(json.dumps(obj["payload"])) > MAX_DATA_BYTES:
        raise WireError(f"data.payload exceeds {MAX_DATA_BYTES} bytes")
    return Event(parsed, obj)


# -- audio format and negotiation ----------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    """One direction's audio: s16le mono at ``rate``, ``frame_ms`` per binary message."""

    rate: int
    frame_ms: int

    @property
    def frame_samples(self) -> int:
        return self.rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * 2


NATIVE = AudioFormat(SAMPLE_RATE, FRAME_MS)


@dataclass(frozen=True)
class Negotiated:
    """What ``accept`` settled: the caller's audio to the agent (input) and the agent's voice (output)."""

    input: AudioFormat
    output: AudioFormat


def hello_audio() -> dict[str, Any]:
    """The ``audio`` object of ``hello``: what the agent may choose from, per direction."""
    return {
        "input_rates": list(RATES),
        "output_rates": list(RATES),
        "frame_ms": list(FRAME_MS_CHOICES),
        "encoding": "s16le",
        "channels": CHANNELS,
    }


def answer_formats(hello: Event, wanted: Negotiated, speaker: str) -> Negotiated:
    """The agent side of the handshake: ``wanted``'s rates and frame duration where ``hello``
    offers them, else 48 kHz / 20 ms; WireError if ``hello`` is not version :data:`VERSION`
    (``speaker`` names who refuses, in the message)."""
    if hello.get("version") != VERSION:
        raise WireError(f"hello.version: this {speaker} speaks version {VERSION}, got {hello.get('version')}")
    audio = hello.get("audio", {})
    wanted_ms = wanted.input.frame_ms
    ms = wanted_ms if wanted_ms in audio.get("frame_ms", FRAME_MS_CHOICES) else 20
    rate_in = wanted.input.rate if wanted.input.rate in audio.get("input_rates", RATES) else 48000
    rate_out = wanted.output.rate if wanted.output.rate in audio.get("output_rates", RATES) else 48000
    return Negotiated(AudioFormat(rate_in, ms), AudioFormat(rate_out, ms))


def negotiate(accept: Event) -> Negotiated:
    """Check an ``accept`` against what ``hello`` offers; raise :class:`WireError` naming the field."""
    if accept.type is not EventType.ACCEPT:
        raise WireError(f"expected accept, got {accept.type.value}")
    if accept.get("version") != VERSION:
        raise WireError(
            f"accept.version: this transceiver speaks version {VERSION}, got {accept.get('version')}"
        )
    for name in ("input_rate", "output_rate"):
        if accept.get(name) not in RATES:
            raise WireError(f"accept.{name}: expected one of {list(RATES)}, got {accept.get(name)}")
    for name in ("input_frame_ms", "output_frame_ms"):
        if accept.get(name) not in FRAME_MS_CHOICES:
            raise WireError(
                f"accept.{name}: expected one of {list(FRAME_MS_CHOICES)}, got {accept.get(name)}"
            )
    return Negotiated(
        AudioFormat(accept.get("input_rate"), accept.get("input_frame_ms")),
        AudioFormat(accept.get("output_rate"), accept.get("output_frame_ms")),
    )


def accept_event(negotiated: Negotiated) -> Event:
    return event(
        EventType.ACCEPT,
        version=VERSION,
        input_rate=negotiated.input.rate,
        output_rate=negotiated.output.rate,
        input_frame_ms=negotiated.input.frame_ms,
        output_frame_ms=negotiated.output.frame_ms,
    )


def check_frame(data: bytes, fmt: AudioFormat = NATIVE) -> bytes:
    """A binary message must be exactly one frame of ``fmt``."""
    if len(data) != fmt.frame_bytes:
        raise WireError(f"audio frame of {len(data)} bytes, expected {fmt.frame_bytes}")
    return data
