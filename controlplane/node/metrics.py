"""Prometheus metrics, pulled at scrape time by one collector.

Nothing here counts on its own: :class:`RelayCollector` reads the datapath counters
(the kernel's per-CPU array summed, or the twin's array), the map fill levels and the
control plane's own counters when Prometheus scrapes, and turns them into metric
families. Names are ``icegate_relay_<what>_<unit>``, counters end in ``_total``, and
every label has a bounded set of values (verdict, reason, map, state, result).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.cluster.flowcache import FlowCache
from controlplane.cluster.recovery import Recovery
from controlplane.cluster.redisio import RedisStore
from controlplane.cluster.sync import ClusterSync
from controlplane.config import RelayLimits
from controlplane.datapath.layout import MAX_ROUTE_KEYS, BackendState, NexthopStat, Stat
from controlplane.datapath.store import MapStore
from controlplane.node.expiry import Expiry

PREFIX = "icegate_relay"


class CounterSource(Protocol):
    def counters(self) -> Sequence[tuple[int, int]]:
        """``(packets, bytes)`` per :class:`Stat` index, summed over CPUs."""
        ...


class ListCounters:
    """A :class:`CounterSource` over an in-memory ``[[packets, bytes], ...]`` array (the twin's)."""

    def __init__(self, array: Sequence[Sequence[int]]) -> None:
        self.array = array

    def counters(self) -> Sequence[tuple[int, int]]:
        return [(int(p), int(b)) for p, b in self.array]


def map_fill(maps: MapStore) -> dict[str, int]:
    """Entries per map: the store's own count when it has one (``KernelStore.fill``), else a walk."""
    fill = getattr(maps, "fill", None)
    if callable(fill):
        counted = dict(fill())
        counted.pop("rate_sources", None)
        counted.setdefault("route_keys", len(maps.route_keys()))
        return counted
    return {
        "flows": sum(1 for _ in maps.flows()),
        "pending": sum(1 for _ in maps.pending()),
        "backends": len(maps.backends()),
        "vips": len(maps.vips()),
        "route_keys": len(maps.route_keys()),
    }


def map_capacity(limits: RelayLimits) -> dict[str, int]:
    return {
        "flows": limits.max_flows,
        "pending": limits.max_pending,
        "backends": limits.max_backends,
        "vips": limits.max_vips,
        "route_keys": MAX_ROUTE_KEYS,
    }


@dataclass
class ControlPlane:
    """The parts whose counters the collector reads; any may be absent (the CLI has none)."""

    redis: RedisStore | None = None
    sync: ClusterSync | None = None
    flow_cache: FlowCache | None = None
    recovery: Recovery | None = None
    expiry: Expiry | None = None
    draining: Callable[[], bool] | None = None  # icegate relay drain (controlplane/node/drain.py)


class RelayCollector(Collector):
    def __init__(
        self,
        maps: MapStore,
        counters: CounterSource,
        limits: RelayLimits,
        parts: ControlPlane | None = None,
        datapath_up: Callable[[], bool] = lambda: True,
        datapath_info: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.maps = maps
        self.source = counters
        self.limits = limits
        self.parts = parts or ControlPlane()
        self.datapath_up = datapath_up
        self.datapath_info = datapath_info

    def collect(self) -> Iterator[Metric]:
        yield from self._datapath()
        yield from self._nexthop_cache()
        yield from self._slow_path()
        yield from self._maps()
        yield from self._control_plane()

    def _slow_path(self) -> Iterator[Metric]:
        """Behind XDP, what the slow path's own datapath decided about the packets the
        program passed up (docs/SECURITY.md, issue 12 finding 4): a source whose
        ``slow_path()`` returns counters (``XdpRunner``) has them exported."""
        slow_path = getattr(self.source, "slow_path", None)
        source = slow_path() if callable(slow_path) else None
        if source is None:
            return
        family = CounterMetricFamily(
            f"{PREFIX}_slow_path_packets",
            "Packets the XDP program passed up, by the slow path's own verdict.",
            labels=["verdict", "reason"],
        )
        for stat, (n, _) in zip(Stat, source.counters(), strict=False):
            if n:
                family.add_metric([stat.verdict.name.lower(), stat.reason], n)
        yield family

    def _nexthop_cache(self) -> Iterator[Metric]:
        """The XDP program's next-hop cache (bpf/nexthop.h): a source whose ``nexthop_stats()``
        returns the per-result lookup counts (``XdpRunner``) has them exported."""
        nexthop_stats = getattr(self.source, "nexthop_stats", None)
        if not callable(nexthop_stats):
            return
        family = CounterMetricFamily(
            f"{PREFIX}_nexthop_cache_lookups",
            "Next-hop cache lookups of forwarded packets: hit, miss (bpf_fib_lookup, entry stored) "
            "or stale (older generation or age, or a longer packet: bpf_fib_lookup again).",
            labels=["result"],
        )
        for result, n in zip(NexthopStat, nexthop_stats(), strict=False):
            family.add_metric([result.name.lower()], n)
        yield family

    def _datapath(self) -> Iterator[Metric]:
        labels = ["verdict", "reason"]
        packets = CounterMetricFamily(
            f"{PREFIX}_packets", "Packets seen by the datapath, by verdict.", labels=labels
        )
        octets = CounterMetricFamily(
            f"{PREFIX}_bytes", "Bytes seen by the datapath, by verdict.", labels=labels
        )
        for stat, (n, b) in zip(Stat, self.source.counters(), strict=False):
            values = [stat.verdict.name.lower(), stat.reason]
            packets.add_metric(values, n)
            octets.add_metric(values, b)
        yield packets
        yield octets
        up = GaugeMetricFamily(
            f"{PREFIX}_datapath_up", "1 while the XDP program is attached or the twin runs."
        )
        up.add_metric([], 1.0 if self.datapath_up() else 0.0)
        yield up
        if self.datapath_info is not None:
            info = GaugeMetricFamily(
                f"{PREFIX}_datapath_info",
                "1, labelled with the datapath that runs (xdp-native, xdp-generic, xdp-mixed, userspace) "
                "and why it was chosen (attached, requested, no_interfaces, xdp_unavailable).",
                labels=["mode", "reason"],
            )
            info.add_metric(list(self.datapath_info()), 1.0)
            yield info

    def _maps(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(f"{PREFIX}_map_entries", "Entries in each relay map.", labels=["map"])
        capacity = GaugeMetricFamily(f"{PREFIX}_map_capacity", "Capacity of each relay map.", labels=["map"])
        for name, count in map_fill(self.maps).items():
            entries.add_metric([name], count)
        for name, size in map_capacity(self.limits).items():
            capacity.add_metric([name], size)
        yield entries
        yield capacity
        by_state = dict.fromkeys(BackendState, 0)
        for backend in self.maps.backends():
            by_state[backend.state] += 1
        backends = GaugeMetricFamily(
            f"{PREFIX}_backends", "Transceivers in the backends map.", labels=["state"]
        )
        for state, count in by_state.items():
            backends.add_metric([state.name.lower()], count)
        yield backends

    def _control_plane(self) -> Iterator[Metric]:
        p = self.parts
        if p.redis is not None:
            yield _counter("redis_errors", "Redis commands that failed.", p.redis.errors_total)
            # redis_up, as the transceiver's (issue 16: was redis_degraded, its inverse)
            yield _gauge(
                "redis_up", "1 while Redis is reachable (0: degraded mode).", float(not p.redis.degraded)
            )
            yield _counter(
                "redis_restores", "Reconnections to Redis followed by a full sync.", p.redis.restores_total
            )
        if p.sync is not None:
            lag = p.sync.lag_s()
            yield _gauge("sync_lag_seconds", "Seconds since backends and route keys last matched Redis.", lag)
            yield _counter(
                "sync_changes", "Backend and route-key map changes made by sync.", p.sync.changes_total
            )
            yield _counter(
                "sync_refused",
                "Registrations refused: tunnel address outside backend_prefixes (docs/SECURITY.md).",
                p.sync.refused_total,
            )
        if p.flow_cache is not None:
            fc = p.flow_cache
            yield _counter(
                "flow_cache_events", "Flow events received for the Redis flow cache.", fc.events_total
            )
            yield _counter("flow_cache_writes", "Flows written to the Redis flow cache.", fc.writes_total)
            yield _counter(
                "flow_cache_refreshes", "Flow-cache TTLs refreshed for live flows.", fc.refreshes_total
            )
            yield _counter(
                "flow_cache_dropped", "Flow events dropped from a full write queue.", fc.dropped_total
            )
            yield _gauge("flow_cache_queued", "Flow-cache writes waiting for Redis.", fc.queued)
        if p.recovery is not None:
            family = CounterMetricFamily(
                f"{PREFIX}_recoveries", "Slow-path flow recoveries from Redis, by result.", labels=["result"]
            )
            for result, count in sorted(p.recovery.results.items()):
                family.add_metric([result], count)
            yield family
        if p.expiry is not None:  # controlplane/node/expiry.py
            family = CounterMetricFamily(
                f"{PREFIX}_flows_expired", "Flows removed by the expiry sweep, by state.", labels=["state"]
            )
            for state in ("confirmed", "pending"):
                family.add_metric([state], p.expiry.expired[state])
            yield family
        if p.draining is not None:
            yield _gauge("draining", "1 once the node drains (icegate relay drain).", float(p.draining()))


def _counter(name: str, doc: str, value: float) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
    family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
    family.add_metric([], value)
    return family
