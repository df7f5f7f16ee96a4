"""Flow expiry: flows of calls that ended leave the relay's maps and the flow cache.

The BPF maps are LRU: without this, a flow outlives its call until newer flows push it
out (minutes to hours on a quiet relay), is counted as live by ``backends ls`` and keeps
its client address routed to a transceiver that forgot it. Every ``expiry.interval_s``
:class:`Expiry` walks both maps (the pinned BPF maps in XDP mode, the twin's dictionaries
otherwise: the same :class:`MapStore` calls) and removes

- **confirmed** flows idle (``last_seen_ns``, CLOCK_MONOTONIC like ``bpf_ktime_get_ns``)
  for more than ``expiry.idle_s``: 30 s by default, RFC 7675 §5.1's consent window. A
  live WebRTC session is never that quiet: consent checks alone come every 5 s (2.5 s from
  browsers); a session whose client stopped answering ends at the transceiver after the
  same window;
- **pending** flows (a first check no transceiver answered) older than ``expiry.pending_s``
  (3 s by default): a real client retransmits its check and makes a new one.

A flow is read again just before it is deleted, so one that carried a packet during the
walk stays. Each removal of a confirmed flow is an ``EXPIRED`` :class:`FlowEvent` for the
flow cache, which deletes the Redis record (no other relay recovers a dead call), and
every removal is counted (``icegate_relay_flows_expired_total{state}``). A flow the
sweep removed while its client was in fact alive comes back from its next consent check
(the token routes it again); nothing else depends on the sweep being exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator

from controlplane.config import ExpiryConfig
from controlplane.datapath.layout import FlowEventKind
from controlplane.datapath.store import FlowEvent, MapStore
from icegate.errors import StoreError

log = logging.getLogger(__name__)

CHUNK = 2048  # flows walked between two turns of the event loop


class Expiry:
    def __init__(
        self,
        maps: MapStore,
        cfg: ExpiryConfig,
        publish: Callable[[FlowEvent], None],
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.maps = maps
        self.cfg = cfg
        self.publish = publish
        self._clock_ns = clock_ns
        self.expired: Counter[str] = Counter()  # state (confirmed | pending) -> flows removed
        self.sweeps_total = 0

    def sweep(self) -> tuple[int, int]:
        """One walk of both maps at once; returns (confirmed, pending) flows removed."""
        walk = self._walk()
        while True:
            try:
                next(walk)
            except StopIteration as done:
                result: tuple[int, int] = done.value
                return result

    def _walk(self) -> Generator[None, None, tuple[int, int]]:
        """The sweep, pausing (``yield``) every :data:`CHUNK` flows so that :meth:`run` can
        let the event loop run: a full map takes seconds of Python (docs/CONTINUITY.md §4)."""
        now = self._clock_ns()
        idle_ns, pending_ns = int(self.cfg.idle_s * 1e9), int(self.cfg.pending_s * 1e9)
        # Walk first, delete after: the maps are not modified under their own iteration.
        stale, old = [], []
        for seen, (key, flow) in enumerate(self.maps.flows(), 1):
            if seen % CHUNK == 0:
                yield
            if now - flow.last_seen_ns > idle_ns:
                stale.append(key)
        for seen, (key, flow) in enumerate(self.maps.pending(), 1):
            if seen % CHUNK == 0:
                yield
            if now - flow.created_ns > pending_ns:
                old.append(key)
        confirmed = 0
        for key in stale:
            again = self.maps.get_flow(key)  # the datapath may have used it since the walk began
            if again is None or self._clock_ns() - again.last_seen_ns <= idle_ns:
                continue
            self.maps.delete_flow(key)
            confirmed += 1
            self.publish(
                FlowEvent(FlowEventKind.EXPIRED, key, again.cluster, again.index, again.token_tag, now)
            )
        pending = 0
        for key in old:  # a pending flow confirmed meanwhile is gone from this map already
            if self.maps.get_pending(key) is not None:
                self.maps.delete_pending(key)
                pending += 1
        self.expired["confirmed"] += confirmed
        self.expired["pending"] += pending
        self.sweeps_total += 1
        if confirmed or pending:
            log.info("flows expired confirmed=%d pending=%d", confirmed, pending)
        return confirmed, pending

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                for _ in self._walk():
                    await asyncio.sleep(0)  # the twin's packets and the other loops go first
            except StoreError as exc:  # a map call failed: the next sweep tries again
                log.warning("flow expiry sweep failed error=%s", exc)
