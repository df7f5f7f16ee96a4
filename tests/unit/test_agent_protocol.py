"""transceiver.agent_protocol v1: event schema, direction, negotiation and frame framing."""

from __future__ import annotations

import json

import pytest

from icegate.errors import WireError
from transceiver.agent_protocol import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    FROM_AGENT,
    FROM_CLIENT,
    TO_AGENT,
    AudioFormat,
    EventType,
    Negotiated,
    accept_event,
    check_frame,
    decode_event,
    event,
    negotiate,
)


def test_frame_constants_describe_20ms_of_48khz_mono_s16() -> None:
    assert (FRAME_SAMPLES, FRAME_BYTES) == (960, 1920)
    assert AudioFormat(16000, 20).frame_bytes == 640 and AudioFormat(24000, 10).frame_samples == 240


def test_event_round_trip() -> None:
    ev = event(EventType.SPEECH_STOPPED, turn=2, trailing_ms=100)
    text = ev.encode()
    assert json.loads(text) == {"type": "speech_stopped", "turn": 2, "trailing_ms": 100}
    assert decode_event(text) == ev
    assert decode_event(text.encode(), TO_AGENT) == ev


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"x": 1}', "unknown event type None"),
        ('{"type": "dance"}', "unknown event type 'dance'"),
        ('{"type": "x", "pad": "' + "a" * 17000 + '"}', "exceeds"),
        ('{"type": "speech_stopped", "turn": 1}', "speech_stopped: missing field 'trailing_ms'"),
        ('{"type": "barge_in", "heard_ms": "a lot"}', r"barge_in.heard_ms: unexpected str"),
        (
            '{"type": "speech_started", "turn": 1, "onset_ms": true}',
            "speech_started.onset_ms: unexpected bool",
        ),
        ('{"type": "data", "payload": "' + "a" * 9000 + '"}', "data.payload exceeds"),
    ],
)
def test_bad_events_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode_event(text)


def test_direction_is_checked() -> None:
    agent_only = event(EventType.RESPONSE_STARTED, response=1).encode()
    with pytest.raises(WireError, match="not expected in this direction"):
        decode_event(agent_only, TO_AGENT)
    assert decode_event(agent_only, FROM_AGENT).get("response") == 1
    both = event(EventType.DATA, payload={"k": 1}).encode()
    assert decode_event(both, TO_AGENT) == decode_event(both, FROM_AGENT)
    with pytest.raises(WireError, match="not expected"):  # a client cannot fake turn events
        decode_event(event(EventType.END_OF_TURN, turn=1).encode(), FROM_CLIENT)


def test_negotiation_accepts_only_what_hello_offers() -> None:
    chosen = Negotiated(AudioFormat(16000, 20), AudioFormat(24000, 10))
    assert negotiate(accept_event(chosen)) == chosen
    fields = json.loads(accept_event(chosen).encode())
    for name, bad, problem in [
        ("version", 2, "accept.version: this transceiver speaks version 1, got 2"),
        ("input_rate", 44100, r"accept.input_rate: expected one of \[8000, 16000, 24000, 48000\], got 44100"),
        ("output_frame_ms", 30, r"accept.output_frame_ms: expected one of \[10, 20, 40\], got 30"),
    ]:
        with pytest.raises(WireError, match=problem):
            negotiate(decode_event(json.dumps(fields | {name: bad}), FROM_AGENT))
    with pytest.raises(WireError, match="accept: missing field 'output_rate'"):
        decode_event(json.dumps({k: v for k, v in fields.items() if k != "output_rate"}), FROM_AGENT)


@pytest.mark.parametrize("size", [0, 1, FRAME_BYTES - 2, FRAME_BYTES + 2, 2 * FRAME_BYTES])
def test_binary_messages_must_be_exactly_one_frame(size: int) -> None:
    with pytest.raises(WireError, match=f"{size} bytes, expected 1920"):
        check_frame(bytes(size))
    assert check_frame(bytes(FRAME_BYTES)) == bytes(FRAME_BYTES)
    assert check_frame(bytes(320), AudioFormat(16000, 10)) == bytes(320)
