"""Python mirror of ``bpf/shared.h``: the route-key limit, the stats enum and the map structs.

The only Python copy of these layouts. ``tests/bpf/test_layout.py`` compares every
struct (size, field names, offsets) and enum value against what bcc and gcc compiled,
so a change on one side that is not made on the other fails the build. The verdict and
help text of each :class:`Stat` are read from ``STAT_TABLE`` in ``shared.h`` itself
(the table the C program's verdicts come from). Where thousands of entries are written
at once, :func:`packer` derives a ``struct.Struct`` from a ctypes struct here, so that
layout too is written once. The token and STUN limits the code runs with live in
``icegate/token.py`` and ``icegate/stun.py``; the same test compares those with C.
"""

from __future__ import annotations

import ctypes
import re
import struct
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Any

from icegate.bpf import source_dir

from controlplane.config import MAX_ROLE_IFACES
from icegate.inet import addr16, from_addr16

# The one limit of shared.h that is not configurable and that this package uses (the
# configurable ones are RelayLimits in config.py).
MAX_ROUTE_KEYS = 16


class Verdict(IntEnum):
    """``enum verdict``: what happened to a packet; the ``verdict`` label of the packet counters."""

    PASS = 0  # not relay traffic, handed to the kernel untouched
    FORWARD = 1  # forwarded in the datapath
    SLOW = 2  # handed to the control plane's sockets
    DROP = 3


class Stat(IntEnum):
    """``enum stat``: index of the per-CPU counters, in ``STAT_TABLE`` order. Append only."""

    PASS_NOT_IP = 0
    PASS_NOT_UDP = 1
    PASS_NOT_RELAY = 2
    PASS_FRAGMENT = 3
    FWD_FLOW = 4
    FWD_PENDING = 5
    FWD_NEW_FLOW = 6
    FWD_REROUTE = 7
    FWD_RETURN = 8
    FWD_RETURN_PENDING = 9
    FWD_CONFIRM = 10
    SLOW_NO_FLOW = 11
    SLOW_RETURN_NO_FLOW = 12
    SLOW_NO_NEIGH = 13
    DROP_MALFORMED_IP = 14
    DROP_MALFORMED_UDP = 15
    DROP_NOT_WEBRTC = 16
    DROP_STUN_MALFORMED = 17
    DROP_USERNAME_MISSING = 18
    DROP_USERNAME_TOO_LONG = 19
    DROP_USERNAME_NO_COLON = 20
    DROP_TOKEN_LENGTH = 21
    DROP_TOKEN_ALPHABET = 22
    DROP_TOKEN_VERSION = 23
    DROP_TOKEN_KEY = 24
    DROP_TOKEN_MAC = 25
    DROP_BACKEND_UNKNOWN = 26
    DROP_BACKEND_DRAINING = 27
    DROP_BACKEND_DEAD = 28
    DROP_RATE_SOURCE = 29
    DROP_RATE_GLOBAL = 30
    DROP_RATE_SLOW_PATH = 31
    DROP_GENEVE_MALFORMED = 32
    DROP_GENEVE_UNSUPPORTED = 33
    DROP_INNER_MALFORMED = 34
    DROP_RETURN_NOT_VIP = 35
    DROP_RETURN_WRONG_BACKEND = 36
    DROP_FIB = 37
    DROP_FRAG_NEEDED = 38
    DROP_INTERNAL = 39
    DROP_MARTIAN = 40
    DROP_FRAGMENT_TO_VIP = 41
    DROP_RATE_TOKEN = 42
    DROP_PENDING_NOT_STUN = 43
    DROP_PENDING_CAP = 44
    DROP_WRONG_IFACE = 45
    DROP_EGRESS_ROLE = 46
    FWD_MOVE_PENDING = 47
    FWD_MOVE_CONFIRM = 48
    DROP_RATE_SLOW_SOURCE = 49

    @property
    def verdict(self) -> Verdict:
        """The verdict of this stat's row in ``STAT_TABLE`` (shared.h)."""
        return _VERDICTS[self]

    @property
    def help(self) -> str:
        """The help text of this stat's row in ``STAT_TABLE`` (shared.h)."""
        return _HELP[self]

    @property
    def reason(self) -> str:
        """The ``reason`` label: the name without its verdict prefix, lower case."""
        return self.name.split("_", 1)[1].lower()

    @classmethod
    def drop(cls, reason: str) -> Stat:
        """The DROP_* member for a reason such as ``TokenError.reason`` (``"token_mac"``)."""
        return cls[f"DROP_{reason.upper()}"]


