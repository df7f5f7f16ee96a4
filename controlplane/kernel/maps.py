"""The relay's pinned maps as a :class:`controlplane.datapath.store.MapStore`, over bpf(2).

:class:`KernelStore` opens every map ``bpf/maps.h`` declares under a relay's pin
directory (:mod:`controlplane.kernel.libbpf` does the syscalls) and converts at this boundary
between the ``datapath/layout.py`` structs and the plain values of ``datapath/store.py``. It is what the
slow path and the control plane use in XDP mode, and what the CLI uses while the daemon
is down. A missing pin directory or map is :class:`RelayNotRunning`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from controlplane.config import RelayLimits
from controlplane.datapath import layout
from controlplane.datapath.layout import swap16
from controlplane.datapath.store import Backend, Flow, FlowKeyT, IfaceRoles, RateConfig, TunnelEndpoint, Vip
from controlplane.kernel.libbpf import U32, Addr, PinnedMap, map_specs
from icegate.errors import RelayNotRunning
from icegate.inet import addr16, from_addr16

HASH_MAPS = ("flows", "pending", "backends", "vips", "rate_sources")


def flow_key_struct(key: FlowKeyT) -> layout.FlowKey:
    layout.FLOW_KEY.check(_key_fields(key))
    return layout.FlowKey(layout.Addr16(*key[0]), swap16(key[1]), key[2])


def _key_fields(key: FlowKeyT) -> tuple[Any, ...]:
    """The key's fields as given: the port is checked before the byte swap, which could
    fold a value past 16 bits into range."""
    return key


def _value_fields(f: Flow) -> tuple[int, ...]:
    return (
        f.cluster,
        f.index,
        f.token_tag,
        f.created_ns,
        f.last_seen_ns,
        f.packets_in,
        f.bytes_in,
        f.packets_out,
        f.bytes_out,
    )


def _from_flow_key(key: layout.FlowKey) -> FlowKeyT:
    return bytes(key.client_addr), swap16(key.client_port), int(key.vip_index)


def flow_value_struct(flow: Flow) -> layout.FlowValue:
    layout.FLOW_VALUE.check(_value_fields(flow))
    return layout.FlowValue(
        layout.BackendKey(flow.cluster, flow.index),
        flow.token_tag,
        flow.created_ns,
        flow.last_seen_ns,
        flow.packets_in,
        flow.bytes_in,
        flow.packets_out,
        flow.bytes_out,
    )


def _from_flow_value(v: layout.FlowValue) -> Flow:
    return Flow(
        v.backend.cluster,
        v.backend.index,
        v.token_tag,
        v.created_ns,
        v.last_seen_ns,
        v.packets_in,
        v.bytes_in,
        v.packets_out,
        v.bytes_out,
    )


def pack_flows(items: Sequence[tuple[FlowKeyT, Flow]]) -> tuple[bytearray, bytearray]:
    """Flow keys and values packed back to back, as a batch update takes them.

    ``layout.FLOW_KEY``/``FLOW_VALUE`` pack straight into the buffers: building a ctypes
    struct per entry, as :func:`flow_key_struct` does, cost five times the syscall."""
    pack_key, pack_value = layout.FLOW_KEY.pack_into, layout.FLOW_VALUE.pack_into
    ksize, vsize = layout.FLOW_KEY.size, layout.FLOW_VALUE.size
    keys, values = bytearray(ksize * len(items)), bytearray(vsize * len(items))
    for i, (key, f) in enumerate(items):
        addr, port, vip_index = key
        if len(addr) != 16:  # "16s" would pad or cut it silently
            raise ValueError(f"FlowKey.client_addr must be 16 bytes, got {len(addr)}")
        try:
            if not 0 <= port <= 0xFFFF:  # before swap16, which could fold it into range
                raise struct.error(f"port {port} is not 16 bits")
            pack_key(keys, i * ksize, addr, swap16(port), vip_index)
        except (struct.error, TypeError) as exc:
            layout.FLOW_KEY.check(_key_fields(key))
            raise ValueError(f"flow key {key!r}: {exc}") from exc
        try:
            pack_value(values, i * vsize, *_value_fields(f))
        except struct.error as exc:
            layout.FLOW_VALUE.check(_value_fields(f))
            raise ValueError(f"flow value {f!r}: {exc}") from exc
    return keys, values


def _from_backend(key: layout.BackendKey, v: layout.BackendValue) -> Backend:
    return Backend(key.cluster, key.index, v.host, v.host_port, layout.BackendState(v.state), v.generation)


def _optional_addr(raw: bytes) -> str | None:
    return None if raw == bytes(16) else from_addr16(raw)


class KernelStore:
    """:class:`controlplane.datapath.store.MapStore` over the maps pinned in ``pin_dir``."""

    def __init__(self, pin_dir: Path | str, relay: str | None = None) -> None:
        self.pin_dir = Path(pin_dir)
        name = relay or self.pin_dir.name
        if not self.pin_dir.is_dir():
            raise RelayNotRunning(f"relay {name!r} is not running: nothing pinned at {self.pin_dir}")
        opened: dict[str, PinnedMap[Any, Any]] = {}
        try:
            for map_name, spec in map_specs(RelayLimits()).items():
                if spec.key is None or spec.value is None:
                    continue
                path = self.pin_dir / map_name
                if not path.exists():
                    raise RelayNotRunning(f"relay {name!r}: map {map_name} is not pinned at {path}")
                opened[map_name] = PinnedMap(path, spec.key, spec.value)
        except BaseException:
            for m in opened.values():
                m.close()
            raise
        self.maps = opened

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> KernelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- per packet (the slow path) ----
    def vip_index(self, addr16: bytes, port: int) -> int | None:
        value = self.maps["vips"].lookup(layout.VipKey(layout.Addr16(*addr16), swap16(port), 0))
        return None if value is None else int(value.index)

    def is_vip_address(self, addr16: bytes) -> bool:
        return self.maps["vip_addrs"].lookup(Addr(layout.Addr16(*addr16))) is not None

    def get_flow(self, key: FlowKeyT) -> Flow | None:
        value = self.maps["flows"].lookup(flow_key_struct(key))
        return None if value is None else _from_flow_value(value)

    def get_pending(self, key: FlowKeyT) -> Flow | None:
        value = self.maps["pending"].lookup(flow_key_struct(key))
        return None if value is None else _from_flow_value(value)

    def put_flow(self, key: FlowKeyT, flow: Flow) -> None:
        self.maps["flows"].update(flow_key_struct(key), flow_value_struct(flow))

    def put_pending(self, key: FlowKeyT, flow: Flow) -> None:
        self.maps["pending"].update(flow_key_struct(key), flow_value_struct(flow))

    def delete_flow(self, key: FlowKeyT) -> None:
        self.maps["flows"].delete(flow_key_struct(key))

    def delete_pending(self, key: FlowKeyT) -> None:
        self.maps["pending"].delete(flow_key_struct(key))

    def get_backend(self, cluster: int, index: int) -> Backend | None:
        key = layout.BackendKey(cluster, index)
        value = self.maps["backends"].lookup(key)
        return None if value is None else _from_backend(key, value)

    def route_key(self, key_id: int) -> bytes | None:
        if not 0 <= key_id < layout.MAX_ROUTE_KEYS:
            return None
        value = self.maps["route_keys"].lookup(U32(key_id))
        return value.key if value is not None and value.valid else None

    # ---- management ----
    def vips(self) -> list[Vip]:
        found = [Vip(k.host, k.host_port, v[0].index) for k, v in self.maps["vips"].items()]
        return sorted(found, key=lambda vip: vip.index)

    def set_vips(self, vips: list[Vip]) -> None:
        wanted = {bytes(layout.VipKey.of(v.address, v.port)): v for v in vips}
        for key in list(self.maps["vips"].keys()):
            if bytes(key) not in wanted:
                self.maps["vips"].delete(key)
        for v in vips:
            self.maps["vips"].update(layout.VipKey.of(v.address, v.port), layout.VipValue(v.index, 0, 0))
        # vip_addrs: every VIP's address, any port (§1 r3 drops fragments to them).
        addrs = {addr16(v.address) for v in vips}
        for key in list(self.maps["vip_addrs"].keys()):
            if bytes(key.addr) not in addrs:
                self.maps["vip_addrs"].delete(key)
        for a in addrs:
            self.maps["vip_addrs"].update(Addr(layout.Addr16(*a)), U32(1))

    def backends(self) -> list[Backend]:
        found = [_from_backend(k, v[0]) for k, v in self.maps["backends"].items()]
        return sorted(found, key=lambda b: (b.cluster, b.index))

    def put_backend(self, backend: Backend) -> None:
        value = layout.BackendValue.of(backend.address, backend.port, backend.state, backend.generation)
        self.maps["backends"].update(layout.BackendKey(backend.cluster, backend.index), value)

    def delete_backend(self, cluster: int, index: int) -> None:
        self.maps["backends"].delete(layout.BackendKey(cluster, index))

    def route_keys(self) -> dict[int, bytes]:
        found = {}
        for key_id in range(layout.MAX_ROUTE_KEYS):
            key = self.route_key(key_id)
            if key is not None:
                found[key_id] = key
        return found

    def set_route_keys(self, keys: dict[int, bytes]) -> None:
        for key_id in range(layout.MAX_ROUTE_KEYS):
            key = keys.get(key_id)
            value = layout.RouteKey.of(key) if key is not None else layout.RouteKey()
            self.maps["route_keys"].update(U32(key_id), value)

    def flows(self) -> Iterator[tuple[FlowKeyT, Flow]]:
        for key, values in self.maps["flows"].items():
            yield _from_flow_key(key), _from_flow_value(values[0])

    def pending(self) -> Iterator[tuple[FlowKeyT, Flow]]:
        for key, values in self.maps["pending"].items():
            yield _from_flow_key(key), _from_flow_value(values[0])

    def put_flows(self, items: list[tuple[FlowKeyT, Flow]]) -> int:
        """Many flows in one batch syscall (a cold start restores thousands)."""
        return self.maps["flows"].update_batch_raw(*pack_flows(items))

    def flush_flows(self) -> int:
        return self.maps["flows"].clear() + self.maps["pending"].clear()

    def tunnel(self) -> TunnelEndpoint:
        cfg = self._config()
        return TunnelEndpoint(
            _optional_addr(bytes(cfg.tunnel_addr4)),
            _optional_addr(bytes(cfg.tunnel_addr6)),
            swap16(cfg.tunnel_port),
        )

    def rate_config(self) -> RateConfig:
        cfg = self._config()
        return RateConfig(**{f.name: int(getattr(cfg, f.name)) for f in dataclasses.fields(RateConfig)})

    def set_config(self, tunnel: TunnelEndpoint, rate: RateConfig, roles: IfaceRoles | None = None) -> None:
        """``roles`` None keeps the roles the map holds."""
        self.maps["config"].update(
            U32(0), config_struct(tunnel, rate, self.iface_roles() if roles is None else roles)
        )

    def iface_roles(self) -> IfaceRoles:
        cfg = self._config()
        return IfaceRoles(
            tuple(i for i in cfg.public_ifindex if i), tuple(i for i in cfg.private_ifindex if i)
        )

    def _config(self) -> layout.RelayConfigMap:
        value = self.maps["config"].lookup(U32(0))
        return value if value is not None else layout.RelayConfigMap()

    # ---- counters and housekeeping (not part of MapStore) ----
    def counters(self) -> list[tuple[int, int]]:
        """``(packets, bytes)`` per ``layout.Stat`` index, summed over CPUs (one batch read)."""
        out = [(0, 0)] * layout.STAT_MAX
        for key, values in self.maps["counters"].items(batch=layout.STAT_MAX):
            if key.value < layout.STAT_MAX:
                out[key.value] = (sum(c.packets for c in values), sum(c.bytes for c in values))
        return out

    def nexthop_stats(self) -> list[int]:
        """Next-hop cache lookups per ``layout.NexthopStat`` (hit, miss, stale), summed over CPUs."""
        out = [0] * layout.NEXTHOP_STAT_MAX
        for key, values in self.maps["nexthop_stats"].items(batch=layout.NEXTHOP_STAT_MAX):
            if key.value < layout.NEXTHOP_STAT_MAX:
                out[key.value] = sum(v.value for v in values)
        return out

    def fill(self) -> dict[str, int]:
        """Entries per hash map (``capacity`` has their sizes as pinned)."""
        return {name: self.maps[name].count() for name in HASH_MAPS}

    def capacity(self) -> dict[str, int]:
        """``max_entries`` per hash map, as pinned (not as the configuration says)."""
        return {name: self.maps[name].info.max_entries for name in HASH_MAPS}

    def reset(self, names: Sequence[str]) -> None:
        """Empty the named maps (tests, and ``flows flush`` of the rate buckets)."""
        for name in names:
            self.maps[name].clear()


def config_struct(
    tunnel: TunnelEndpoint, rate: RateConfig, roles: IfaceRoles | None = None
) -> layout.RelayConfigMap:
    """The ``config`` map's value for a tunnel endpoint, rate limits and interface roles."""
    cfg = layout.RelayConfigMap()
    if tunnel.address4:
        cfg.tunnel_addr4 = layout.Addr16(*addr16(tunnel.address4))
    if tunnel.address6:
        cfg.tunnel_addr6 = layout.Addr16(*addr16(tunnel.address6))
    cfg.tunnel_port = swap16(tunnel.port)
    for f in dataclasses.fields(RateConfig):
        setattr(cfg, f.name, getattr(rate, f.name))
    roles = roles or IfaceRoles()
    for field, indexes in (("public_ifindex", roles.public), ("private_ifindex", roles.private)):
        if len(indexes) > layout.MAX_ROLE_IFACES:
            raise ValueError(f"{field}: at most {layout.MAX_ROLE_IFACES} interfaces, got {len(indexes)}")
        getattr(cfg, field)[: len(indexes)] = list(indexes)
    return cfg
