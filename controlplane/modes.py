"""What runs the packets: the XDP program over pinned maps, or the userspace twin.

A :class:`Runner` gives the control plane the same five things in both modes: the
maps (:class:`MapStore`), the counters, whether it is forwarding, and start/stop. In
``start`` it connects the datapath to the service: flow events go to the flow cache,
SLOW verdicts to Redis recovery.

``auto`` picks XDP when the loader can attach to the configured interfaces, else the
twin, and says which and why in one log line.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.config import RelayConfig
from controlplane.layout import STAT_MAX
from controlplane.store import MapStore, MemoryStore
from icegate.errors import DependencyError, IcegateError, LinkError

if TYPE_CHECKING:
    from controlplane.service import RelayService

log = logging.getLogger(__name__)


class Runner(Protocol):
    mode: str  # "xdp-native", "xdp-generic" or "userspace"
    maps: MapStore
    cpus: int  # rate buckets per limit: the per-CPU arrays in XDP, one in the twin

    def counters(self) -> Sequence[tuple[int, int]]: ...
    def problem(self) -> str | None: ...
    def tasks(self) -> list[asyncio.Task[Any]]: ...
    async def start(self, service: RelayService) -> None: ...
    async def stop(self) -> None: ...


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise DependencyError(f"{name} is not available in this build ({exc})") from exc


def select_runner(cfg: RelayConfig) -> Runner:
    """The datapath for ``cfg.mode``; ``auto`` falls back from XDP to the twin, saying why."""
    if cfg.mode == "userspace":
        log.info("datapath mode=userspace reason=requested")
        return twin_runner(cfg)
    if cfg.mode == "xdp":
        return xdp_runner(cfg)
    if not cfg.interfaces:
        log.info("datapath mode=userspace reason=no_interfaces_configured")
        return twin_runner(cfg)
    try:
        return xdp_runner(cfg)
    except IcegateError as exc:
        log.info("datapath mode=userspace reason=xdp_unavailable error=%s", exc)
        return twin_runner(cfg)


def xdp_runner(cfg: RelayConfig) -> Runner:
    runner: Runner = _module("controlplane.xdprunner").XdpRunner(cfg)
    return runner


def twin_runner(cfg: RelayConfig) -> Runner:
    return TwinRunner(cfg)


class TwinRunner:
    """The userspace twin (``twin.py``) over a ``MemoryStore``: state lives and dies with the process."""

    mode = "userspace"
    cpus = 1

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.maps: MapStore = MemoryStore(cfg.limits.max_flows, cfg.limits.max_pending)
        self.relay: Any = None

    def counters(self) -> Sequence[tuple[int, int]]:
        if self.relay is None:
            return [(0, 0)] * STAT_MAX
        counters: Sequence[tuple[int, int]] = self.relay.counters()
        return counters

    def problem(self) -> str | None:
        return None if self.relay is not None and self.relay.running else "userspace twin is not running"

    def tasks(self) -> list[asyncio.Task[Any]]:
        return []

    async def start(self, service: RelayService) -> None:
        twin = _module("controlplane.twin")
        recovery = service.recovery

        async def slow_path(result: Any) -> bool:
            return result.key is not None and await recovery.recover_key(result.key)

        try:
            self.relay = await twin.TwinRelay.start(
                self.cfg, self.maps, on_slow=slow_path, on_event=service.flow_cache.record
            )
        except OSError as exc:
            raise LinkError(f"userspace twin cannot bind its sockets: {exc}") from exc

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.close()
