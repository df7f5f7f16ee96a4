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
from controlplane.store import MapStore
from icegate.errors import DependencyError, IcegateError

if TYPE_CHECKING:
    from controlplane.service import RelayService

log = logging.getLogger(__name__)


class Runner(Protocol):
    mode: str  # "xdp-native", "xdp-generic" or "userspace"
    maps: MapStore

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
    runner: Runner = _module("controlplane.twinrunner").TwinRunner(cfg)
    return runner
