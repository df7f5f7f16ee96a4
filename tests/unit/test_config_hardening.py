"""The relay's issue-12 settings fail at start naming the field, and become the config map."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.config import RateLimits, RelayConfig
from controlplane.node.service import rate_config
from icegate.config import build
from icegate.errors import ConfigError

BASE: dict[str, Any] = {
    "name": "r",
    "vips": [{"address": "192.0.2.10"}],
    "tunnel": {"address4": "10.70.0.1"},
    "interfaces": ["pub0", "priv0"],
}


def relay(**extra: Any) -> RelayConfig:
    return build(RelayConfig, {**BASE, **extra}, "relay")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"public_interfaces": ["eth9"], "private_interfaces": ["priv0"]}, "relay.public_interfaces[0]"),
        ({"public_interfaces": ["pub0"]}, "relay.public_interfaces"),
        ({"public_interfaces": ["pub0"] * 5, "private_interfaces": ["priv0"]}, "relay.public_interfaces"),
        ({"backend_prefixes": ["10.70.0.0/33"]}, "relay.backend_prefixes[0]"),
        ({"rate": {"new_flows_per_token": -1}}, "relay.rate.new_flows_per_token"),
        ({"rate": {"token_burst": 0}}, "relay.rate.token_burst"),
        ({"rate": {"pending_max_packets": -1}}, "relay.rate.pending_max_packets"),
    ],
)
def test_bad_hardening_settings_name_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        relay(**extra)
    assert str(exc.value).startswith(field), str(exc.value)


def test_hardening_settings_reach_the_config_map_unscaled_by_cpus() -> None:
    cfg = relay(public_interfaces=["pub0"], private_interfaces=["priv0"], backend_prefixes=["10.70.0.0/16"])
    assert cfg.public_interfaces == ("pub0",) and cfg.private_interfaces == ("priv0",)
    for cpus in (1, 64):
        rate = rate_config(RateLimits(new_flows_per_token=0.5, token_burst=16), cpus)
        assert (rate.tag_interval_ns, rate.tag_tolerance_ns) == (2 * 10**9, 15 * 2 * 10**9)
        assert rate.slow_source_interval_ns == 10**9 // 20  # per source: a hash map, not per CPU
        assert (rate.pending_timeout_ns, rate.pending_max_packets) == (30 * 10**9, 64)
