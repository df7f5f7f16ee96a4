"""The fleet catalog (icegate.catalog): the world catalog in docs/ loads; every error names the entry."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from icegate.catalog import Catalog, load_catalog
from icegate.config import build
from icegate.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "docs" / "geo-catalog.yaml"

BASE: dict[str, Any] = {
    "regions": [
        {"name": "eu", "redis_url": "redis://eu:6379/0"},
        {"name": "us", "redis_url": "redis://us/0"},
    ],
    "clusters": [
        {"name": "fra1", "id": 1, "region": "eu", "signaling_url": "http://f", "lat": 50.1, "lon": 8.7},
        {"name": "iad1", "id": 1, "region": "us", "signaling_url": "http://i", "lat": 39.0, "lon": -77.5},
    ],
    "relays": [
        {"name": "fra-r1", "region": "eu", "vip4": "192.0.2.1", "lat": 50.1, "lon": 8.7, "serves": ["fra1"]},
        {
            "name": "fra-r2",
            "region": "eu",
            "vip6": "2001:db8::2",
            "lat": 52.4,
            "lon": 4.9,
            "serves": ["fra1"],
        },
        {
            "name": "iad-r1",
            "region": "us",
            "vip4": "192.0.2.3",
            "lat": 39.0,
            "lon": -77.5,
            "serves": ["iad1"],
        },
    ],
}


def test_world_catalog_loads() -> None:
    cat = load_catalog(WORLD)
    assert {r.name for r in cat.regions} == {"eu", "us", "ap"}
    assert len(cat.clusters) == 6
    syd = [r.name for r in cat.answer_relays("syd1")]
    assert syd == ["syd-r1", "sin-r1"]  # equal priority: the nearer relay first


def test_region_redis_may_be_tls_or_sentinel() -> None:
    for url in ("rediss://h:6380/0?ssl_ca_certs=/ca.pem", "redis+sentinel://s1:26379,s2/icg/1"):
        raw = copy.deepcopy(BASE)
        raw["regions"][0]["redis_url"] = url
        assert build(Catalog, raw, "catalog").regions[0].redis_url == url


def test_relays_ordered_by_priority_then_nearness() -> None:
    data = copy.deepcopy(BASE)
    cat = build(Catalog, data, "catalog")
    assert [r.name for r in cat.relays_of("fra1")] == ["fra-r1", "fra-r2"]
    data["relays"][1]["priority"] = 10
    cat = build(Catalog, data, "catalog")
    assert [r.name for r in cat.relays_of("fra1")] == ["fra-r2", "fra-r1"]
    assert cat.cluster_by_id("us", 1).name == "iad1"


def _broken(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    node: Any = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[int(leaf) if leaf.isdigit() else leaf]
    else:
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("clusters.1.region", "ap", r"catalog\.clusters\[1\] \(iad1\)\.region: unknown region 'ap'"),
        ("clusters.1.id", 70000, r"catalog\.clusters\[1\]\.id: expected 0\.\.\d+, got 70000"),
        ("clusters.0.lat", 91.0, r"catalog\.clusters\[0\]\.lat: expected -90\.\.90"),
        ("clusters.0.lon", -181, r"catalog\.clusters\[0\]\.lon: expected -180\.\.180"),
        ("clusters.0.signaling_url", "ftp://x", r"catalog\.clusters\[0\]\.signaling_url"),
        ("clusters.0.capacity", -1, r"catalog\.clusters\[0\]\.capacity"),
        ("clusters.0.weight", -1.0, r"catalog\.clusters\[0\]\.weight"),
        ("clusters.1.name", "fra1", r"catalog\.clusters\[1\]\.name: 'fra1' is used twice"),
        ("clusters.0.name", "Fra 1", r"catalog\.clusters\[0\]\.name: must match"),
        (
            "relays.0.serves",
            ["nope"],
            r"catalog\.relays\[0\] \(fra-r1\)\.serves\[0\]: unknown cluster 'nope'",
        ),
        (
            "relays.0.serves",
            ["iad1"],
            r"catalog\.relays\[0\] \(fra-r1\)\.serves\[0\]: .*never crosses regions",
        ),
        ("relays.0.serves", [], r"catalog\.relays\[0\]\.serves: a relay must serve"),
        ("relays.0.vip4", "2001:db8::9", r"catalog\.relays\[0\]\.vip4: expected an IPv4 address"),
        ("relays.0.vip4", "300.1.1.1", r"catalog\.relays\[0\]\.vip4: expected an IP address"),
        ("relays.1.vip6", KeyError, r"catalog\.relays\[1\]\.vip4: a VIP is required"),
        ("relays.2.vip4", "192.0.2.1", r"catalog\.relays\[2\] \(iad-r1\)\.vip: 192\.0\.2\.1:3478 is already"),
        ("relays.2.region", "eu", r"catalog\.relays\[2\] \(iad-r1\)\.serves\[0\]: .*never crosses"),
        ("relays.0.port", 70000, r"catalog\.relays\[0\]\.port: expected an integer 1-65535"),
        ("regions.1.redis_url", "http://x", r"catalog\.regions\[1\]\.redis_url"),
        (
            "regions.0.redis_url",
            "redis://h/0?ssl_ca_certs=/ca",
            r"catalog\.regions\[0\]\.redis_url: .*rediss://",
        ),
        (
            "regions.0.redis_url",
            "redis+sentinel://h:1",
            r"catalog\.regions\[0\]\.redis_url: .*names the service",
        ),
        ("rtt_ms", {"Germany": {"fra1": 5}}, r"catalog\.rtt_ms\.Germany: expected an ISO 3166"),
        ("rtt_ms", {"DE": {"nope": 5}}, r"catalog\.rtt_ms\.DE\.nope: unknown cluster"),
        ("relays", [], r"catalog\.clusters \(fra1\): no relay serves this cluster"),
        ("regions", [], r"catalog\.regions: at least one region"),
        ("relays.0.colour", "red", r"catalog\.relays\[0\]\.colour: unknown field"),
    ],
)
def test_errors_name_the_entry(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(Catalog, _broken(path, value), "catalog")


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^catalog: no catalog file at"):
        load_catalog(tmp_path / "nope.yaml")


def test_catalog_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"catalog": BASE}))
    assert load_catalog(path).cluster("iad1").region == "us"
