"""transceiver.agent.sdk: loading an app, choosing formats, and the CLI that serves it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from icegate.errors import WireError
from transceiver.agent import builtin, sdk
from transceiver.agent_protocol import AudioFormat, EventType, event, hello_audio
from transceiver.cli import agent


def test_load_app_names_what_is_wrong() -> None:
    assert sdk.load_app("transceiver.agent.builtin:EchoAgent") is builtin.EchoAgent
    for spec, problem in [
        ("nocolon", "expected module:Class"),
        ("no.such.module:X", "cannot import no.such.module"),
        ("transceiver.agent.builtin:tone", "tone is not an Agent subclass"),
    ]:
        with pytest.raises(ValueError, match=problem):
            sdk.load_app(spec)


def test_choose_takes_the_agents_formats_or_falls_back_to_48k() -> None:
    class Wants(sdk.Agent):
        input_rate, output_rate, frame_ms = 16000, 24000, 10

    hello = event(EventType.HELLO, version=1, session="s", audio=hello_audio())
    accepted, wanted = sdk.choose(hello, Wants)
    assert (accepted.input, accepted.output) == (AudioFormat(16000, 10), AudioFormat(24000, 10))
    narrow = event(EventType.HELLO, version=1, session="s",
                   audio=hello_audio() | {"input_rates": [48000], "frame_ms": [20]})  # fmt: skip
    accepted, wanted = sdk.choose(narrow, Wants)
    assert (accepted.input, wanted.input) == (AudioFormat(48000, 20), AudioFormat(16000, 10))  # SDK resamples
    with pytest.raises(WireError, match=r"hello\.version: this SDK speaks version 1, got 2"):
        sdk.choose(event(EventType.HELLO, version=2, session="s", audio=hello_audio()), Wants)


def test_agent_run_needs_exactly_one_of_kind_and_app() -> None:
    runner = CliRunner()
    for args in ([], ["--kind", "echo", "--app", "x:Y"]):
        result = runner.invoke(agent, ["run", *args])
        assert result.exit_code == 2 and "exactly one of --kind and --app" in result.output
    result = runner.invoke(agent, ["run", "--app", "transceiver.agent.builtin:tone"])
    assert result.exit_code == 2 and "tone is not an Agent subclass" in result.output
