"""Configuration: bad values fail at start naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import RateLimits, RelayConfig
from icegate.config import load
from icegate.errors import ConfigError

GOOD = """
relay:
  name: edge1
  interfaces: [pub0, priv0]
  vips:
    - address: 192.0.2.10
  tunnel:
    address4: 10.70.0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_good_config_and_overrides(tmp_path: Path) -> None:
    cfg = load(
        RelayConfig, write(tmp_path, GOOD), "relay", {"redis.url": "redis://10.0.0.1:6390/0", "mode": "xdp"}
    )
    assert cfg.vips[0].port == 3478 and cfg.tunnel.port == 6081
    assert cfg.redis.url == "redis://10.0.0.1:6390/0" and cfg.mode == "xdp"
    assert cfg.pin_dir == Path("/sys/fs/bpf/icegate/edge1")
    assert "-DMAX_FLOWS=262144" in cfg.limits.cflags()


@pytest.mark.parametrize(
    "patch, field",
    [
        (("address: 192.0.2.10", "address: 192.0.2.300"), "relay.vips[0].address"),
        (("address: 192.0.2.10", "address: 192.0.2.10\n      port: 0"), "relay.vips[0].port"),
        (("name: edge1", "name: 'bad name'"), "relay.name"),
        (("address4: 10.70.0.1", "address4: '2001:db8::1'"), "relay.tunnel.address4"),
        (("name: edge1", "name: edge1\n  mode: turbo"), "relay.mode"),
        (("name: edge1", "name: edge1\n  limits: {max_flows: 3}"), "relay.limits.max_flows"),
        (("name: edge1", "name: edge1\n  limits: {events_pages: 3}"), "relay.limits.events_pages"),
        (("name: edge1", "name: edge1\n  colour: blue"), "relay.colour"),
        (("name: edge1", "name: edge1\n  redis: {url: 'http://x'}"), "relay.redis.url"),
        (("name: edge1", "name: edge1\n  rate: {source_burst: 0}"), "relay.rate.source_burst"),
        (("[pub0, priv0]", "[a-very-long-interface-name]"), "relay.interfaces[0]"),
        # the program takes the tunnel endpoint for Geneve before asking vips (DATAPATH.md §1 r6)
        (("address: 192.0.2.10", "address: 10.70.0.1\n      port: 6081"), "relay.vips[0]"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, patch: tuple[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(RelayConfig, write(tmp_path, GOOD.replace(*patch, 1)), "relay")
    assert err.value.field == field, str(err.value)


def test_missing_required_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"relay\.tunnel: required"):
        load(RelayConfig, write(tmp_path, "relay:\n  name: x\n  vips: [{address: 192.0.2.1}]\n"), "relay")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(RelayConfig, tmp_path / "missing.yaml", "relay")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(RelayConfig, write(tmp_path, "relay: [unclosed"), "relay")


def test_gcra_parameters() -> None:
    assert RateLimits.gcra(0, 10) == (0, 0)
    interval, tolerance = RateLimits.gcra(1000, 10)
    assert interval == 1_000_000 and tolerance == 9_000_000
    interval2, _ = RateLimits.gcra(1000, 10, cpus=2)
    assert interval2 == 2_000_000
