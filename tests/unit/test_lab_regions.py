"""The two-region lab as data (no kernel): topology, catalog, client-location records, settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from icegate.catalog import Catalog
from icegate.config import build
from icegate.errors import ConfigError
from labkit.lab import Lab, LabConfig
from labkit.lab.config import load_lab_config
from labkit.lab.geofiles import catalog_section, client_networks, write_files
from labkit.lab.topology import plan


def two_regions(tmp_path: Path) -> Lab:
    return Lab(load_lab_config(None, {"name": "geot", "second_region": {}}), run_dir=tmp_path)


def test_one_region_is_unchanged() -> None:
    topo = plan(LabConfig())
    assert topo.ipv6_links == () and topo.extra_bridges == () and len(topo.hosts) == 7


def test_second_region_topology(tmp_path: Path) -> None:
    topo = two_regions(tmp_path).topology
    assert [h.name for h in topo.hosts][7:] == ["dc2", "r2a", "r2b", "c3", "tx3"]
    assert topo.extra_bridges == (("dc2", ("r2a", "r2b", "inet", "tx3")),)
    # IPv6 only on the second region's public side (and the front door's loopback).
    assert {h for h, _ in topo.ipv6_links} == {"inet", "c3", "r2a", "r2b"}
    assert ("relay", "pub0") not in topo.ipv6_links and ("inet", "pub") not in topo.ipv6_links
    vips = {(a.host, a.address) for a in topo.addresses if a.prefixlen in (32, 128)}
    assert {("r2a", "198.51.100.10"), ("r2a", "2001:db8:2a::10"), ("r2b", "2001:db8:2b::10")} <= vips
    assert ("inet", "2001:db8:64::80") in vips
    assert {(n.host, n.ip) for n in topo.neighbours} >= {("r2a", "2001:db8:2a::1"), ("r2b", "10.71.0.11")}
    assert set(topo.expected_interfaces("dc2")) == {"br0", "r2a", "r2b", "inet", "tx3"}


def test_catalog_and_settings_agree(tmp_path: Path) -> None:
    lab = two_regions(tmp_path)
    catalog = build(Catalog, catalog_section(lab), "catalog")
    assert [c.name for c in catalog.clusters] == ["lab-c1", "lab2-c2"]
    assert [r.name for r in catalog.answer_relays("lab2-c2")] == ["r2a", "r2b"]
    assert catalog.region("lab2").redis_url == "redis://10.71.0.100:6379/0"
    tx3 = lab.transceiver("tx3")
    section = tx3.config_section()
    assert section["catalog"].endswith("catalog.yaml") and "relays" not in section
    assert section["relay_sources"] == ["10.71.0.1", "10.71.0.2"] and section["region"] == "lab2"
    assert lab.transceiver("tx1").config_section()["relay_sources"] == ["10.70.0.1"]
    relay = lab.region_relay_section("r2b")
    assert relay["mode"] == "userspace" and relay["redis"]["region"] == "lab2"
    c3 = next(c for c in lab.clients() if c.name == "c3")
    assert (c3.region, c3.address6) == ("lab2", "2001:db8:c3::2")


def test_client_networks_place_each_client_in_its_city(tmp_path: Path) -> None:
    networks = dict(client_networks(two_regions(tmp_path)))
    assert networks["100.64.1.0/24"]["country"]["iso_code"] == "DE"
    assert networks["2001:db8:c3::/64"]["location"] == {"latitude": 1.35, "longitude": 103.82}


def test_written_files_load(tmp_path: Path) -> None:
    from geo.locate import MaxMind
    from icegate.catalog import load_catalog
    from transceiver.config import TransceiverConfig

    lab = two_regions(tmp_path)
    lab.dir.mkdir(parents=True)
    write_files(lab)
    assert len(load_catalog(lab.dir / "catalog.yaml").relays) == 3
    found = MaxMind(lab.dir / "geo.mmdb").lookup(ipaddress.ip_address("2001:db8:c3::2"))
    assert found is not None and found.country == "SG"
    cfg = build(
        TransceiverConfig, lab.transceiver("tx3").config_section(), "transceiver"
    ).with_catalog_relays()
    assert [r.address for r in cfg.relays_by_priority()] == [
        "2001:db8:2a::10", "198.51.100.10", "2001:db8:2b::10", "198.51.101.10"
    ]  # fmt: skip


def test_second_region_must_not_reuse_names() -> None:
    with pytest.raises(ConfigError, match=r"lab\.second_region: host name 'c1' is used twice"):
        client = {"name": "c1", "address": "100.64.9.2", "gateway": "100.64.9.1"}
        client |= {"address6": "2001:db8:9::2", "gateway6": "2001:db8:9::1"}
        load_lab_config(None, {"second_region": {"clients": [client]}})
    with pytest.raises(ConfigError, match=r"lab\.second_region\.region: must differ"):
        load_lab_config(None, {"second_region": {"region": "lab"}})
