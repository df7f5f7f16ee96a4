"""``icegate relay run``: configuration errors name the field, before anything starts."""

from __future__ import annotations

import logging
from pathlib import Path

from click.testing import CliRunner

from controlplane import cli
from controlplane.daemon import JsonFormatter, KeyValueFormatter, build_config

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


def test_log_formats() -> None:
    record = logging.LogRecord(
        "controlplane.sync", logging.INFO, __file__, 1, "backend cluster=%d", (1,), None
    )
    line = KeyValueFormatter().format(record)
    assert " level=info logger=controlplane.sync backend cluster=1" in line and line.startswith("time=")
    assert '"msg": "backend cluster=1"' in JsonFormatter().format(record)