STAT_MAX = len(Stat)
_STAT_ROW = re.compile(r'\s*X\((?P<name>\w+),\s*(?P<verdict>\w+),\s*"(?P<help>[^"]*)"\)\s*\\?\s*$')


def stat_table(header: str | None = None) -> list[tuple[str, Verdict, str]]:
    """``STAT_TABLE`` of ``shared.h`` (or of the text ``header``): (name, verdict, help) per
    stat, in value order."""
    text = (source_dir() / "shared.h").read_text() if header is None else header
    lines = text[text.index("#define STAT_TABLE(X)") :].splitlines()[1:]
    rows = []
    for line in lines:
        found = _STAT_ROW.match(line)
        if found is None:
            break
        rows.append((found["name"], Verdict[found["verdict"]], found["help"]))
    return rows


def _load_stat_table() -> tuple[dict[Stat, Verdict], dict[Stat, str]]:
    rows = stat_table()
    names = [name for name, _, _ in rows]
    if names != [s.name for s in Stat]:
        missing = sorted(set(names) ^ {s.name for s in Stat})
        raise ImportError(
            f"Stat does not mirror STAT_TABLE of shared.h (differs in: {', '.join(missing) or 'order'})"
        )
    return {Stat[n]: v for n, v, _ in rows}, {Stat[n]: h for n, _, h in rows}


_VERDICTS, _HELP = _load_stat_table()


class BackendState(IntEnum):
    ACTIVE = 1
    DRAINING = 2
    DEAD = 3


class FlowEventKind(IntEnum):
    CREATED = 1
    REROUTED = 2
    EXPIRED = 3  # written by the control plane's expiry sweep (controlplane/node/expiry.py)


# ---- structs. Field names and order exactly as in shared.h; padding explicit. ----
# Ports are __be16 on the C side: the structs hold network byte order, the helper
# properties convert.

Addr16 = ctypes.c_uint8 * 16


def swap16(value: int) -> int:
    """A port between host order and the ``__be16`` the structs hold (little-endian hosts)."""
    return ((value & 0xFF) << 8) | (value >> 8)


class _AddrPort:
    """``host`` and ``host_port`` of a struct with an ``addr`` and a ``__be16 port``."""

    addr: Any
    port: int

    @property
    def host(self) -> str:
        return from_addr16(bytes(self.addr))

    @property
    def host_port(self) -> int:
        return swap16(self.port)


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class VipKey(_AddrPort, ctypes.Structure):
    _fields_ = [("addr", Addr16), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]

    @classmethod
    def of(cls, host: str, port: int) -> VipKey:
        return cls(Addr16(*addr16(host)), swap16(port), 0)


class VipValue(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint16), ("pad", ctypes.c_uint16), ("flags", ctypes.c_uint32)]


class BackendKey(ctypes.Structure):
    _fields_ = [("cluster", ctypes.c_uint16), ("index", ctypes.c_uint16)]


