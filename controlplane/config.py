"""The relay's configuration: one frozen dataclass, validated at start.

YAML (section ``relay``) + click flags -> :class:`RelayConfig` -> constructors. Limits
become ``-D`` flags for the XDP program (``RelayLimits.cflags``) and are checked after
load; rates become GCRA parameters in the ``config`` map (``RateLimits.gcra``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from icegate import redisurl
from icegate.config import Address, Port
from icegate.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
MAX_ROLE_IFACES = 4  # shared.h MAX_ROLE_IFACES
VIP_PORT = 3478
GENEVE_PORT = 6081


@dataclass(frozen=True)
class VipConfig:
    address: Address
    port: Port = VIP_PORT


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An address in one spelling for comparisons (the string itself when it is not one)."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return address


@dataclass(frozen=True)
class TunnelConfig:
    """This relay's Geneve endpoint on the private side."""

    address4: Address | None = None
    address6: Address | None = None
    port: Port = GENEVE_PORT

    def validate(self, path: str) -> None:
        if self.address4 is None and self.address6 is None:
            raise ConfigError(f"{path}.address4", "a tunnel address (address4 or address6) is required")
        if self.address4 is not None and ":" in self.address4:
            raise ConfigError(f"{path}.address4", f"expected an IPv4 address, got {self.address4}")
        if self.address6 is not None and ":" not in self.address6:
            raise ConfigError(f"{path}.address6", f"expected an IPv6 address, got {self.address6}")


@dataclass(frozen=True)
class RelayLimits:
    """Map sizes, compiled into the program (``-D``)."""

    max_flows: int = 262144
    max_pending: int = 16384
    max_backends: int = 4096
    max_vips: int = 64
    max_rate_sources: int = 65536
    events_pages: int = 64
    max_nexthops: int = 65536  # next-hop cache (bpf/nexthop.h): transceivers and active clients

    _BOUNDS = {
        "max_flows": (16, 1 << 24),
        "max_pending": (16, 1 << 22),
        "max_backends": (1, 65536),
        "max_vips": (1, 4096),
        "max_rate_sources": (16, 1 << 22),
        "events_pages": (1, 4096),
        "max_nexthops": (16, 1 << 22),
    }

    def validate(self, path: str) -> None:
        for name, (low, high) in self._BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{path}.{name}", f"must be {low}..{high}, got {value}")
        if self.events_pages & (self.events_pages - 1):
            raise ConfigError(f"{path}.events_pages", f"must be a power of two, got {self.events_pages}")

    def cflags(self) -> list[str]:
        return [f"-D{name.upper()}={getattr(self, name)}" for name in self._BOUNDS]


