"""transceiver.agent_protocol: event and frame framing."""

from __future__ import annotations

import json

import pytest

from icegate.errors import WireError
from transceiver.agent_protocol import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    FROM_AGENT,
    TO_AGENT,
    EventType,
    check_frame,
    decode_event,
    event,
)


def test_frame_constants_describe_20ms_of_48khz_mono_s16() -> None:
    assert (FRAME_SAMPLES, FRAME_BYTES) == (960, 1920)


def test_event_round_trip() -> None:
    ev = event(EventType.SPEECH_STOPPED, trailing_frames=25)
    text = ev.encode()
    assert json.loads(text) == {"type": "speech_stopped", "trailing_frames": 25}
    assert decode_event(text) == ev
    assert decode_event(text.encode(), TO_AGENT) == ev


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"x": 1}', "unknown event type None"),
        ('{"type": "dance"}', "unknown event type 'dance'"),
        ('{"type": "x", "pad": "' + "a" * 5000 + '"}', "exceeds"),
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


@pytest.mark.parametrize("size", [0, 1, FRAME_BYTES - 2, FRAME_BYTES + 2, 2 * FRAME_BYTES])
def test_binary_messages_must_be_exactly_one_frame(size: int) -> None:
    with pytest.raises(WireError, match=f"{size} bytes, expected 1920"):
        check_frame(bytes(size))
    assert check_frame(bytes(FRAME_BYTES)) == bytes(FRAME_BYTES)
