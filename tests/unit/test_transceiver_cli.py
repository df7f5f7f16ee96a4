"""transceiver.cli: flag parsing and configuration errors, through the real `icegate` group."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from icegate.cli import cli
from transceiver.cli import split_hostport


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("10.0.0.1:8080", None, ("10.0.0.1", 8080)),
        ("192.0.2.10", 3478, ("192.0.2.10", 3478)),
        ("[2001:db8::1]:6081", None, ("2001:db8::1", 6081)),
        ("2001:db8::1", 3478, ("2001:db8::1", 3478)),
    ],
)
def test_split_hostport(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_hostport(text, default) == expected


@pytest.mark.parametrize("text", ["10.0.0.1", "host:port"])
def test_split_hostport_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter):
        split_hostport(text)


def test_bad_configuration_names_the_field() -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["transceiver", "run", "--cluster", "1", "--index", "70000", "--relay", "192.0.2.10"]
    )
    assert result.exit_code == 1
    assert "transceiver.index: expected 0..65535, got 70000" in result.output
    result = runner.invoke(cli, ["transceiver", "run", "--cluster", "1", "--index", "1"])
    assert result.exit_code == 1
    assert "transceiver.relays: required field is missing" in result.output
    result = runner.invoke(
        cli, ["transceiver", "run", "--cluster", "1", "--index", "1", "--relay", "192.0.2.10"]
    )
    assert "transceiver.redis_url: either redis_url or route_key is required" in result.output


def test_commands_are_wired() -> None:
    runner = CliRunner()
    for args in (["transceiver", "run", "--help"], ["agent", "run", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
