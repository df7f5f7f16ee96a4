"""Decision tables for geo steering (geo.decide): distance, antimeridian, poles, ties,
weights, capacity, failover, all-unhealthy, RTT matrix, relay choice."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from geo.decide import ClusterHealth, Decision, HealthView, Unavailable, decide
from geo.locate import Location
from icegate.catalog import Catalog, great_circle_km
from icegate.config import build

CITIES = {  # real coordinates
    "fra": (50.11, 8.68),
    "ams": (52.37, 4.90),
    "iad": (39.04, -77.49),
    "syd": (-33.87, 151.21),
    "akl": (-36.85, 174.76),
    "hnl": (21.31, -157.86),
    "anc": (61.22, -149.90),
    "mcm": (-77.85, 166.67),  # McMurdo Station
    "sin": (1.35, 103.82),
}


def catalog(**overrides: Any) -> Catalog:
    clusters = []
    relays = []
    for i, (name, region) in enumerate(
        [("fra", "eu"), ("ams", "eu"), ("iad", "us"), ("syd", "ap"), ("akl", "ap"), ("sin", "ap")], start=1
    ):
        lat, lon = CITIES[name]
        entry: dict[str, Any] = {
            "name": f"{name}1",
            "id": i,
            "region": region,
            "signaling_url": f"http://{name}1.example",
            "lat": lat,
            "lon": lon,
        }
        entry.update(overrides.get(f"{name}1", {}))
        clusters.append(entry)
        relays.append(
            {
                "name": f"{name}-r1",
                "region": region,
                "vip4": f"192.0.2.{i}",
                "lat": lat,
                "lon": lon,
                "serves": [f"{name}1"],
                "priority": 100,
            }
        )
        relays.append(
            {
                "name": f"{name}-r2",
                "region": region,
                "vip4": f"192.0.2.{100 + i}",
                "vip6": f"2001:db8::{i}",
                "lat": lat,
                "lon": lon,
                "serves": [f"{name}1"],
                "priority": 50,
            }
        )
    data = {
        "regions": [{"name": n, "redis_url": f"redis://{n}.example"} for n in ("eu", "us", "ap")],
        "clusters": clusters,
        "relays": relays,
        "rtt_ms": overrides.get("rtt_ms", {}),
    }
    return build(Catalog, data, "catalog")


def healthy(cat: Catalog, **states: ClusterHealth) -> HealthView:
    clusters = {c.name: ClusterHealth(live=1) for c in cat.clusters}
    clusters.update(states)
    return HealthView(clusters)


def at(city: str, country: str | None = None, address: str | None = None) -> Location:
    lat, lon = CITIES[city]
    return Location(lat, lon, "explicit", country, address)


def chosen(result: Decision | Unavailable) -> str:
    assert isinstance(result, Decision), result.to_json()
    return result.cluster.name


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (Location(48.85, 2.35, "explicit"), "ams1"),  # Paris: 430 km to AMS, 478 km to FRA (tie_ms=0)
        (Location(40.71, -74.01, "explicit"), "iad1"),  # New York
        (Location(-37.81, 144.96, "explicit"), "syd1"),  # Melbourne
        (Location(-41.29, 174.78, "explicit"), "akl1"),  # Wellington
        # Antimeridian: Fiji (178.4 E) and Samoa (171.8 W) are nearest to Auckland, not to
        # anything reached by going the long way round through longitude 0.
        (Location(-18.14, 178.44, "explicit"), "akl1"),
        (Location(-13.83, -171.76, "explicit"), "akl1"),
        (Location(21.31, -157.86, "explicit"), "akl1"),  # Honolulu: AKL 7080 km < IAD 7800 km
        # Poles: every longitude is the same point; the South Pole is nearest to AKL/SYD
        # (both ~5,000 km), McMurdo is 3,900 km from AKL.
        (Location(-77.85, 166.67, "explicit"), "akl1"),
        (Location(-90.0, 0.0, "explicit"), "akl1"),
        (Location(-90.0, 123.0, "explicit"), "akl1"),
        (Location(90.0, 0.0, "explicit"), "ams1"),  # North Pole: Amsterdam is the northernmost
        (Location(90.0, -170.0, "explicit"), "ams1"),
    ],
)
def test_nearest_by_great_circle(where: Location, expected: str) -> None:
    cat = catalog()
    result = decide(cat, healthy(cat), where, tie_ms=0)
    assert chosen(result) == expected
    assert isinstance(result, Decision)
    assert result.reason == "nearest" and result.cost_source == "distance"


def test_great_circle_is_symmetric_and_crosses_the_antimeridian() -> None:
    assert great_circle_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, abs=0.5)
    assert great_circle_km(-90, 0, -90, 180) == pytest.approx(0, abs=1e-6)
    assert great_circle_km(*CITIES["fra"], *CITIES["syd"]) == pytest.approx(
        great_circle_km(*CITIES["syd"], *CITIES["fra"])
    )
    assert great_circle_km(*CITIES["fra"], *CITIES["iad"]) == pytest.approx(6530, rel=0.01)


def test_ties_are_stable_per_client_and_shared_between_clients() -> None:
    cat = catalog()
    paris = Location(48.85, 2.35, "explicit")  # FRA and AMS within 5 ms of each other
    picks = Counter(
        chosen(decide(cat, healthy(cat), paris, client_key=f"198.51.100.{i}", tie_ms=5)) for i in range(400)
    )
    assert set(picks) == {"fra1", "ams1"}
    assert 120 < picks["fra1"] < 280
    for i in range(20):  # the same client always gets the same answer
        key = f"203.0.113.{i}"
        assert len({chosen(decide(cat, healthy(cat), paris, client_key=key)) for _ in range(5)}) == 1


def test_weights_split_ties_in_proportion() -> None:
    cat = catalog(fra1={"weight": 3.0}, ams1={"weight": 1.0})
    paris = Location(48.85, 2.35, "explicit")
    picks = Counter(chosen(decide(cat, healthy(cat), paris, client_key=f"c{i}")) for i in range(2000))
    assert 0.70 < picks["fra1"] / 2000 < 0.80


def test_weight_zero_takes_no_clients_and_is_said_why() -> None:
    cat = catalog(ams1={"weight": 0.0})
    result = decide(cat, healthy(cat), Location(52.37, 4.90, "explicit"))
    assert chosen(result) == "fra1"
    assert isinstance(result, Decision) and result.reason == "failover"
    assert {"cluster": "ams1", "region": "eu", "why": "weight_zero"} in result.skipped


def test_ties_never_pull_a_client_to_a_far_cluster() -> None:
    cat = catalog(iad1={"weight": 1000.0})
    picks = {chosen(decide(cat, healthy(cat), at("fra"), client_key=f"k{i}")) for i in range(200)}
    assert "iad1" not in picks


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (ClusterHealth(live=0), "no_live_transceiver"),
        (ClusterHealth(live=0, draining=2), "draining"),
        (ClusterHealth(live=2, sessions=100), "full"),
        (ClusterHealth(live=2, sessions=250), "full"),
    ],
)
def test_failover_when_nearest_cannot_take_the_client(state: ClusterHealth, why: str) -> None:
    cat = catalog(fra1={"capacity": 100})
    result = decide(cat, healthy(cat, fra1=state), at("fra"))
    assert chosen(result) == "ams1"
    assert isinstance(result, Decision) and result.reason == "failover"
    assert result.skipped[0] == {"cluster": "fra1", "region": "eu", "why": why}


def test_capacity_below_limit_still_takes_clients() -> None:
    cat = catalog(fra1={"capacity": 100})
    assert (
        chosen(decide(cat, healthy(cat, fra1=ClusterHealth(live=1, sessions=99)), at("fra"), tie_ms=0))
        == "fra1"
    )


def test_failover_across_regions_when_a_region_is_down() -> None:
    cat = catalog()
    view = HealthView(
        {c.name: ClusterHealth(live=1) for c in cat.clusters}, unreachable_regions=frozenset({"eu"})
    )
    result = decide(cat, view, at("fra"))
    assert chosen(result) == "iad1"
    assert isinstance(result, Decision) and result.region == "us" and result.reason == "failover"
    assert [s["why"] for s in result.skipped[:2]] == ["region_unreachable", "region_unreachable"]


def test_all_unhealthy_is_unavailable_with_retry_after() -> None:
    cat = catalog()
    result = decide(cat, HealthView({}), at("fra"), retry_after_s=7)
    assert isinstance(result, Unavailable)
    assert result.retry_after_s == 7
    assert len(result.skipped) == len(cat.clusters)
    assert result.to_json()["reason"] == "unavailable"


def test_rtt_matrix_overrides_distance() -> None:
    cat = catalog(rtt_ms={"SG": {"syd1": 20.0, "sin1": 60.0}})
    # By distance a client in Singapore is at sin1; the measured matrix says syd1.
    assert chosen(decide(cat, healthy(cat), at("sin"), tie_ms=0)) == "sin1"
    result = decide(cat, healthy(cat), at("sin", country="SG"), tie_ms=0)
    assert chosen(result) == "syd1"
    assert isinstance(result, Decision) and result.cost_source == "rtt" and result.cost_ms == 20.0
    # Clusters missing from the row keep their distance estimate (here: AKL, ~84 ms away).
    assert (
        chosen(decide(cat, healthy(cat, syd1=ClusterHealth(), sin1=ClusterHealth()), at("sin", "SG")))
        == "akl1"
    )


def test_relays_primary_and_backup_by_priority_without_probe_failures() -> None:
    cat = catalog()
    result = decide(cat, healthy(cat), at("fra"), tie_ms=0)
    assert isinstance(result, Decision)
    assert [(c.relay.name, c.role) for c in result.relays] == [("fra-r1", "primary"), ("fra-r2", "backup")]
    assert "primary=fra-r1; backup=fra-r2" in result.header()
    view = HealthView(healthy(cat).clusters, broken_relays=frozenset({"fra-r1"}))
    result = decide(cat, view, at("fra"), tie_ms=0)
    assert isinstance(result, Decision)
    assert [(c.relay.name, c.role) for c in result.relays] == [("fra-r2", "primary")]
    view = HealthView(healthy(cat).clusters, broken_relays=frozenset({"fra-r1", "fra-r2"}))
    result = decide(cat, view, at("fra"), tie_ms=0)
    assert chosen(result) == "ams1"
    assert isinstance(result, Decision) and result.skipped[0]["why"] == "relays_failed_probe"


def test_decision_json_names_everything() -> None:
    cat = catalog()
    result = decide(cat, healthy(cat), Location(50.0, 8.0, "default"), tie_ms=0)
    assert isinstance(result, Decision)
    data = result.to_json()
    assert data["region"] == "eu" and data["cluster"] == "fra1" and data["cluster_id"] == 1
    assert data["location"]["source"] == "default"
    assert data["relays"][1]["vip6"] == "2001:db8::1"
    assert "source=default" in result.header()
