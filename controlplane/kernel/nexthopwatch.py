"""Keep the XDP next-hop cache (``bpf/nexthop.h``) true: bump its generation on netlink news.

The program caches what ``bpf_fib_lookup`` answered per destination and uses an entry
only while its generation equals ``nexthop_generation[0]``. :class:`NexthopWatch`
listens to rtnetlink (a netlink socket bound to the link, address, route and
neighbour groups of the relay's namespace) and bumps that generation after every batch
of messages, so the next packet to any destination asks the FIB again. The refresh
bound is therefore the netlink delivery plus one map write (about a millisecond); with
no control plane running, the program's own age bound (``NEXTHOP_MAX_AGE_NS``, 1 s)
still holds.

    watch = NexthopWatch(pin_dir)
    watch.start()          # a thread; watch.bumps counts the generations it wrote
    ...
    watch.stop()
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from pathlib import Path
from typing import Any

from controlplane.datapath import layout
from controlplane.kernel.libbpf import U32, U64, PinnedMap
from icegate.errors import BpfError, LinkError

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
GENERATION_MAP = "nexthop_generation"
STATS_MAP = "nexthop_stats"

# rtnetlink multicast groups (linux/rtnetlink.h, RTMGRP_*): what can change a next hop.
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK
    | RTMGRP_NEIGH
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV6_ROUTE
)


class NexthopCache:
    """The cache's pinned generation and counters (``bpf/nexthop.h``)."""

    def __init__(self, pin_dir: Path) -> None:
        self.generation_map: PinnedMap[Any, Any] = PinnedMap(pin_dir / GENERATION_MAP, U32, U32)
        try:
            self.stats_map: PinnedMap[Any, Any] = PinnedMap(pin_dir / STATS_MAP, U32, U64)
        except BaseException:
            self.generation_map.close()
            raise

    def generation(self) -> int:
        value = self.generation_map.lookup(U32(0))
        return 0 if value is None else int(value.value)

    def bump(self) -> int:
        """Invalidate every cached next hop; returns the new generation. One writer (the
        control plane), so read-increment-write needs no atomics; the datapath only reads."""
        new = (self.generation() + 1) & 0xFFFFFFFF
        self.generation_map.update(U32(0), U32(new))
        return new

    def stats(self) -> dict[str, int]:
        """``{"hit": n, "miss": n, "stale": n}`` summed over CPUs."""
        out = {}
        for stat in layout.NexthopStat:
            values = self.stats_map.lookup_percpu(U32(stat))
            out[stat.name.lower()] = sum(int(v.value) for v in values or [])
        return out

    def close(self) -> None:
        self.generation_map.close()
        self.stats_map.close()


class NexthopWatch:
    """A thread that bumps the cache's generation after every batch of rtnetlink news.

    A plain ``AF_NETLINK`` socket subscribed to the groups above: any message is news, so
    nothing is parsed (pyroute2 0.9's ``IPRoute`` reads through an event loop of the
    thread that made it, which a watcher thread cannot share). The socket belongs to the
    namespace :meth:`start` runs in: the relay's."""

    def __init__(self, pin_dir: Path, poll_s: float = 0.2) -> None:
        self.cache = NexthopCache(pin_dir)
        self.poll_s = poll_s
        self.bumps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, GROUPS))
        except OSError as exc:
            raise LinkError(f"cannot listen to rtnetlink for the next-hop cache: {exc}") from exc
        self._sock = sock
        self.cache.bump()  # whatever changed while nobody listened
        self._thread = threading.Thread(target=self._run, name="nexthop-watch", daemon=True)
        self._thread.start()

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                if not sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: messages were lost, which is news too
                log.warning("rtnetlink overrun; invalidating the next-hop cache")

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], self.poll_s)
            if not ready:
                continue
            self._drain(sock)
            try:
                self.cache.bump()
                self.bumps += 1
            except BpfError:
                log.exception("cannot bump the next-hop generation")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        self.cache.close()
