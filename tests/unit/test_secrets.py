"""icegate.secrets and the CLIs' secret options (issue 12: secrets never on argv)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from icegate.cli import cli
from icegate.errors import ConfigError
from icegate.secrets import pick_secret, read_secret


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_secret_file_is_read_without_its_newline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_secret(secret_file(tmp_path, "s3cret\n"), "x.token") == "s3cret"
    assert not caplog.records


@pytest.mark.parametrize(
    ("text", "problem"), [("", "is empty"), ("\n", "is empty"), ("x" * 5000, "not a secret")]
)
def test_a_bad_secret_file_names_the_field(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"x\.token: .*{problem}"):
        read_secret(secret_file(tmp_path, text), "x.token")
    with pytest.raises(ConfigError, match=r"x\.token: cannot read"):
        read_secret(tmp_path / "missing", "x.token")


def test_a_file_others_may_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        read_secret(secret_file(tmp_path, "s3cret", 0o644), "x.token")
    assert "readable by other users field=x.token" in caplog.text


def test_command_line_secrets_are_warned_about_and_files_win_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert pick_secret("x.token", "v", None, on_command_line=False, env="ICEGATE_X") == "v"
        assert not caplog.records  # from the environment: fine
        assert pick_secret("x.token", "v", None, on_command_line=True, env="ICEGATE_X") == "v"
    assert "secret on the command line field=x.token" in caplog.text and "ICEGATE_X" in caplog.text
    with pytest.raises(ConfigError, match=r"x\.token: give the value or its file, not both"):
        pick_secret("x.token", "v", secret_file(tmp_path, "w"), on_command_line=True, env="ICEGATE_X")


def test_transceiver_secret_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    base = ["transceiver", "run", "--cluster", "1", "--index", "70000", "--relay", "192.0.2.10"]
    both = runner.invoke(
        cli, [*base, "--auth-token", "t", "--auth-token-file", str(secret_file(tmp_path, "t"))]
    )
    assert both.exit_code == 1
    assert "transceiver.auth_token: give the value or its file, not both" in both.output
    missing = runner.invoke(cli, [*base, "--route-key-file", str(tmp_path / "none")])
    assert "transceiver.route_key: cannot read" in missing.output
    # from the environment, the secret reaches the configuration (which then fails on the index)
    monkeypatch.setenv("ICEGATE_TRANSCEIVER_RUN_ROUTE_KEY", "zz")
    from_env = runner.invoke(cli, base, auto_envvar_prefix="ICEGATE")
    assert "transceiver.index: expected 0..65535" in from_env.output
