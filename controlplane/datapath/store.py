"""The relay's state behind one small interface: the BPF maps, or dictionaries.

:class:`MapStore` is what the datapath logic (``engine.py``), Redis sync and the CLI
use. Two implementations:

- :class:`MemoryStore` (here): dictionaries with LRU bounds, for the userspace twin and
  unit tests;
- ``KernelStore`` (``controlplane/kernel/maps.py``): the pinned BPF maps through bpf(2) syscalls, for the
  slow path and the control plane in XDP mode, and for the CLI while the daemon is down.

Values are plain Python (dataclasses, tuples, ``bytes``), not ctypes structs; each
implementation converts at its own boundary (``layout.py`` has the kernel structs).
A flow key is ``(client addr16, client port, vip index)``, ports in host order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from controlplane.datapath import layout
from controlplane.datapath.layout import BackendState, FlowEventKind
from icegate.inet import addr16

FlowKeyT = tuple[bytes, int, int]


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """A flow event (DATAPATH.md §8), the one type from the datapath to the flow cache:
    the twin's datapath emits it, the XDP program's ring-buffer records are decoded into
    it (:meth:`from_record`)."""

    kind: FlowEventKind
    key: FlowKeyT
    cluster: int
    index: int
    token_tag: int
    ts_ns: int  # CLOCK_MONOTONIC

    @classmethod
    def from_record(cls, record: layout.FlowEventRecord) -> FlowEvent:
        key = record.key
        return cls(
            FlowEventKind(record.kind),
            (bytes(key.client_addr), key.client_host_port, int(key.vip_index)),
            record.backend.cluster,
            record.backend.index,
            record.token_tag,
            record.ts_ns,
        )


@dataclass(slots=True)
class Flow:
    cluster: int
    index: int
    token_tag: int
    created_ns: int
    last_seen_ns: int
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0


@dataclass(frozen=True, slots=True)
class Backend:
    cluster: int
    index: int
    address: str
    port: int
    state: BackendState
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Vip:
    address: str
    port: int
    index: int


@dataclass(frozen=True, slots=True)
class RateConfig:
    """GCRA parameters (``struct relay_config``); interval 0 disables a limit."""

    source_interval_ns: int = 0
    source_tolerance_ns: int = 0
    global_interval_ns: int = 0
    global_tolerance_ns: int = 0
    slow_interval_ns: int = 0
    slow_tolerance_ns: int = 0
    # docs/SECURITY.md: per token tag (§2 r9) and per slow-path source (§5) buckets,
    # the pending flows' timeout (§2 r5) and packet cap (§2.1 r0); 0 disables each.
    tag_interval_ns: int = 0
    tag_tolerance_ns: int = 0
    slow_source_interval_ns: int = 0
    slow_source_tolerance_ns: int = 0
    pending_timeout_ns: int = 0
    pending_max_packets: int = 0


@dataclass(frozen=True, slots=True)
class IfaceRoles:
    """Interface roles (§1 r8) as ifindexes: clients arrive on ``public``, Geneve on
    ``private``. Both empty: no roles enforced."""

    public: tuple[int, ...] = ()
    private: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TunnelEndpoint:
    address4: str | None
    address6: str | None
    port: int


class MapStore(Protocol):
    # ---- per packet (datapath) ----
    def vip_index(self, addr16: bytes, port: int) -> int | None: ...
    def is_vip_address(self, addr16: bytes) -> bool: ...
    def get_flow(self, key: FlowKeyT) -> Flow | None: ...
    def get_pending(self, key: FlowKeyT) -> Flow | None: ...
    def put_flow(self, key: FlowKeyT, flow: Flow) -> None: ...
    def put_pending(self, key: FlowKeyT, flow: Flow) -> None: ...
    def delete_flow(self, key: FlowKeyT) -> None: ...
    def delete_pending(self, key: FlowKeyT) -> None: ...
    def get_backend(self, cluster: int, index: int) -> Backend | None: ...
    def route_key(self, key_id: int) -> bytes | None: ...

    # ---- management (sync, CLI) ----
    def vips(self) -> list[Vip]: ...
    def set_vips(self, vips: list[Vip]) -> None: ...
    def backends(self) -> list[Backend]: ...
    def put_backend(self, backend: Backend) -> None: ...
    def delete_backend(self, cluster: int, index: int) -> None: ...
    def route_keys(self) -> dict[int, bytes]: ...
    def set_route_keys(self, keys: dict[int, bytes]) -> None: ...
    def flows(self) -> Iterator[tuple[FlowKeyT, Flow]]: ...
    def pending(self) -> Iterator[tuple[FlowKeyT, Flow]]: ...
    def put_flows(self, items: list[tuple[FlowKeyT, Flow]]) -> int: ...
    def flush_flows(self) -> int: ...
    def tunnel(self) -> TunnelEndpoint: ...
    def rate_config(self) -> RateConfig: ...
    def set_config(
        self, tunnel: TunnelEndpoint, rate: RateConfig, roles: IfaceRoles | None = None
    ) -> None: ...
    def iface_roles(self) -> IfaceRoles: ...


class _Lru(OrderedDict[FlowKeyT, Flow]):
    """A dict that forgets its least recently used entry past ``capacity`` (like BPF LRU hash)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def lookup(self, key: FlowKeyT) -> Flow | None:
        flow = self.get(key)
        if flow is not None:
            self.move_to_end(key)
        return flow

    def store(self, key: FlowKeyT, flow: Flow) -> None:
        self[key] = flow
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class MemoryStore:
    """:class:`MapStore` over dictionaries, bounded like the kernel maps."""

    def __init__(self, max_flows: int = 262144, max_pending: int = 16384) -> None:
        self._vips: dict[tuple[bytes, int], Vip] = {}
        self._flows = _Lru(max_flows)
        self._pending = _Lru(max_pending)
        self._backends: dict[tuple[int, int], Backend] = {}
        self._keys: dict[int, bytes] = {}
        self._tunnel = TunnelEndpoint(None, None, 6081)
        self._rate = RateConfig()
        self._roles = IfaceRoles()

    def vip_index(self, addr16: bytes, port: int) -> int | None:
        vip = self._vips.get((addr16, port))
        return None if vip is None else vip.index

    def is_vip_address(self, addr16: bytes) -> bool:
        return any(a == addr16 for a, _ in self._vips)

    def get_flow(self, key: FlowKeyT) -> Flow | None:
        return self._flows.lookup(key)

    def get_pending(self, key: FlowKeyT) -> Flow | None:
        return self._pending.lookup(key)

    def put_flow(self, key: FlowKeyT, flow: Flow) -> None:
        self._flows.store(key, flow)

    def put_pending(self, key: FlowKeyT, flow: Flow) -> None:
        self._pending.store(key, flow)

    def delete_flow(self, key: FlowKeyT) -> None:
        self._flows.pop(key, None)

    def delete_pending(self, key: FlowKeyT) -> None:
        self._pending.pop(key, None)

    def get_backend(self, cluster: int, index: int) -> Backend | None:
        return self._backends.get((cluster, index))

    def route_key(self, key_id: int) -> bytes | None:
        return self._keys.get(key_id)

    def vips(self) -> list[Vip]:
        return sorted(self._vips.values(), key=lambda v: v.index)

    def set_vips(self, vips: list[Vip]) -> None:
        self._vips = {(addr16(v.address), v.port): v for v in vips}

    def backends(self) -> list[Backend]:
        return [self._backends[k] for k in sorted(self._backends)]

    def put_backend(self, backend: Backend) -> None:
        self._backends[(backend.cluster, backend.index)] = backend

    def delete_backend(self, cluster: int, index: int) -> None:
        self._backends.pop((cluster, index), None)

    def route_keys(self) -> dict[int, bytes]:
        return dict(self._keys)

    def set_route_keys(self, keys: dict[int, bytes]) -> None:
        self._keys = dict(keys)

    def flows(self) -> Iterator[tuple[FlowKeyT, Flow]]:
        return iter(list(self._flows.items()))

    def pending(self) -> Iterator[tuple[FlowKeyT, Flow]]:
        return iter(list(self._pending.items()))

    def put_flows(self, items: list[tuple[FlowKeyT, Flow]]) -> int:
        for key, flow in items:
            self._flows.store(key, flow)
        return len(items)

    def flush_flows(self) -> int:
        count = len(self._flows) + len(self._pending)
        self._flows.clear()
        self._pending.clear()
        return count

    def tunnel(self) -> TunnelEndpoint:
        return self._tunnel

    def rate_config(self) -> RateConfig:
        return self._rate

    def set_config(self, tunnel: TunnelEndpoint, rate: RateConfig, roles: IfaceRoles | None = None) -> None:
        """``roles`` None keeps the current roles."""
        self._tunnel = tunnel
        self._rate = rate
        if roles is not None:
            self._roles = roles

    def iface_roles(self) -> IfaceRoles:
        return self._roles
