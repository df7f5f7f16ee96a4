"""``icegate relay run``: configuration errors name the field, before anything starts."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from controlplane.node.daemon import build_config
from controlplane.operator import cli
from icegate.logs import JsonFormatter, KeyValueFormatter
from labkit.support import REPO

GOOD = """
relay:
  name: edge1
  vips: [{address: 192.0.2.10}]
  tunnel: {address4: 10.70.0.1}
"""


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(GOOD)
    cfg = build_config(
        path,
        {
            "vips": [{"address": "192.0.2.20", "port": 3479}],
            "redis.region": "eu",
            "interfaces": [],
            "mode": None,
        },
    )
    assert [(v.address, v.port) for v in cfg.vips] == [("192.0.2.20", 3479)]
    assert cfg.redis.region == "eu" and cfg.name == "edge1" and cfg.mode == "auto"


def test_bad_config_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(GOOD.replace("address4: 10.70.0.1", "address4: 10.70.0.300"))
    result = CliRunner().invoke(cli.relay, ["run", "--config", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("icegate: relay.tunnel.address4: expected an IP address")
    path.write_text(GOOD)
    result = CliRunner().invoke(cli.relay, ["run", "--config", str(path), "--vip", "192.0.2.10:99999"])
    assert result.exit_code == 1 and "relay.vips[0].port: expected an integer 1-65535" in result.output
    result = CliRunner().invoke(cli.relay, ["run", "--config", str(path), "--mode", "xdp"])
    assert (
        result.exit_code == 1 and "relay.interfaces: mode xdp needs at least one interface" in result.output
    )
    for mode in ("auto", "xdp"):  # a misspelt interface is an error, not a reason to fall back to the twin
        argv = ["run", "--config", str(path), "--mode", mode, "--interface", "nosuchif0"]
        result = CliRunner().invoke(cli.relay, argv)
        assert result.exit_code == 1, result.output
        assert "relay.interfaces: no interface 'nosuchif0' in this network namespace" in result.output


def test_without_bcc_xdp_says_how_to_get_it(tmp_path: Path) -> None:
    """bcc is a system package, imported only to load the program: without it, ``--mode
    xdp`` stops with the way to install it (``auto`` runs the twin: test_cp_relay_run)."""
    path = tmp_path / "relay.yaml"
    path.write_text(GOOD)
    no_bcc = "import sys; sys.modules['bcc'] = None; from icegate.cli import main; main()"
    argv = [
        sys.executable,
        "-c",
        no_bcc,
        "relay",
        "run",
        "--config",
        str(path),
        "--mode",
        "xdp",
        "--interface",
        "lo",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "icegate: bcc is not importable: apt-get install python3-bpfcc" in proc.stderr
    assert 'the PyPI package named "bcc" is unrelated' in proc.stderr


def test_log_formats() -> None:
    record = logging.LogRecord(
        "controlplane.sync", logging.INFO, __file__, 1, "backend cluster=%d", (1,), None
    )
    line = KeyValueFormatter().format(record)
    assert " level=info logger=controlplane.sync backend cluster=1" in line and line.startswith("time=")
    assert '"msg": "backend cluster=1"' in JsonFormatter().format(record)
