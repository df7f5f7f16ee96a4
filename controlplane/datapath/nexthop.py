"""Next hop for the Python datapath: what ``bpf_fib_lookup`` answers in the kernel (DATAPATH.md §6).

:class:`~controlplane.datapath.engine.Datapath` asks a ``next_hop(destination addr16, IP
length, ingress) -> Hop`` function. Socket mode needs none (the kernel routes what the
twin sends). The test double that models ``bpf_fib_lookup`` over the static topology of
the shared packet vectors is :class:`labkit.nexthop.StaticNextHop` (tooling, not shipped
in the product's import graph).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple


class Fib(IntEnum):
    """``bpf_fib_lookup`` results, reduced to what §6 distinguishes."""

    OK = 0
    NO_NEIGH = 1
    FRAG_NEEDED = 2
    UNREACHABLE = 3  # every other result: no route, not forwarded (local), blackhole...


class Hop(NamedTuple):
    status: Fib
    egress: str | None = None  # interface name (the vectors' "public" / "private")
    src_mac: bytes | None = None
    dst_mac: bytes | None = None


NextHop = Callable[[bytes, int, str], Hop]
"""``next_hop(destination addr16, IP length, ingress) -> Hop``."""

HOP_OK = Hop(Fib.OK)


def same_interface(dst16: bytes, length: int, ingress: str) -> Hop:
    """Everything goes back out of the interface it came in on, MACs unknown."""
    return Hop(Fib.OK, ingress)
