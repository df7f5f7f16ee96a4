"""Draining a relay node: out of the fleet gracefully (docs/SCALING.md, "Drain").

``icegate relay drain`` (or ``POST /v1/drain`` on the control plane's HTTP endpoint, which
the CLI calls) puts the node in drain:

1. ``/readyz`` answers 503 ``draining: ...``: the routing layer (a BGP speaker's health
   check, a cloud load balancer's probe, the lab's :func:`labkit.lab.fleet.withdraw`) stops
   sending the node new flows;
2. every backend in this node's maps is marked draining (and stays so through every sync),
   so the datapath refuses new flows (``drop/backend_draining``) while the flows it has keep
   forwarding;
3. the node is *empty* when none of its flows has carried a packet for ``idle_s``: its
   clients now reach other nodes (which recover their flows from Redis) or have hung up.
   Flows idle that long are then removed from the maps, so ``relay status`` shows 0.

``icegate relay undrain`` (``DELETE /v1/drain``) cancels a drain, say the wrong node was
drained: readiness comes back, the backends this drain held draining are active again at
once (unless Redis meanwhile said otherwise: the service runs a full sync right after),
and the node takes new flows. Flows already removed as idle are recovered from Redis by
their next packet, like on any node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, MapStore

IDLE_S = 5.0  # > the media interval (20 ms) and a consent check (RFC 7675 §5.1: ~5 s)


@dataclass(frozen=True)
class DrainReport:
    draining: bool
    since_s: float | None  # seconds in drain
    flows: int  # flows in the map
    live: int  # flows that carried a packet in the last idle_s
    idle_s: float
    removed: int  # idle flows removed since the drain began

    @property
    def empty(self) -> bool:
        return self.draining and self.live == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "draining": self.draining,
            "since_s": None if self.since_s is None else round(self.since_s, 3),
            "flows": self.flows,
            "live": self.live,
            "idle_s": self.idle_s,
            "removed": self.removed,
            "empty": self.empty,
        }


class Drain:
    def __init__(
        self,
        maps: MapStore,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.maps = maps
        self._clock_ns = clock_ns
        self.started_ns: int | None = None
        self.removed = 0
        self._held: set[tuple[int, int, int]] = set()  # (cluster, index, generation) made draining here

    @property
    def draining(self) -> bool:
        return self.started_ns is not None

    def start(self) -> None:
        """Enter drain (idempotent) and refuse new flows at once."""
        if self.started_ns is None:
            self.started_ns = self._clock_ns()
        self.hold_backends()

    def stop(self) -> int:
        """Leave drain (idempotent): the backends this drain held draining are active again;
        returns how many. The next sync writes whatever Redis says."""
        self.started_ns = None
        self.removed = 0
        restored = 0
        for b in self.maps.backends():
            if b.state == BackendState.DRAINING and (b.cluster, b.index, b.generation) in self._held:
                self.maps.put_backend(
                    Backend(b.cluster, b.index, b.address, b.port, BackendState.ACTIVE, b.generation)
                )
                restored += 1
        self._held.clear()
        return restored

    def adjust(self, b: Backend) -> Backend:
        """What sync writes for backend ``b`` as Redis has it (``ClusterSync.adjust``): in drain,
        active backends are held draining in this node's maps."""
        if not self.draining or b.state != BackendState.ACTIVE:
            self._held.discard((b.cluster, b.index, b.generation))  # Redis's own state: not ours to undo
            return b
        self._held.add((b.cluster, b.index, b.generation))
        return Backend(b.cluster, b.index, b.address, b.port, BackendState.DRAINING, b.generation)

    def handle(self, method: str, idle_s: float) -> dict[str, Any]:
        """``POST /v1/drain`` starts a drain, ``DELETE`` ends it, ``GET`` only reports."""
        if method == "POST":
            self.start()
        elif method == "DELETE":
            self.stop()
        return self.report(idle_s).to_json()

    def hold_backends(self) -> int:
        """Mark every active backend in the maps draining; returns how many changed."""
        changed = 0
        for b in self.maps.backends():
            held = self.adjust(b)
            if held != b:
                self.maps.put_backend(held)
                changed += 1
        return changed

    def problem(self) -> str | None:
        if self.started_ns is None:
            return None
        return "node draining (icegate relay drain): routing should withdraw it"

    def report(self, idle_s: float = IDLE_S) -> DrainReport:
        """Count flows and live flows; in drain, remove the ones idle for ``idle_s``."""
        now = self._clock_ns()
        limit = int(idle_s * 1e9)
        flows = live = 0
        idle = []
        for key, flow in self.maps.flows():
            flows += 1
            if now - flow.last_seen_ns < limit:
                live += 1
            else:
                idle.append(key)
        if self.draining:
            for key in idle:
                self.maps.delete_flow(key)
            self.removed += len(idle)
            flows -= len(idle)
        since = None if self.started_ns is None else (now - self.started_ns) / 1e9
        return DrainReport(self.draining, since, flows, live, idle_s, self.removed)
