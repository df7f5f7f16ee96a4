"""The decision: which cluster serves a client, and through which two relays.

Pure: a catalog, a health view and a location in, a :class:`Decision` out (or
:class:`Unavailable`, which the front door turns into ``503`` + ``Retry-After``).

1. **Cost** of every cluster, in milliseconds of round trip: the catalog's measured
   ``rtt_ms[country][cluster]`` when the client's country has one, else an estimate
   from the great-circle distance (light in fibre covers ~200 km per ms one way, so
   ``rtt ≈ km / 100``; routes are longer, but the estimate only has to *order* clusters).
2. **Health**: a cluster is usable when at least one transceiver's registration is live
   and active in its region's Redis, its live sessions are below its capacity, its
   weight is above 0, and at least one of its relays has not failed its last probe.
3. **Nearest set**: the usable clusters whose cost is within ``tie_ms`` of the best one.
4. **Weights**: among the nearest set, rendezvous hashing on the client's key (its address,
   or its coordinates) with each cluster's weight: a client sticks to one cluster while
   nothing changes, and clients split in proportion to the weights.
5. **Relays**: the cluster's relays by priority, then nearness to the cluster, without
   those whose last probe failed; the first two are the answer's primary and backup.

A cluster nearer than the chosen one that was skipped makes the decision a **failover**;
every skipped cluster is listed with why.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geo.locate import Location
from icegate.catalog import RELAYS_PER_ANSWER, Catalog, Cluster, Relay, great_circle_km

KM_PER_RTT_MS = 100.0  # 2 x 100 km per ms in fibre (~2/3 c): round trip ms ~= km / 100
DEFAULT_TIE_MS = 5.0
DEFAULT_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ClusterHealth:
    """What the region's Redis says about a cluster right now."""

    live: int = 0  # registrations alive and active
    draining: int = 0
    sessions: int = 0  # sum of the live registrations' session counts


@dataclass(frozen=True)
class HealthView:
    """The front door's view: cluster health by name, relays whose last probe failed, dead regions."""

    clusters: Mapping[str, ClusterHealth] = field(default_factory=dict)
    broken_relays: frozenset[str] = frozenset()
    unreachable_regions: frozenset[str] = frozenset()  # Redis did not answer: no health known


@dataclass(frozen=True)
class RelayChoice:
    relay: Relay
    role: str  # "primary" | "backup"

    def to_json(self) -> dict[str, Any]:
        r = self.relay
        return {
            "name": r.name,
            "role": self.role,
            "priority": r.priority,
            "vip4": r.vip4,
            "vip6": r.vip6,
            "port": r.port,
        }


@dataclass(frozen=True)
class Decision:
    cluster: Cluster
    relays: tuple[RelayChoice, ...]
    reason: str  # "nearest" | "failover"
    cost_ms: float
    cost_source: str  # "rtt" | "distance"
    distance_km: float
    location: Location
    skipped: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def region(self) -> str:
        return self.cluster.region

    def header(self) -> str:
        """The ``Icegate-Decision`` response header: the decision in one line."""
        parts = [
            f"region={self.region}",
            f"cluster={self.cluster.name}",
            f"reason={self.reason}",
            f"source={self.location.source}",
        ]
        parts += [f"{c.role}={c.relay.name}" for c in self.relays]
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "cluster": self.cluster.name,
            "cluster_id": self.cluster.id,
            "signaling_url": self.cluster.signaling_url,
            "reason": self.reason,
            "cost_ms": round(self.cost_ms, 2),
            "cost_source": self.cost_source,
            "distance_km": round(self.distance_km, 1),
            "location": self.location.to_json(),
            "relays": [c.to_json() for c in self.relays],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Unavailable:
    """No cluster can take the client: ``503`` with ``Retry-After``."""

    location: Location
    skipped: tuple[dict[str, Any], ...]
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    notes: tuple[str, ...] = ()
    reason: str = "unavailable"

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "retry_after_s": self.retry_after_s,
            "location": self.location.to_json(),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }


def cost(catalog: Catalog, cluster: Cluster, where: Location) -> tuple[float, str, float]:
    """(round-trip ms, "rtt" or "distance", great-circle km) from ``where`` to ``cluster``."""
    km = great_circle_km(where.lat, where.lon, cluster.lat, cluster.lon)
    row = catalog.rtt_ms.get(where.country or "", {})
    if cluster.name in row:
        return row[cluster.name], "rtt", km
    return km / KM_PER_RTT_MS, "distance", km


def _why_not(cluster: Cluster, health: HealthView, usable_relays: list[Relay]) -> str | None:
    if cluster.region in health.unreachable_regions:
        return "region_unreachable"
    state = health.clusters.get(cluster.name, ClusterHealth())
    if state.live == 0:
        return "no_live_transceiver" if state.draining == 0 else "draining"
    if state.sessions >= cluster.capacity:
        return "full"
    if cluster.weight <= 0:
        return "weight_zero"
    if not usable_relays:
        return "relays_failed_probe"
    return None


def _rendezvous(key: str, cluster: Cluster) -> float:
    """Highest-random-weight score: ``-weight / ln(u)``, u uniform in (0, 1) from a hash of (key, cluster)."""
    digest = hashlib.blake2b(f"{key}|{cluster.name}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return -cluster.weight / math.log(u)


def decide(
    catalog: Catalog,
    health: HealthView,
    where: Location,
    *,
    tie_ms: float = DEFAULT_TIE_MS,
    client_key: str | None = None,
    notes: tuple[str, ...] | list[str] = (),
    retry_after_s: int = DEFAULT_RETRY_AFTER_S,
) -> Decision | Unavailable:
    key = client_key or where.address or f"{where.lat:.4f},{where.lon:.4f}"
    ranked = sorted(
        ((cost(catalog, c, where), c) for c in catalog.clusters), key=lambda item: (item[0][0], item[1].name)
    )
    usable: list[tuple[tuple[float, str, float], Cluster, list[Relay]]] = []
    skipped: list[dict[str, Any]] = []
    for c_cost, cluster in ranked:
        relays = [r for r in catalog.relays_of(cluster.name) if r.name not in health.broken_relays]
        why = _why_not(cluster, health, relays)
        if why is None:
            usable.append((c_cost, cluster, relays))
        else:
            skipped.append({"cluster": cluster.name, "region": cluster.region, "why": why})
    if not usable:
        return Unavailable(where, tuple(skipped), retry_after_s, tuple(notes))
    best = usable[0][0][0]
    nearest = [u for u in usable if u[0][0] <= best + tie_ms]
    (c_ms, c_source, c_km), chosen, relays = max(nearest, key=lambda u: (_rendezvous(key, u[1]), u[1].name))
    costs = {cluster.name: c_cost[0] for c_cost, cluster in ranked}
    reason = "failover" if any(costs[s["cluster"]] < c_ms for s in skipped) else "nearest"
    roles = ("primary", "backup")
    choices = tuple(RelayChoice(r, roles[i]) for i, r in enumerate(relays[:RELAYS_PER_ANSWER]))
    return Decision(
        cluster=chosen,
        relays=choices,
        reason=reason,
        cost_ms=c_ms,
        cost_source=c_source,
        distance_km=c_km,
        location=where,
        skipped=tuple(skipped),
        notes=tuple(notes),
    )
