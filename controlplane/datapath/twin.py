"""The userspace twin: the relay's datapath on asyncio UDP sockets, for hosts without XDP.

One UDP socket per VIP (bound to VIP:port) and one tunnel socket per configured tunnel
address family (bound to ``tunnel.address4|6 : tunnel.port``). Every datagram goes
through :class:`~controlplane.datapath.engine.Datapath` (same rules, counters, rate limits and
events as the XDP program, DATAPATH.md §7): a client datagram leaves as Geneve from the
tunnel socket to the owning transceiver, a transceiver's Geneve datagram leaves as its
inner UDP payload from the VIP socket to the client. The kernel routes what the twin
sends, so the next hop is always "ok" (§6 does not apply).

Usage::

    relay = await TwinRelay.start(config, store, on_slow=hook, on_event=events.append)
    ...                                  # relay.counters() for metrics
    await relay.close()

- ``store``: a :class:`~controlplane.datapath.store.MapStore` (normally a ``MemoryStore``) that
  already holds the VIPs, tunnel and rate limits (``service.configure_maps(config,
  store, cpus=1)``: the twin has one bucket per limit, not one per CPU), backends and
  route keys (cluster sync).
- ``on_slow(result) -> Awaitable[bool]``: called (as a task) for every SLOW verdict
  that the slow-path rate limit admitted (``result.stat`` SLOW_NO_FLOW or
  SLOW_RETURN_NO_FLOW, ``result.key`` the flow key). Return True after installing the
  flow (``Recovery.recover_key(result.key)``) and the twin re-processes the datagram
  once, uncounted (it was counted as SLOW). At most ``max_slow_tasks`` run at once;
  beyond that a SLOW datagram is dropped (it is already counted).
- ``on_event(event)``: ``CREATED`` / ``REROUTED`` flow events, as the ring buffer.
- :func:`run` runs a coroutine on uvloop when it is installed, else on asyncio.

``datagram_received`` only hands the datagram to the relay; the relay only calls the
datapath and sends. Nothing here raises out of a protocol callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from controlplane.config import RelayConfig
from controlplane.datapath.engine import Datapath, SocketResult
from controlplane.datapath.layout import Stat
from controlplane.datapath.store import FlowEvent, MapStore
from icegate.inet import addr16

log = logging.getLogger(__name__)

SlowHook = Callable[[SocketResult], Awaitable[bool]]
MAX_SLOW_TASKS = 1024
SOCKET_BUFFER = 4 << 20  # bytes asked for SO_RCVBUF / SO_SNDBUF (the kernel may cap it)
IP_FREEBIND = 15  # linux/in.h: bind a VIP before the address is configured
IPV6_FREEBIND = 78  # linux/in6.h
_SLOW = frozenset({Stat.SLOW_NO_FLOW, Stat.SLOW_RETURN_NO_FLOW})
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed (the twin's hot path is the event loop's), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def open_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv6 only for IPv6 addresses)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _VipProtocol(asyncio.DatagramProtocol):
    """Datagrams from clients to one VIP."""

    def __init__(self, relay: TwinRelay, host: str, port: int) -> None:
        self.relay = relay
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_client(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("vip socket error vip=%s:%s error=%s", self.host, self.port, exc)


class _TunnelProtocol(asyncio.DatagramProtocol):
    """Geneve datagrams from transceivers."""

    def __init__(self, relay: TwinRelay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_backend(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tunnel socket error error=%s", exc)


class TwinRelay:
    """The twin's sockets around one :class:`Datapath`; see the module docstring."""

    def __init__(
        self,
        config: RelayConfig,
        store: MapStore,
        *,
        on_slow: SlowHook | None = None,
        on_event: Callable[[FlowEvent], None] | None = None,
        datapath: Datapath | None = None,
        max_slow_tasks: int = MAX_SLOW_TASKS,
        charge_slow: bool = True,
    ) -> None:
        self.config = config
        self.store = store
        self.datapath = datapath or Datapath(
            store,
            on_event=on_event,
            max_rate_sources=config.limits.max_rate_sources,
            charge_slow=charge_slow,  # False behind XDP: the program charged every SLOW verdict
        )
        self.on_slow = on_slow
        self.max_slow_tasks = max_slow_tasks
        self.slow_dropped = 0  # SLOW datagrams not handed to on_slow (too many in flight, or no hook)
        self._vips: list[_VipProtocol] = []
        self._vip_by_key: dict[tuple[bytes, int], _VipProtocol] = {}
        self._tunnel4: _TunnelProtocol | None = None
        self._tunnel6: _TunnelProtocol | None = None
        self._slow_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def start(cls, config: RelayConfig, store: MapStore, **options: Any) -> TwinRelay:
        """Bind every socket and start receiving; an address that cannot be bound raises OSError."""
        relay = cls(config, store, **options)
        await relay.open()
        return relay

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tunnel = self.config.tunnel
            for host in (tunnel.address4, tunnel.address6):
                if host is None:
                    continue
                _, proto = await loop.create_datagram_endpoint(
                    partial(_TunnelProtocol, self), sock=open_udp(host, tunnel.port)
                )
                if ":" in host:
                    self._tunnel6 = proto
                else:
                    self._tunnel4 = proto
            for vip in self.config.vips:
                sock = open_udp(vip.address, vip.port)
                bound = (vip.address, sock.getsockname()[1])  # port 0 (tests) becomes the real port
                _, vproto = await loop.create_datagram_endpoint(
                    partial(_VipProtocol, self, *bound), sock=sock
                )
                self._vips.append(vproto)
                self._vip_by_key[(addr16(vip.address), bound[1])] = vproto
        except BaseException:
            await self.close()
            raise
        log.info(
            "twin started vips=%s tunnel=%s:%s",
            ",".join(f"{v.host}:{v.port}" for v in self._vips),
            "/".join(h for h in (self.config.tunnel.address4, self.config.tunnel.address6) if h),
            self.config.tunnel.port,
        )

    async def close(self) -> None:
        """Stop receiving, cancel slow-path work, close every socket. Idempotent."""
        self._closed = True
        for proto in (*self._vips, self._tunnel4, self._tunnel6):
            if proto is not None and proto.transport is not None:
                proto.transport.close()
        tasks = list(self._slow_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._vips.clear()
        self._vip_by_key.clear()
        self._tunnel4 = self._tunnel6 = None
        await asyncio.sleep(0)  # let the transports finish closing

    @property
    def running(self) -> bool:
        return not self._closed and bool(self._vips)

    def counters(self) -> list[tuple[int, int]]:
        """``(packets, bytes)`` per :class:`Stat` index (``metrics.CounterSource``)."""
        return [(p, b) for p, b in self.datapath.counters]

    def vip_addresses(self) -> list[tuple[str, int]]:
        """The bound VIP sockets' addresses (port 0 in the config becomes the real port)."""
        return [p.transport.get_extra_info("sockname")[:2] for p in self._vips if p.transport is not None]

    def tunnel_addresses(self) -> list[tuple[str, int]]:
        found = []
        for proto in (self._tunnel4, self._tunnel6):
            if proto is not None and proto.transport is not None:
                found.append(proto.transport.get_extra_info("sockname")[:2])
        return found

    # ---- per datagram ----

    def from_client(self, vip: _VipProtocol, data: bytes, addr: Any) -> None:
        result = self.datapath.from_client(addr[0], addr[1], vip.host, vip.port, data)
        if result.data is not None:
            self._to_backend(result)
        elif result.stat in _SLOW:
            self._slow(
                result,
                lambda: self.datapath.from_client(addr[0], addr[1], vip.host, vip.port, data, retry=True),
            )

    def from_backend(self, data: bytes, addr: Any) -> None:
        result = self.datapath.from_backend(addr[0], data, outer_src_port=addr[1])
        if result.data is not None:
            self._to_client(result)
        elif result.stat in _SLOW:
            self._slow(
                result, lambda: self.datapath.from_backend(addr[0], data, retry=True, outer_src_port=addr[1])
            )

    def _to_backend(self, result: SocketResult) -> None:
        host_port = result.addr
        assert host_port is not None and result.data is not None
        tunnel = self._tunnel6 if ":" in host_port[0] else self._tunnel4
        if tunnel is None or tunnel.transport is None:
            log.debug("no tunnel socket for backend %s", host_port[0])
            return
        tunnel.transport.sendto(result.data, host_port)

    def _to_client(self, result: SocketResult) -> None:
        vip = self._vip_by_key.get(result.vip) if result.vip is not None else None
        if vip is None or vip.transport is None or result.data is None:
            log.debug("no socket for VIP %s", result.vip)
            return
        vip.transport.sendto(result.data, result.addr)

    def _slow(self, result: SocketResult, again: Callable[[], SocketResult]) -> None:
        if self.on_slow is None or self._closed or len(self._slow_tasks) >= self.max_slow_tasks:
            self.slow_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._recover(result, again))
        self._slow_tasks.add(task)
        task.add_done_callback(self._slow_tasks.discard)

    async def _recover(self, result: SocketResult, again: Callable[[], SocketResult]) -> None:
        assert self.on_slow is not None
        try:
            installed = await self.on_slow(result)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken hook must not take the relay down
            log.exception("slow-path hook failed stat=%s", result.stat.name)
            return
        if not installed or self._closed:
            return
        retried = again()
        if retried.data is None:
            return
        if result.stat is Stat.SLOW_NO_FLOW:
            self._to_backend(retried)
        else:
            self._to_client(retried)