class BackendValue(_AddrPort, ctypes.Structure):
    _fields_ = [
        ("addr", Addr16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("generation", ctypes.c_uint32),
    ]

    @classmethod
    def of(cls, host: str, port: int, state: BackendState, generation: int = 0) -> BackendValue:
        family = 6 if ":" in host else 4
        return cls(Addr16(*addr16(host)), swap16(port), family, int(state), generation)


class FlowKey(ctypes.Structure):
    _fields_ = [("client_addr", Addr16), ("client_port", ctypes.c_uint16), ("vip_index", ctypes.c_uint16)]

    @classmethod
    def of(cls, host: str, port: int, vip_index: int) -> FlowKey:
        return cls(Addr16(*addr16(host)), swap16(port), vip_index)

    @property
    def client_host(self) -> str:
        return from_addr16(bytes(self.client_addr))

    @property
    def client_host_port(self) -> int:
        return swap16(self.client_port)


class FlowValue(ctypes.Structure):
    _fields_ = [
        ("backend", BackendKey),
        ("token_tag", ctypes.c_uint32),
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("packets_in", ctypes.c_uint64),
        ("bytes_in", ctypes.c_uint64),
        ("packets_out", ctypes.c_uint64),
        ("bytes_out", ctypes.c_uint64),
    ]


class RouteKey(ctypes.Structure):
    _fields_ = [
        ("k0", ctypes.c_uint64),
        ("k1", ctypes.c_uint64),
        ("valid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]

    @classmethod
    def of(cls, key: bytes) -> RouteKey:
        if len(key) != 16:
            raise ValueError(f"route key must be 16 bytes, got {len(key)}")
        return cls(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), 1, 0)

    @property
    def key(self) -> bytes:
        return self.k0.to_bytes(8, "little") + self.k1.to_bytes(8, "little")


class RelayConfigMap(ctypes.Structure):
    """``struct relay_config``."""

    _fields_ = [
        ("tunnel_addr4", Addr16),
        ("tunnel_addr6", Addr16),
        ("tunnel_port", ctypes.c_uint16),
        ("pad0", ctypes.c_uint16),
        ("flags", ctypes.c_uint32),
        ("source_interval_ns", ctypes.c_uint64),
        ("source_tolerance_ns", ctypes.c_uint64),
        ("global_interval_ns", ctypes.c_uint64),
        ("global_tolerance_ns", ctypes.c_uint64),
        ("slow_interval_ns", ctypes.c_uint64),
        ("slow_tolerance_ns", ctypes.c_uint64),
        ("tag_interval_ns", ctypes.c_uint64),
        ("tag_tolerance_ns", ctypes.c_uint64),
        ("slow_source_interval_ns", ctypes.c_uint64),
        ("slow_source_tolerance_ns", ctypes.c_uint64),
        ("pending_timeout_ns", ctypes.c_uint64),
        ("pending_max_packets", ctypes.c_uint32),
        ("public_ifindex", ctypes.c_uint32 * MAX_ROLE_IFACES),
        ("private_ifindex", ctypes.c_uint32 * MAX_ROLE_IFACES),
        ("pad1", ctypes.c_uint32),
    ]


class RateTagKey(ctypes.Structure):
    """``struct rate_tag_key``: the per-token-tag new-flow bucket's key."""

    _fields_ = [("backend", BackendKey), ("tag", ctypes.c_uint32)]


class FlowEventRecord(ctypes.Structure):
    """``struct flow_event`` as the ring buffer carries it; decoded by :meth:`store.FlowEvent.from_record`."""

    _fields_ = [
        ("key", FlowKey),
        ("backend", BackendKey),
        ("kind", ctypes.c_uint32),
        ("token_tag", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
    ]


class NexthopKey(ctypes.Structure):
    """``struct nexthop_key`` (bpf/nexthop.h's cache)."""

    _fields_ = [("addr", Addr16), ("ifindex", ctypes.c_uint32)]


class NexthopValue(ctypes.Structure):
    """``struct nexthop_value``."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
        ("smac", ctypes.c_uint8 * 6),
        ("dmac", ctypes.c_uint8 * 6),
        ("max_len", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("updated_ns", ctypes.c_uint64),
    ]


class NexthopStat(IntEnum):
    """``enum nexthop_stat``: the index of the per-CPU ``nexthop_stats`` array."""

    HIT = 0
    MISS = 1
    STALE = 2


NEXTHOP_STAT_MAX = len(NexthopStat)

# Every mirrored struct, by its C name: what test_layout.py walks.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "counter": Counter,
    "vip_key": VipKey,
    "vip_value": VipValue,
    "backend_key": BackendKey,
    "backend_value": BackendValue,
    "flow_key": FlowKey,
    "flow_value": FlowValue,
    "route_key": RouteKey,
    "relay_config": RelayConfigMap,
    "flow_event": FlowEventRecord,
    "rate_tag_key": RateTagKey,
    "nexthop_key": NexthopKey,
    "nexthop_value": NexthopValue,
}

# Python 3.11 ctypes gives no packed=...; every struct above is naturally aligned, and
# these sizes are what shared.h documents.
EXPECTED_SIZES = {
    "counter": 16,
    "vip_key": 20,
    "vip_value": 8,
    "backend_key": 4,
    "backend_value": 24,
    "flow_key": 20,
    "flow_value": 56,
    "route_key": 24,
    "relay_config": 168,
    "flow_event": 40,
    "rate_tag_key": 8,
    "nexthop_key": 20,
    "nexthop_value": 32,
}


# ---- many entries at once ----
_FORMAT_CODES: dict[Any, str] = {
    ctypes.c_uint8: "B",
    ctypes.c_uint16: "H",
    ctypes.c_uint32: "I",
    ctypes.c_uint64: "Q",
}


def _format(ctype: Any) -> str:
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return "".join(_format(field_type) for _, field_type, *_ in ctype._fields_)
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        element: Any = ctype._type_
        length = ctypes.sizeof(ctype) // ctypes.sizeof(element)
        return f"{length}s" if element is ctypes.c_uint8 else _format(element) * length
    return _FORMAT_CODES[ctype]


def _fields(ctype: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field name, struct code) in packing order, as :func:`_format` flattens them."""
    for name, field_type, *_ in ctype._fields_:
        dotted = f"{prefix}{name}"
        if isinstance(field_type, type) and issubclass(field_type, ctypes.Structure):
            yield from _fields(field_type, f"{dotted}.")
        else:
            yield dotted, _format(field_type)


class Packer:
    """A ``struct.Struct`` with the bytes of a ctypes struct (nested structs flattened,
    byte arrays as ``Ns``, native byte order, no alignment) that names the field a value
    does not fit. Packing entries into one buffer with it is several times faster than
    building ctypes objects (``put_flows``). Equal sizes prove there is no implicit
    padding, so every offset matches too.

    ``pack_into`` is the struct's own (no wrapper on the hot path); a caller that gets
    ``struct.error`` calls :meth:`check` to turn it into a ``ValueError`` naming the field.
    :meth:`check` also guards the ctypes constructors, which would truncate silently."""

    def __init__(self, ctype: type[ctypes.Structure]) -> None:
        self.name = ctype.__name__
        self.struct = struct.Struct("=" + _format(ctype))
        if self.struct.size != ctypes.sizeof(ctype):
            raise TypeError(
                f"{self.name}: packed format {self.struct.format} is {self.struct.size} bytes, "
                f"the struct {ctypes.sizeof(ctype)} (implicit padding?)"
            )
        self.fields = list(_fields(ctype))
        self.format, self.size, self.pack_into = self.struct.format, self.struct.size, self.struct.pack_into

    def check(self, values: Sequence[Any]) -> None:
        """Raise ``ValueError`` naming the first field whose value does not fit."""
        if len(values) != len(self.fields):
            raise ValueError(f"{self.name}: {len(values)} values for {len(self.fields)} fields")
        for (name, code), value in zip(self.fields, values, strict=True):
            if code.endswith("s"):
                size = int(code[:-1])
                if not isinstance(value, bytes | bytearray) or len(value) != size:
                    raise ValueError(f"{self.name}.{name} must be {size} bytes, got {value!r}")
                continue
            bits = 8 * struct.calcsize(code)
            if not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise ValueError(f"{self.name}.{name} = {value!r} is outside 0..{(1 << bits) - 1} (u{bits})")


def packer(ctype: type[ctypes.Structure]) -> Packer:
    return Packer(ctype)


FLOW_KEY = packer(FlowKey)  # "=16sHH": client_addr, client_port (__be16), vip_index
FLOW_VALUE = packer(FlowValue)  # "=HHIQQQQQQ": backend, token_tag, times, counters
