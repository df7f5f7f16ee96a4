"""The front door's configuration: YAML section ``geo`` + flags -> :class:`GeoConfig`.

The fleet itself is described by the catalog (section ``catalog``, :mod:`icegate.catalog`),
by default in the same file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from icegate.config import Port
from icegate.errors import ConfigError

FRONT_DOOR_PORT = 8443


@dataclass(frozen=True)
class DefaultLocation:
    """Where a client is assumed to be when nothing says otherwise (the decision says ``default``)."""

    lat: float = 50.11  # Frankfurt
    lon: float = 8.68
    country: str | None = None  # selects the rtt_ms row

    def validate(self, path: str) -> None:
        if not -90 <= self.lat <= 90:
            raise ConfigError(f"{path}.lat", f"expected -90..90, got {self.lat}")
        if not -180 <= self.lon <= 180:
            raise ConfigError(f"{path}.lon", f"expected -180..180, got {self.lon}")


@dataclass(frozen=True)
class GeoConfig:
    catalog: Path | None = None  # the catalog file; none: the `catalog` section of the same file
    listen_host: str = "127.0.0.1"  # "*": all addresses, IPv4 and IPv6
    listen_port: Port = FRONT_DOOR_PORT  # the front door's HTTP port
    trusted_proxies: tuple[str, ...] = ()  # networks whose cf-* headers are believed (Cloudflare's)
    mmdb: Path | None = None  # a MaxMind City database (needs icegate[geo]); missing/corrupt fails at start
    default: DefaultLocation = field(default_factory=DefaultLocation)
    tie_ms: float = 5.0  # clusters within this many ms of the nearest share clients by weight
    retry_after_s: int = 5  # Retry-After of the 503 when no cluster is healthy
    health_interval_s: float = 0.5  # re-read every region's registrations (and on tx-events)
    probe_interval_s: float = 0.0  # 0: no periodic probes
    probe_timeout_s: float = 10.0  # set-up time allowed to one probe session
    cors_origins: tuple[str, ...] = ("*",)  # origins whose pages may POST here; () turns CORS off

    def validate(self, path: str) -> None:
        for i, net in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{path}.trusted_proxies[{i}]", f"expected a network, got {net!r}"
                ) from None
        if not 0 <= self.tie_ms <= 1000:
            raise ConfigError(f"{path}.tie_ms", f"expected 0..1000, got {self.tie_ms}")
        if not 1 <= self.retry_after_s <= 3600:
            raise ConfigError(f"{path}.retry_after_s", f"expected 1..3600, got {self.retry_after_s}")
        if not 0.05 <= self.health_interval_s <= 60:
            raise ConfigError(f"{path}.health_interval_s", f"expected 0.05..60, got {self.health_interval_s}")
        if self.probe_interval_s < 0:
            raise ConfigError(f"{path}.probe_interval_s", "must be >= 0")
        if self.probe_timeout_s <= 0:
            raise ConfigError(f"{path}.probe_timeout_s", "must be positive")
        for i, origin in enumerate(self.cors_origins):
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{path}.cors_origins[{i}]", f"expected '*' or http(s)://host[:port], got {origin!r}"
                )

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)
