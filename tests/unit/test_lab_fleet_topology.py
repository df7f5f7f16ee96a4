"""The lab's fleet topology as data (``lab up --relays N``): what each node gets, and bad configs."""

from __future__ import annotations

import pytest

from icegate.config import build
from icegate.errors import ConfigError
from labkit.lab import Lab, LabConfig
from labkit.lab.topology import Addr, Neighbour, Route, Wire, plan


def test_one_relay_is_the_plain_lab() -> None:
    assert plan(LabConfig()) == plan(LabConfig(relays=1, ecmp="resilient"))
    assert LabConfig().fleet_hosts == ()


def test_each_node_has_its_own_links_addresses_and_neighbours() -> None:
    cfg = LabConfig(name="fl", relays=3)
    topo = plan(cfg)
    assert [h.name for h in topo.hosts if h.role == "relay"] == ["relay", "relay2", "relay3"]
    assert Wire("relay3", "pub0", "inet", "pub3", 1500, b_gro=True) in topo.wires
    assert Wire("relay3", "priv0", "dc", "relay3", 3500, b_gro=True) in topo.wires
    assert "relay3" in topo.bridge_ports
    for addr in (
        Addr("inet", "pub3", "198.18.3.1", 24),
        Addr("relay3", "pub0", "198.18.3.2", 24),
        Addr("relay3", "pub0", "192.0.2.10", 32),  # the VIP on every node (slow path binds it)
        Addr("relay3", "priv0", "10.70.0.3", 24),
    ):
        assert addr in topo.addresses
    assert Route("relay3", "default", "198.18.3.1") in topo.routes
    assert not [r for r in topo.routes if r.host == "inet" and r.dst.startswith("192.0.2.10")]  # ECMP instead
    assert Neighbour("relay3", "pub0", "198.18.3.1", "inet", "pub3") in topo.neighbours
    assert Neighbour("relay3", "priv0", "10.70.0.11", "tx1", "eth0") in topo.neighbours
    assert cfg.relay_node_name(3) == "fl-relay3" and cfg.relay_node_name(1) == "fl-relay"


def test_transceivers_accept_geneve_from_every_node_that_may_join() -> None:
    lab = Lab(LabConfig(name="fl", relays=2))
    sources = lab.transceiver(1).config_section()["relay_sources"]
    assert sources[:3] == ["10.70.0.1", "10.70.0.2", "10.70.0.3"] and len(sources) == 8
    assert Lab(LabConfig(name="fl")).transceiver(1).config_section()["relay_sources"] == ["10.70.0.1"]
    section = lab.relay_section(2)
    assert section["name"] == "fl-relay2" and section["tunnel"]["address4"] == "10.70.0.2"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"relays": 0}, "lab.relays"),
        ({"relays": 9}, "lab.relays"),
        ({"relays": 2, "ecmp": "random"}, "lab.ecmp"),
        ({"relays": 2, "private": {"router_address": "10.70.0.5"}}, "lab.relays"),
    ],
)
def test_bad_fleet_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(LabConfig, data, "lab")
    assert field in str(caught.value)
