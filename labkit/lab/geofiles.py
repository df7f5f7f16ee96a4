"""The two-region lab's geo files: the fleet catalog and a client-location database.

``lab up --regions 2`` writes, in the lab's directory:

``catalog.yaml``
    Section ``catalog`` (:mod:`icegate.catalog`): both regions with their own Redis, one
    cluster each (its signaling URL is the region's first transceiver), the relays with
    their VIPs and priorities, at the regions' real city coordinates; section ``geo``
    (:mod:`geo.config`) for ``icegate geo serve`` on the router, with the database below.
    The lab's transceivers read their relay lists from it.
``geo.mmdb``
    A MaxMind-format database (built with ``mmdb-writer``, never downloaded) placing each
    client network, IPv4 and IPv6, at its region's city: the front door locates lab
    clients the way it locates real ones without a CDN in front.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from icegate.errors import DependencyError
from labkit.lab.config import LabConfig


class _Transceiver(Protocol):
    @property
    def region(self) -> str: ...

    @property
    def signaling_url(self) -> str: ...


class Lab(Protocol):
    """What these functions read of a :class:`labkit.lab.Lab` (no import of it: no cycle)."""

    config: LabConfig

    @property
    def dir(self) -> Path: ...

    @property
    def prefix(self) -> str: ...

    def namespace(self, host: str) -> str: ...

    def transceivers(self) -> Sequence[_Transceiver]: ...

    def front_door_urls(self) -> tuple[str, str]: ...


CATALOG_FILE = "catalog.yaml"
MMDB_FILE = "geo.mmdb"


def cluster_name(region: str, cluster: int) -> str:
    return f"{region}-c{cluster}"


def catalog_section(lab: Lab) -> dict[str, Any]:
    cfg, r2 = lab.config, lab.config.second_region
    assert r2 is not None
    txs = lab.transceivers()
    first_tx = next(t for t in txs if t.region == cfg.region)
    second_tx = next(t for t in txs if t.region == r2.region)
    port = cfg.public.vip_port
    place1, place2 = cfg.place, r2.place
    relays: list[dict[str, Any]] = [
        {
            "name": "relay",
            "region": cfg.region,
            "vip4": vip,
            "port": port,
            "lat": place1.lat,
            "lon": place1.lon,
            "serves": [cluster_name(cfg.region, cfg.cluster)],
            "priority": 100,
        }
        for vip in cfg.public.vips[:1]
    ]
    relays += [
        {
            "name": r.name,
            "region": r2.region,
            "vip4": r.vip4,
            "vip6": r.vip6,
            "port": port,
            "lat": place2.lat,
            "lon": place2.lon,
            "serves": [cluster_name(r2.region, r2.cluster)],
            "priority": r.priority,
        }
        for r in r2.relays
    ]
    return {
        "regions": [
            {"name": cfg.region, "redis_url": cfg.redis_url},
            {"name": r2.region, "redis_url": r2.redis_url},
        ],
        "clusters": [
            {
                "name": cluster_name(cfg.region, cfg.cluster),
                "id": cfg.cluster,
                "region": cfg.region,
                "signaling_url": first_tx.signaling_url,
                "lat": place1.lat,
                "lon": place1.lon,
            },
            {
                "name": cluster_name(r2.region, r2.cluster),
                "id": r2.cluster,
                "region": r2.region,
                "signaling_url": second_tx.signaling_url,
                "lat": place2.lat,
                "lon": place2.lon,
            },
        ],
        "relays": relays,
    }


def geo_section(lab: Lab) -> dict[str, Any]:
    cfg = lab.config
    return {
        "listen_host": "*",  # both front-door addresses (IPv4, IPv6) on the router's loopback
        "listen_port": cfg.front_door_port,
        "mmdb": str(lab.dir / MMDB_FILE),
        "default": {"lat": cfg.place.lat, "lon": cfg.place.lon, "country": cfg.place.country},
        "health_interval_s": 0.25,
    }


def client_networks(lab: Lab) -> list[tuple[str, dict[str, Any]]]:
    """(network, MaxMind-City-shaped record) for every client network of the lab."""
    cfg, r2 = lab.config, lab.config.second_region
    out = []
    for c in cfg.clients:
        net = ipaddress.ip_network(f"{c.address}/{c.prefixlen}", strict=False)
        out.append((str(net), _record(cfg.place.lat, cfg.place.lon, cfg.place.country, cfg.place.city)))
    if r2 is not None:
        for d in r2.clients:
            record = _record(r2.place.lat, r2.place.lon, r2.place.country, r2.place.city)
            out.append((str(ipaddress.ip_network(f"{d.address}/24", strict=False)), record))
            out.append((str(ipaddress.ip_network(f"{d.address6}/64", strict=False)), record))
    return out


def _record(lat: float, lon: float, country: str, city: str) -> dict[str, Any]:
    return {
        "city": {"names": {"en": city}},
        "country": {"iso_code": country},
        "location": {"latitude": lat, "longitude": lon},
    }


def write_mmdb(path: Path, networks: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError as exc:
        raise DependencyError(
            "the two-region lab builds its client-location database with mmdb-writer: "
            "pip install 'icegate[dev]' (scripts/setup --for test)"
        ) from exc
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for network, record in networks:
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))


def write_files(lab: Lab) -> None:
    """Write ``catalog.yaml`` (sections ``catalog`` and ``geo``) and ``geo.mmdb`` into the lab's directory."""
    write_mmdb(lab.dir / MMDB_FILE, client_networks(lab))
    document = {"geo": geo_section(lab), "catalog": catalog_section(lab)}
    (lab.dir / CATALOG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))


def status(lab: Lab) -> dict[str, Any] | None:
    cfg, r2 = lab.config, lab.config.second_region
    if r2 is None:
        return None
    return {
        "catalog": str(lab.dir / CATALOG_FILE),
        "mmdb": str(lab.dir / MMDB_FILE),
        "front_door": list(lab.front_door_urls()),
        "front_door_namespace": lab.namespace("inet"),
        "regions": {
            cfg.region: {"city": cfg.place.city, "redis": cfg.redis_url, "relays": [lab.config.relay_name]},
            r2.region: {
                "city": r2.place.city,
                "redis": r2.redis_url,
                "redis_namespace": lab.namespace("dc2"),
                "relays": [f"{lab.prefix}{r.name}" for r in r2.relays],
            },
        },
    }
