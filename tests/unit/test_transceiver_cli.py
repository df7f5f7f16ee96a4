"""transceiver.cli: flag parsing and configuration errors, through the real `icegate` group."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from icegate.cli import cli
from labkit.support import REPO, Processes, free_port, http_get, wait_for
from transceiver.cli import split_hostport

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]


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
    assert "transceiver.relays: at least one relay VIP is required (or a catalog)" in result.output
    result = runner.invoke(
        cli, ["transceiver", "run", "--cluster", "1", "--index", "1", "--relay", "192.0.2.10"]
    )
    assert "transceiver.redis_url: either redis_url or route_key is required" in result.output


def test_commands_are_wired() -> None:
    runner = CliRunner()
    for args in (["transceiver", "run", "--help"], ["agent", "run", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output


def test_transceiver_and_agent_log_json_lines(procs: Processes, tmp_path: Path) -> None:
    """``--log-json``: one JSON object per line, messages ``event key=value``; aioice's
    per-check lines stay out at INFO. SIGTERM ends both with status 0. The route key comes
    from a file (issue 12: never on the command line), so no secret warning is logged."""
    key_file = tmp_path / "route-key"
    key_file.write_text("00" * 16 + "\n")
    key_file.chmod(0o600)
    signaling, agent_port, tunnel = free_port(), free_port(), free_port(kind=socket.SOCK_DGRAM)
    agent = procs.start(
        [*ICEGATE, "agent", "run", "--kind", "echo", "--listen", f"127.0.0.1:{agent_port}", "--log-json"],
        cwd=REPO,
        text=True,
    )
    argv = [*ICEGATE, "transceiver", "run", "--cluster", "1", "--index", "2", "--relay", "192.0.2.10",
            "--route-key-file", str(key_file), "--listen", f"127.0.0.1:{signaling}",
            "--tunnel", f"127.0.0.1:{tunnel}", "--agent-url", f"ws://127.0.0.1:{agent_port}/",
            "--log-json"]  # fmt: skip
    tx = procs.start(argv, cwd=REPO, text=True)
    wait_for(lambda: http_get(f"http://127.0.0.1:{signaling}/readyz")[0] == 200, 15, what="transceiver ready")
    # The agent serves once its SIGTERM handler is set: a signal before that would kill it (-15).
    wait_for(lambda: http_get(f"http://127.0.0.1:{agent_port}/metrics")[0] == 200, 15, what="agent serving")
    for proc in (tx, agent):
        proc.send_signal(signal.SIGTERM)
    outputs = {}
    for name, proc in (("transceiver", tx), ("agent", agent)):
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line is JSON
        assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in lines)
        outputs[name] = [entry["msg"] for entry in lines]
    running = [m for m in outputs["transceiver"] if m.startswith("transceiver running ")]
    assert len(running) == 1 and "cluster=1 index=2 " in running[0] and "relays=192.0.2.10:3478" in running[0]
    assert any(m.startswith("draining sessions=0 ") for m in outputs["transceiver"])
    assert not any("secret" in m for m in outputs["transceiver"])
    assert outputs["agent"][0] == f"agent listening kind=echo url=ws://127.0.0.1:{agent_port}/"