@dataclass(frozen=True)
class RateLimits:
    """New-flow and slow-path budgets. 0 disables a limit."""

    new_flows_per_source: float = 50.0  # per second, per client address
    source_burst: int = 100
    new_flows_global: float = 20000.0  # per second, whole relay
    global_burst: int = 20000
    slow_path_pps: float = 5000.0  # packets per second handed to userspace
    slow_path_burst: int = 5000
    # docs/SECURITY.md. Per token tag: one session's ufrag opens a flow per client
    # candidate address (a few), not thousands from spoofed sources.
    new_flows_per_token: float = 0.5  # per second, per token tag (one session's ufrag), any source
    token_burst: int = 16
    slow_path_per_source_pps: float = 20.0  # per client address (IPv6: per /64)
    slow_path_source_burst: int = 50
    pending_timeout_s: float = 30.0  # a pending flow the transceiver never confirmed is gone
    pending_max_packets: int = 64  # per direction, before the transceiver confirms

    def validate(self, path: str) -> None:
        for name in (
            "new_flows_per_source",
            "new_flows_global",
            "slow_path_pps",
            "new_flows_per_token",
            "slow_path_per_source_pps",
            "pending_timeout_s",
            "pending_max_packets",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in (
            "source_burst",
            "global_burst",
            "slow_path_burst",
            "token_burst",
            "slow_path_source_burst",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.pending_max_packets >= 1 << 32:
            raise ConfigError(
                f"{path}.pending_max_packets", f"must be < 2^32, got {self.pending_max_packets}"
            )

    @staticmethod
    def gcra(rate: float, burst: int, cpus: int = 1) -> tuple[int, int]:
        """(interval_ns, tolerance_ns) admitting ``rate``/s with ``burst``, split over ``cpus`` buckets."""
        if rate <= 0:
            return 0, 0
        interval = int(1e9 * cpus / rate)
        per_cpu_burst = max(1, burst // cpus)
        return interval, interval * (per_cpu_burst - 1)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    region: str = "default"
    timeout_s: float = 0.5  # per command; a dead Redis must not stall the slow path
    retry_min_s: float = 0.1
    retry_max_s: float = 5.0

    def validate(self, path: str) -> None:
        problem = redisurl.check(self.url)
        if problem:
            raise ConfigError(f"{path}.url", problem)
        if not self.region or ":" in self.region:
            raise ConfigError(f"{path}.region", f"must be non-empty without ':', got {self.region!r}")
        if not 0 < self.retry_min_s <= self.retry_max_s:
            raise ConfigError(f"{path}.retry_min_s", "must be > 0 and <= retry_max_s")


@dataclass(frozen=True)
class FlowCacheConfig:
    ttl_s: int = 300  # Redis TTL of a cached flow, refreshed while the flow carries packets
    refresh_s: float = 30.0  # how often live flows' TTLs are refreshed
    idle_s: float = 120.0  # a flow idle this long is no longer refreshed (and may expire)

    def validate(self, path: str) -> None:
        if self.refresh_s <= 0 or self.refresh_s >= self.ttl_s:
            raise ConfigError(
                f"{path}.refresh_s", f"must be > 0 and < ttl_s ({self.ttl_s}), got {self.refresh_s}"
            )


@dataclass(frozen=True)
class ExpiryConfig:
    """The relay's flow expiry (controlplane/node/expiry.py, docs/CONTINUITY.md)."""

    idle_s: float = 30.0  # a confirmed flow idle this long is removed (RFC 7675 §5.1's consent window)
    pending_s: float = 3.0  # a pending flow (a check no transceiver answered) is removed much sooner
    interval_s: float = 10.0  # how often the maps are swept (a walk costs ~7.5 µs a flow: CONTINUITY.md §4)

    def validate(self, path: str) -> None:
        for name in ("idle_s", "pending_s", "interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}", f"must be > 0, got {getattr(self, name)}")
        if self.pending_s > self.idle_s:
            raise ConfigError(f"{path}.pending_s", f"must not exceed idle_s ({self.idle_s})")


@dataclass(frozen=True)
class HttpConfig:
    address: Address = "127.0.0.1"
    port: Port = 9610


@dataclass(frozen=True)
class RelayConfig:
    name: str
    vips: tuple[VipConfig, ...]
    tunnel: TunnelConfig
    interfaces: tuple[str, ...] = ()  # devices the XDP program attaches to
    mode: Literal["auto", "xdp", "userspace"] = "auto"
    xdp_mode: Literal["auto", "native", "generic"] = "auto"
    bpffs: Path = Path("/sys/fs/bpf")
    clusters: tuple[int, ...] = ()  # clusters whose transceivers this relay serves; empty = all in region
    limits: RelayLimits = field(default_factory=RelayLimits)
    rate: RateLimits = field(default_factory=RateLimits)
    redis: RedisConfig = field(default_factory=RedisConfig)
    flow_cache: FlowCacheConfig = field(default_factory=FlowCacheConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    sync_interval_s: float = 0.5  # full reconciliation of backends and route keys
    dead_grace_s: float = 600.0  # a dead backend (heartbeat expired) stays in the map this long
    expiry: ExpiryConfig = field(default_factory=ExpiryConfig)
    # docs/SECURITY.md, DATAPATH.md §1 r8: clients only on public interfaces, Geneve only on
    # private ones (both empty: no roles). Each a subset of `interfaces`, at most 4.
    public_interfaces: tuple[str, ...] = ()  # clients only here (DATAPATH.md §1 r8); subset of interfaces
    private_interfaces: tuple[str, ...] = ()  # Geneve only here; set both or neither
    # Transceiver (backend) addresses Redis may register: anything else is refused at sync,
    # so a poisoned registration cannot send flows out of the public side. Empty: any.
    backend_prefixes: tuple[str, ...] = ()  # CIDRs a registration's tunnel address must be in; empty: any

    def validate(self, path: str) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"{path}.name", f"must match {NAME_RE.pattern}, got {self.name!r}")
        if not self.vips:
            raise ConfigError(f"{path}.vips", "at least one VIP is required")
        if len(self.vips) > self.limits.max_vips:
            raise ConfigError(
                f"{path}.vips", f"{len(self.vips)} VIPs exceed limits.max_vips={self.limits.max_vips}"
            )
        seen: set[tuple[str, int]] = set()
        for i, vip in enumerate(self.vips):
            if (vip.address, vip.port) in seen:
                raise ConfigError(f"{path}.vips[{i}]", f"duplicate VIP {vip.address}:{vip.port}")
            seen.add((vip.address, vip.port))
        # The program takes the tunnel endpoint for Geneve without asking `vips` (DATAPATH.md
        # §1 r6): a VIP there would never see its clients.
        tunnel_ends = {(_ip(a), self.tunnel.port) for a in (self.tunnel.address4, self.tunnel.address6) if a}
        for i, vip in enumerate(self.vips):
            if (_ip(vip.address), vip.port) in tunnel_ends:
                raise ConfigError(f"{path}.vips[{i}]", f"{vip.address}:{vip.port} is the tunnel endpoint")
        if self.mode == "xdp" and not self.interfaces:
            raise ConfigError(f"{path}.interfaces", "mode xdp needs at least one interface to attach to")
        for i, dev in enumerate(self.interfaces):
            if not 0 < len(dev) <= 15 or "/" in dev or " " in dev:
                raise ConfigError(f"{path}.interfaces[{i}]", f"not a valid interface name: {dev!r}")
        if self.sync_interval_s <= 0:
            raise ConfigError(f"{path}.sync_interval_s", "must be > 0")
        if self.dead_grace_s < 0:
            raise ConfigError(f"{path}.dead_grace_s", "must be >= 0")
        for role in ("public_interfaces", "private_interfaces"):
            devs = getattr(self, role)
            if len(devs) > MAX_ROLE_IFACES:
                raise ConfigError(f"{path}.{role}", f"at most {MAX_ROLE_IFACES} interfaces, got {len(devs)}")
            for i, dev in enumerate(devs):
                if dev not in self.interfaces:
                    raise ConfigError(f"{path}.{role}[{i}]", f"{dev!r} is not one of interfaces")
        if bool(self.public_interfaces) != bool(self.private_interfaces):
            raise ConfigError(
                f"{path}.public_interfaces", "set both public_interfaces and private_interfaces, or neither"
            )
        for i, prefix in enumerate(self.backend_prefixes):
            try:
                ipaddress.ip_network(prefix)
            except ValueError as exc:
                raise ConfigError(f"{path}.backend_prefixes[{i}]", str(exc)) from None

    @property
    def pin_dir(self) -> Path:
        """Where the maps are pinned: ``<bpffs>/icegate/<name>``."""
        return self.bpffs / "icegate" / self.name

    @staticmethod
    def cpus() -> int:
        return os.cpu_count() or 1
