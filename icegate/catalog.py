"""The fleet catalog: regions, transceiver clusters and relays, from YAML, validated.

One file (section ``catalog``) describes the whole fleet; the geo front door reads it to
steer clients, and transceivers read it to learn which relay VIPs to put in their SDP
answers (``transceiver.catalog``), so both always name the same relays::

    catalog:
      regions:
        - {name: eu, redis_url: "redis://10.70.0.100:6379/0"}
      clusters:
        - {name: fra1, id: 1, region: eu, signaling_url: "http://10.70.0.11:8080",
           lat: 50.11, lon: 8.68, weight: 1.0, capacity: 200}
      relays:
        - {name: fra-r1, region: eu, vip4: 192.0.2.10, vip6: "2001:db8:1::10",
           lat: 50.11, lon: 8.68, serves: [fra1], priority: 100}
      rtt_ms:              # optional: measured RTT from a client country to a cluster
        DE: {fra1: 9, iad1: 92}

Every region has its own Redis: a cluster and the relays that serve it are in one region
(nothing in the media path crosses regions). Errors name the entry, e.g.
``catalog.relays[2] (syd-r1).serves[0]: unknown cluster 'syd9'``. The cluster ``id`` is
the cluster id inside route tokens (:mod:`icegate.token`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from icegate import redisurl
from icegate.config import Address, Port, load
from icegate.errors import ConfigError
from icegate.geneve import GENEVE_PORT
from icegate.token import MAX_CLUSTER

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
VIP_PORT = 3478
RELAYS_PER_ANSWER = 2  # DESIGN §7: the answer lists a primary and a backup candidate


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), correct across the antimeridian and at the poles."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _coordinates(path: str, lat: float, lon: float) -> None:
    if not -90.0 <= lat <= 90.0:
        raise ConfigError(f"{path}.lat", f"expected -90..90, got {lat}")
    if not -180.0 <= lon <= 180.0:
        raise ConfigError(f"{path}.lon", f"expected -180..180, got {lon}")


def _name(path: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"{path}.name", f"must match {NAME_RE.pattern}, got {name!r}")


@dataclass(frozen=True)
class Region:
    """A region: its own Redis (registrations, route keys, flow cache)."""

    name: str  # lowercase letters, digits, '-'; the Redis key prefix of the region
    redis_url: str  # the region's Redis: registrations, route keys, flow cache

    def validate(self, path: str) -> None:
        _name(path, self.name)
        if problem := redisurl.check(self.redis_url):
            raise ConfigError(f"{path}.redis_url", problem)


@dataclass(frozen=True)
class Cluster:
    """A transceiver cluster: one signaling URL (a load balancer, or one transceiver in the lab)."""

    name: str  # unique in the catalog
    id: int  # the cluster id in route tokens, unique in its region
    region: str  # a region's name
    signaling_url: str  # where the front door redirects: <signaling_url>/v1/sessions
    lat: float  # where the cluster is (degrees)
    lon: float
    weight: float = 1.0  # share of clients among equally near clusters; 0 takes none
    capacity: int = 1000  # live sessions (sum over the cluster's registrations) it accepts

    def validate(self, path: str) -> None:
        _name(path, self.name)
        if not 0 <= self.id <= MAX_CLUSTER:
            raise ConfigError(f"{path}.id", f"expected 0..{MAX_CLUSTER}, got {self.id}")
        if not self.signaling_url.startswith(("http://", "https://")):
            raise ConfigError(f"{path}.signaling_url", f"expected http(s)://, got {self.signaling_url!r}")
        _coordinates(path, self.lat, self.lon)
        if not 0.0 <= self.weight <= 1000.0:
            raise ConfigError(f"{path}.weight", f"expected 0..1000, got {self.weight}")
        if self.capacity < 0:
            raise ConfigError(f"{path}.capacity", f"expected >= 0, got {self.capacity}")


@dataclass(frozen=True)
class Relay:
    """A relay (a PoP's VIP, shared by its nodes behind ECMP) and the clusters it serves."""

    name: str  # unique in the catalog
    region: str  # a region's name: it serves only clusters of that region
    lat: float  # where the PoP is (degrees)
    lon: float
    serves: tuple[str, ...]  # cluster names
    vip4: Address | None = None  # its IPv4 VIP
    vip6: Address | None = None  # its IPv6 VIP (at least one of the two)
    port: Port = VIP_PORT  # the VIPs' UDP port
    tunnel_port: Port = GENEVE_PORT  # its Geneve port (transceivers return packets there)
    priority: int = 0  # higher first: the primary candidate of the clusters it serves

    def validate(self, path: str) -> None:
        _name(path, self.name)
        _coordinates(path, self.lat, self.lon)
        if self.vip4 is None and self.vip6 is None:
            raise ConfigError(f"{path}.vip4", "a VIP is required (vip4, vip6 or both)")
        if self.vip4 is not None and ":" in self.vip4:
            raise ConfigError(f"{path}.vip4", f"expected an IPv4 address, got {self.vip4}")
        if self.vip6 is not None and ":" not in self.vip6:
            raise ConfigError(f"{path}.vip6", f"expected an IPv6 address, got {self.vip6}")
        if not self.serves:
            raise ConfigError(f"{path}.serves", "a relay must serve at least one cluster")
        if not 0 <= self.priority <= 65535:
            raise ConfigError(f"{path}.priority", f"expected 0..65535, got {self.priority}")

    @property
    def vips(self) -> tuple[str, ...]:
        return tuple(v for v in (self.vip4, self.vip6) if v is not None)


@dataclass(frozen=True)
class Catalog:
    regions: tuple[Region, ...]  # each with its own Redis
    clusters: tuple[Cluster, ...]  # transceiver clusters
    relays: tuple[Relay, ...]  # relay PoPs and the clusters they serve
    rtt_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # country -> cluster -> measured RTT

    def validate(self, path: str) -> None:
        if not self.regions:
            raise ConfigError(f"{path}.regions", "at least one region is required")
        if not self.clusters:
            raise ConfigError(f"{path}.clusters", "at least one cluster is required")
        regions = _unique(f"{path}.regions", [r.name for r in self.regions])
        clusters = _unique(f"{path}.clusters", [c.name for c in self.clusters])
        _unique(f"{path}.relays", [r.name for r in self.relays])
        ids: dict[tuple[str, int], str] = {}
        for i, c in enumerate(self.clusters):
            where = f"{path}.clusters[{i}] ({c.name})"
            if c.region not in regions:
                raise ConfigError(f"{where}.region", f"unknown region {c.region!r}")
            if (c.region, c.id) in ids:
                raise ConfigError(f"{where}.id", f"id {c.id} is already used by {ids[c.region, c.id]}")
            ids[c.region, c.id] = c.name
        by_name = {c.name: c for c in self.clusters}
        vips: dict[tuple[str, int], str] = {}
        for i, r in enumerate(self.relays):
            where = f"{path}.relays[{i}] ({r.name})"
            if r.region not in regions:
                raise ConfigError(f"{where}.region", f"unknown region {r.region!r}")
            for j, served in enumerate(r.serves):
                if served not in clusters:
                    raise ConfigError(f"{where}.serves[{j}]", f"unknown cluster {served!r}")
                if by_name[served].region != r.region:
                    raise ConfigError(
                        f"{where}.serves[{j}]",
                        f"cluster {served!r} is in region {by_name[served].region!r}, the relay in "
                        f"{r.region!r}: the media path never crosses regions",
                    )
            for vip in r.vips:
                if (vip, r.port) in vips:
                    raise ConfigError(f"{where}.vip", f"{vip}:{r.port} is already {vips[vip, r.port]}'s")
                vips[vip, r.port] = r.name
        for country, row in self.rtt_ms.items():
            if not COUNTRY_RE.match(country):
                raise ConfigError(f"{path}.rtt_ms.{country}", "expected an ISO 3166 alpha-2 code (DE)")
            for name, rtt in row.items():
                if name not in clusters:
                    raise ConfigError(f"{path}.rtt_ms.{country}.{name}", f"unknown cluster {name!r}")
                if not 0.0 <= rtt <= 10_000.0:
                    raise ConfigError(f"{path}.rtt_ms.{country}.{name}", f"expected 0..10000 ms, got {rtt}")
        for c in self.clusters:
            if not self.relays_of(c.name):
                raise ConfigError(f"{path}.clusters ({c.name})", "no relay serves this cluster")

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def cluster_by_id(self, region: str, cluster_id: int) -> Cluster:
        for c in self.clusters:
            if (c.region, c.id) == (region, cluster_id):
                return c
        raise KeyError((region, cluster_id))

    def relays_of(self, cluster: str) -> tuple[Relay, ...]:
        """The relays serving ``cluster``, best first: priority, then nearness to it, then name."""
        return self._relay_order.get(cluster, ())

    @cached_property
    def _relay_order(self) -> dict[str, tuple[Relay, ...]]:
        """relays_of() for every cluster, computed once (the front door asks on every decision)."""
        order = {}
        for c in self.clusters:

            def rank(r: Relay, c: Cluster = c) -> tuple[int, float, str]:
                return (-r.priority, great_circle_km(c.lat, c.lon, r.lat, r.lon), r.name)

            order[c.name] = tuple(sorted((r for r in self.relays if c.name in r.serves), key=rank))
        return order

    def answer_relays(self, cluster: str) -> tuple[Relay, ...]:
        """What a transceiver of ``cluster`` puts in its answers: the two best relays."""
        return self.relays_of(cluster)[:RELAYS_PER_ANSWER]


def _unique(path: str, names: list[str]) -> set[str]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{path}[{i}].name", f"{name!r} is used twice")
        seen.add(name)
    return seen


def load_catalog(path: Path | str) -> Catalog:
    """Section ``catalog`` of the YAML file at ``path``, validated (a missing file fails clearly)."""
    if not Path(path).is_file():
        raise ConfigError("catalog", f"no catalog file at {path}")
    return load(Catalog, path, "catalog")
