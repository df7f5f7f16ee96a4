"""The userspace twin's maps for the operator CLI: ``GET /v1/state`` and a read-only store.

In XDP mode the CLI reads the pinned maps; the twin keeps its maps in its own process,
so its control plane serves them on its HTTP endpoint instead, as JSON::

    {"name", "mode", "vips": [{address, port, index}],
     "backends": [{cluster, index, address, port, state, generation}],
     "flows" | "pending": [{"client": addr16 hex, "client_port", "vip_index", <Flow fields>}],
     "route_key_ids": [...], "counters": [[packets, bytes] per Stat], "capacity": {map: n}}

Route keys never leave the process (only their ids). :class:`SnapshotStore` turns one
answer back into a :class:`~controlplane.datapath.store.MapStore` the CLI's views read as they
read a ``KernelStore``; it refuses to write (``flows flush`` needs the pinned maps).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from controlplane.config import HttpConfig, RelayLimits
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, Flow, FlowKeyT, MapStore, MemoryStore, Vip
from controlplane.node.http import snapshot_path
from controlplane.node.metrics import map_capacity
from icegate.errors import ReadOnlyState

FLOW_FIELDS = tuple(f.name for f in dataclasses.fields(Flow))


def state(
    name: str,
    datapath: tuple[str, str, str],
    maps: MapStore,
    counters: Sequence[tuple[int, int]],
    limits: RelayLimits,
) -> dict[str, Any]:
    """What ``GET /v1/state`` answers (JSON-ready); ``datapath`` is (mode, reason, detail)."""

    def flows(items: Iterator[tuple[FlowKeyT, Flow]]) -> list[dict[str, Any]]:
        return [
            {"client": k[0].hex(), "client_port": k[1], "vip_index": k[2], **dataclasses.asdict(f)}
            for k, f in items
        ]

    return {
        "name": name,
        "mode": datapath[0],
        "reason": datapath[1],
        "detail": datapath[2],
        "vips": [dataclasses.asdict(v) for v in maps.vips()],
        "backends": [{**dataclasses.asdict(b), "state": b.state.name.lower()} for b in maps.backends()],
        "flows": flows(maps.flows()),
        "pending": flows(maps.pending()),
        "route_key_ids": sorted(maps.route_keys()),
        "counters": [list(c) for c in counters],
        "capacity": map_capacity(limits),
    }


def fetch(http: HttpConfig, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The state a control plane on ``http`` serves; None when nothing answers there."""
    host = f"[{http.address}]" if ":" in http.address else http.address
    try:
        with urllib.request.urlopen(f"http://{host}:{http.port}{snapshot_path}", timeout=timeout_s) as reply:
            data: dict[str, Any] = json.loads(reply.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


class SnapshotStore(MemoryStore):
    """One ``/v1/state`` answer as a read-only MapStore; ``counters()`` asks again each time."""

    def __init__(self, data: dict[str, Any], refetch: Callable[[], dict[str, Any] | None]) -> None:
        capacity = data["capacity"]
        super().__init__(max_flows=capacity["flows"], max_pending=capacity["pending"])
        self.data = data
        self._refetch = refetch
        super().set_vips([Vip(**v) for v in data["vips"]])
        for b in data["backends"]:
            super().put_backend(Backend(**{**b, "state": BackendState[b["state"].upper()]}))
        for table, put in (("flows", super().put_flow), ("pending", super().put_pending)):
            for row in data[table]:
                key = (bytes.fromhex(row["client"]), row["client_port"], row["vip_index"])
                put(key, Flow(**{f: row[f] for f in FLOW_FIELDS}))

    def counters(self) -> Sequence[tuple[int, int]]:
        fresh = self._refetch() or self.data
        self.data = fresh
        return [(p, b) for p, b in fresh["counters"]]

    def fill(self) -> dict[str, int]:
        return {
            "flows": len(self.data["flows"]),
            "pending": len(self.data["pending"]),
            "backends": len(self.data["backends"]),
            "vips": len(self.data["vips"]),
            "route_keys": len(self.data["route_key_ids"]),
        }

    def flush_flows(self) -> int:
        raise ReadOnlyState(
            "the userspace twin's flows live in its process: the CLI can read them over HTTP but not "
            "flush them (restart the twin; sessions recover from Redis)"
        )
