"""What runs the packets: the XDP program over pinned maps, or the userspace twin.

A :class:`Runner` gives the control plane the same five things in both modes: the
maps (:class:`MapStore`), the counters, whether it is forwarding, and start/stop. In
``start`` it connects the datapath to the control plane through :class:`DatapathHooks`
(callbacks, so a runner knows nothing of the service): flow events go to the flow cache,
SLOW verdicts to Redis recovery.

``auto`` picks XDP when the program loads here (bcc, kernel headers, bpffs, the
verifier), else the twin, and says which and why: in one log line, in ``/v1/state`` and in the
``icegate_relay_datapath_info`` metric (``reason``, a metric label, is one of
attached, requested, no_interfaces, xdp_unavailable; the free-text ``detail`` carries
the error or the attach points).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.config import RelayConfig
from controlplane.datapath.engine import SocketResult
from controlplane.datapath.layout import STAT_MAX
from controlplane.datapath.store import FlowEvent, FlowKeyT, MapStore, MemoryStore
from controlplane.datapath.twin import TwinRelay
from controlplane.kernel import libbpf
from controlplane.kernel.loader import Loader
from controlplane.kernel.nexthopwatch import NexthopWatch
from controlplane.node.metrics import ListCounters
from icegate.errors import ConfigError, IcegateError, LinkError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatapathHooks:
    """What a runner calls into the control plane with (the daemon wires them)."""

    recover: Callable[[FlowKeyT], Awaitable[bool]]  # a SLOW miss: restore the flow from Redis
    record: Callable[[FlowEvent], None]  # a flow event, from the event loop's thread
    record_threadsafe: Callable[[FlowEvent], None]  # the same from another thread (ring buffer)


class Runner(Protocol):
    mode: str  # "xdp-native", "xdp-generic", "xdp-mixed" or "userspace"
    reason: str  # attached, requested, no_interfaces or xdp_unavailable (a metric label)
    detail: str  # the attach points, or why XDP could not run
    maps: MapStore
    cpus: int  # rate buckets per limit: the per-CPU arrays in XDP, one in the twin

    def counters(self) -> Sequence[tuple[int, int]]: ...
    def problem(self) -> str | None: ...
    def tasks(self) -> list[asyncio.Task[Any]]: ...
    async def start(self, hooks: DatapathHooks) -> None: ...
    async def stop(self) -> None: ...


def select_runner(cfg: RelayConfig) -> Runner:
    """The datapath for ``cfg.mode``; ``auto`` falls back from XDP to the twin, saying why."""
    if cfg.mode == "userspace":
        log.info("datapath mode=userspace reason=requested")
        return twin_runner(cfg, "requested")
    check_interfaces(cfg)  # a misspelt interface is a config error, not a reason for the twin
    if cfg.mode == "xdp":
        return xdp_runner(cfg)
    if not cfg.interfaces:
        log.info("datapath mode=userspace reason=no_interfaces")
        return twin_runner(cfg, "no_interfaces", "the config lists no interfaces to attach to")
    try:
        return xdp_runner(cfg)
    except IcegateError as exc:
        log.info("datapath mode=userspace reason=xdp_unavailable error=%s", exc)
        return twin_runner(cfg, "xdp_unavailable", str(exc))


def xdp_mode(attach_modes: Iterable[str]) -> str:
    """``xdp-native``, ``xdp-generic`` or ``xdp-mixed`` for the interfaces' attach modes;
    ``detached`` for none."""
    kinds = sorted(set(attach_modes))
    if not kinds:
        return "detached"
    return f"xdp-{kinds[0]}" if len(kinds) == 1 else "xdp-mixed"


def check_interfaces(cfg: RelayConfig) -> None:
    for name in cfg.interfaces:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise ConfigError(
                "relay.interfaces", f"no interface {name!r} in this network namespace"
            ) from None


def xdp_runner(cfg: RelayConfig) -> Runner:
    return XdpRunner(cfg)


async def _start_twin(
    cfg: RelayConfig, maps: MapStore, hooks: DatapathHooks, cannot_bind: str, *, behind_xdp: bool = False
) -> TwinRelay:
    """The twin's sockets over ``maps``, wired to the hooks: SLOW verdicts go to Redis
    recovery, flow events to the flow cache. Both modes run one (XDP as its slow path)."""

    async def on_slow(result: SocketResult) -> bool:
        return result.key is not None and await hooks.recover(result.key)

    try:
        return await TwinRelay.start(
            cfg, maps, on_slow=on_slow, on_event=hooks.record, charge_slow=not behind_xdp
        )
    except OSError as exc:
        raise LinkError(f"{cannot_bind}: {exc}") from exc


class XdpRunner:
    """The XDP program (``loader.py``) over pinned maps, plus the twin's sockets as the slow path.

    Packets the program passes up (SLOW verdicts: no flow after the maps were lost, a
    missing neighbour) reach the twin's sockets on the VIPs and the tunnel port; the twin
    runs the same datapath over the *kernel* maps, so a recovered flow is installed where
    the program sees it and the packet that triggered it is forwarded from userspace.
    Flow events come from the ring buffer, polled in a thread.
    """

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.loader = Loader(cfg)
        self.loader.load()  # compile, reuse or create the pinned maps: nothing attached yet
        self.maps: MapStore = self.loader.store()
        self.cpus = libbpf.possible_cpus()
        self.mode = "xdp"
        self.reason, self.detail = "attached", ""
        self.twin: TwinRelay | None = None
        self._poller: threading.Thread | None = None
        self._polling = threading.Event()
        self.nexthops: NexthopWatch | None = None  # keeps the program's next-hop cache true

    def counters(self) -> Sequence[tuple[int, int]]:
        counters: Sequence[tuple[int, int]] = self.maps.counters()  # type: ignore[attr-defined]
        return counters

    def nexthop_stats(self) -> Sequence[int]:
        """The program's next-hop cache lookups by result (hit, miss, stale), for /metrics."""
        stats: Sequence[int] = self.maps.nexthop_stats()  # type: ignore[attr-defined]
        return stats

    def slow_path(self) -> ListCounters | None:
        """The slow path's own verdicts (its twin's counters), for /metrics."""
        return None if self.twin is None else ListCounters(self.twin.datapath.counters)

    def problem(self) -> str | None:
        if not self.loader.modes:
            return "xdp program not attached"
        attached = {a["interface"] for a in self.loader.status()["attached"]}
        missing = sorted(set(self.cfg.interfaces) - attached)
        if missing:
            return f"xdp program not attached to {', '.join(missing)}"
        if self.twin is None or not self.twin.running:
            return "slow-path sockets are closed"
        return None

    def tasks(self) -> list[asyncio.Task[Any]]:
        return []

    async def start(self, hooks: DatapathHooks) -> None:
        self.twin = await _start_twin(
            self.cfg, self.maps, hooks, "slow-path sockets cannot bind", behind_xdp=True
        )
        self.loader.write_roles()  # before attaching: no window without interface roles
        modes = self.loader.attach()
        self.mode = xdp_mode(modes.values())
        self.detail = ",".join(f"{i}:{m}" for i, m in modes.items())
        log.info("datapath mode=%s interfaces=%s", self.mode, self.detail)
        record = hooks.record_threadsafe
        self.loader.open_events(lambda raw: record(FlowEvent.from_record(raw)))
        self._polling.set()
        self._poller = threading.Thread(target=self._poll, name="ringbuf-poll", daemon=True)
        self._poller.start()
        self.nexthops = NexthopWatch(self.cfg.pin_dir)
        self.nexthops.start()

    def _poll(self) -> None:
        while self._polling.is_set():
            self.loader.poll_events(100)

    async def stop(self) -> None:
        """Close sockets and descriptors; the program stays attached, the maps pinned."""
        self._polling.clear()
        if self.nexthops is not None:
            await asyncio.to_thread(self.nexthops.stop)
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 2.0)
        if self.twin is not None:
            await self.twin.close()
        self.loader.close()


def twin_runner(cfg: RelayConfig, reason: str = "requested", detail: str = "") -> Runner:
    return TwinRunner(cfg, reason, detail)


class TwinRunner:
    """The userspace twin (``twin.py``) over a ``MemoryStore``: state lives and dies with the process."""

    mode = "userspace"
    cpus = 1

    def __init__(self, cfg: RelayConfig, reason: str = "requested", detail: str = "") -> None:
        self.cfg = cfg
        self.reason, self.detail = reason, detail
        self.maps: MapStore = MemoryStore(cfg.limits.max_flows, cfg.limits.max_pending)
        self.relay: TwinRelay | None = None

    def counters(self) -> Sequence[tuple[int, int]]:
        if self.relay is None:
            return [(0, 0)] * STAT_MAX
        counters: Sequence[tuple[int, int]] = self.relay.counters()
        return counters

    def problem(self) -> str | None:
        return None if self.relay is not None and self.relay.running else "userspace twin is not running"

    def tasks(self) -> list[asyncio.Task[Any]]:
        return []

    async def start(self, hooks: DatapathHooks) -> None:
        self.relay = await _start_twin(self.cfg, self.maps, hooks, "userspace twin cannot bind its sockets")

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.close()
