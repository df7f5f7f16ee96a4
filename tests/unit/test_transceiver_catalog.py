"""Transceivers take their relay list from the fleet catalog (transceiver.config.catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icegate.config import build
from icegate.errors import ConfigError
from transceiver.config import TransceiverConfig

WORLD = Path(__file__).resolve().parents[2] / "docs" / "geo-catalog.yaml"
KEY = "00" * 16


def test_relays_come_from_the_catalog() -> None:
    cfg = build(
        TransceiverConfig,
        {"cluster": 2, "index": 1, "region": "ap", "catalog": str(WORLD), "route_key": KEY},
        "transceiver",
    )
    assert cfg.relays == ()
    resolved = cfg.with_catalog_relays()
    # syd1: syd-r1 (the nearer at equal priority) then sin-r1, each with its v6 then its v4 VIP.
    assert [(r.address, r.priority) for r in resolved.relays_by_priority()] == [
        ("2001:db8:c0::20", 2),
        ("203.0.113.20", 2),
        ("2001:db8:c0::10", 1),
        ("203.0.113.10", 1),
    ]
    assert cfg.with_catalog_relays() == resolved


def test_no_such_cluster_in_the_catalog_fails_at_start() -> None:
    with pytest.raises(ConfigError, match=r"^transceiver\.catalog: .* has no cluster 7 in region 'ap'"):
        build(
            TransceiverConfig,
            {"cluster": 7, "index": 1, "region": "ap", "catalog": str(WORLD), "route_key": KEY},
            "transceiver",
        )


def test_bad_catalog_fails_at_start_naming_the_entry(tmp_path: Path) -> None:
    data = yaml.safe_load(WORLD.read_text())
    data["catalog"]["relays"][0]["serves"] = ["nowhere"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"catalog\.relays\[0\] \(fra-r1\)\.serves\[0\]: unknown cluster"):
        build(
            TransceiverConfig,
            {"cluster": 1, "index": 1, "region": "eu", "catalog": str(path), "route_key": KEY},
            "transceiver",
        )


def test_without_catalog_or_relays_the_error_says_both() -> None:
    with pytest.raises(ConfigError, match=r"transceiver\.relays: .*\(or a catalog\)"):
        build(TransceiverConfig, {"cluster": 1, "index": 1, "route_key": KEY}, "transceiver")
