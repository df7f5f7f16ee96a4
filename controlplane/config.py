"""The relay's configuration: one frozen dataclass, validated at start.

YAML (section ``relay``) + click flags -> :class:`RelayConfig` -> constructors. Limits
become ``-D`` flags for the XDP program (``RelayLimits.cflags``) and are checked after
load; rates become GCRA parameters in the ``config`` map (``RateLimits.gcra``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from icegate import redisurl
from icegate.config import Address, Port
from icegate.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
VIP_PORT = 3478
GENEVE_PORT = 6081


@dataclass(frozen=True)
class VipConfig:
    address: Address
    port: Port = VIP_PORT


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

    def validate(self, path: str) -> None:
        for name in ("new_flows_per_source", "new_flows_global", "slow_path_pps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("source_burst", "global_burst", "slow_path_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")

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
        if self.mode == "xdp" and not self.interfaces:
            raise ConfigError(f"{path}.interfaces", "mode xdp needs at least one interface to attach to")
        for i, dev in enumerate(self.interfaces):
            if not 0 < len(dev) <= 15 or "/" in dev or " " in dev:
                raise ConfigError(f"{path}.interfaces[{i}]", f"not a valid interface name: {dev!r}")
        if self.sync_interval_s <= 0:
            raise ConfigError(f"{path}.sync_interval_s", "must be > 0")
        if self.dead_grace_s < 0:
            raise ConfigError(f"{path}.dead_grace_s", "must be >= 0")

    @property
    def pin_dir(self) -> Path:
        """Where the maps are pinned: ``<bpffs>/icegate/<name>``."""
        return self.bpffs / "icegate" / self.name

    @staticmethod
    def cpus() -> int:
        return os.cpu_count() or 1
