"""The transceiver's configuration: frozen dataclasses, validated at start.

YAML (section ``transceiver``) + click flags -> :class:`TransceiverConfig` -> constructors
(see :mod:`icegate.config`). Nothing else in :mod:`transceiver` reads files or the
environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from icegate import redisurl
from icegate.config import Address, Port
from icegate.errors import ConfigError
from icegate.geneve import GENEVE_PORT
from icegate.token import MAX_CLUSTER, MAX_INDEX, MAX_KEY_ID

VIP_PORT = 3478
SIGNALING_PORT = 8080


@dataclass(frozen=True)
class RelayConfig:
    """A relay VIP this transceiver's sessions are reached on.

    ``priority``: the relay with the highest value is the primary; its candidate gets the
    higher ICE priority in the answer. ``tunnel_port`` is the relay's Geneve port: return
    packets go to the outer source address of that relay's inbound Geneve, this port.
    """

    address: Address
    port: Port = VIP_PORT
    priority: int = 0
    tunnel_port: Port = GENEVE_PORT


@dataclass(frozen=True)
class VadConfig:
    """Energy VAD and endpointing, in dBFS and milliseconds (multiples of the 20 ms frame)."""

    threshold_db: float = -45.0
    start_ms: int = 60
    hangover_ms: int = 100
    silence_ms: int = 500

    def validate(self, path: str) -> None:
        if not -96.0 <= self.threshold_db <= 0.0:
            raise ConfigError(f"{path}.threshold_db", f"expected -96..0 dBFS, got {self.threshold_db}")
        for name in ("start_ms", "hangover_ms", "silence_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 10_000 or value % 20:
                raise ConfigError(f"{path}.{name}", f"expected a multiple of 20 in 0..10000, got {value}")
        if self.start_ms == 0:
            raise ConfigError(f"{path}.start_ms", "must be at least one frame (20)")


@dataclass(frozen=True)
class TransceiverConfig:
    cluster: int
    index: int
    relays: tuple[RelayConfig, ...]
    region: str = "default"
    # Geneve socket: bound here; ``tunnel_advertise`` is what relays send to (defaults to the bind address).
    tunnel_bind: Address = "0.0.0.0"
    tunnel_port: Port = GENEVE_PORT
    tunnel_advertise: Address | None = None
    # Networks (CIDR) the relays send Geneve from; others are dropped ("not_relay"). Empty: any.
    relay_sources: tuple[str, ...] = ()
    signaling_host: str = "127.0.0.1"
    signaling_port: Port = SIGNALING_PORT
    signaling_url: str | None = None  # advertised in the registration; derived when unset
    auth_token: str | None = None
    cors_origins: tuple[str, ...] = ("*",)  # origins whose pages may call signaling; () turns CORS off
    agent_url: str | None = None  # ws://host:port/ of a voice agent; None: no agent
    redis_url: str | None = None
    # Without Redis (tests, single hosts): a fixed route key, 32 hex digits, and its id.
    route_key: str | None = None
    route_key_id: int = 0
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 3.0
    connect_timeout_s: float = 15.0
    drain_deadline_s: float = 300.0
    stats_interval_s: float = 5.0
    max_sessions: int = 1000
    max_offer_bytes: int = 65536
    hold_packets: int = 16  # per session: packets held for a client the mux has not heard from yet
    hold_ms: int = 2000
    # RFC 7675 §5.1: a session whose client answers no consent check for this long ends
    # (outcome consent_expired); 30 s is the RFC's value (docs/CONTINUITY.md).
    consent_window_s: float = 30.0
    vad: VadConfig = field(default_factory=VadConfig)

    def validate(self, path: str) -> None:
        if not 0 <= self.cluster <= MAX_CLUSTER:
            raise ConfigError(f"{path}.cluster", f"expected 0..{MAX_CLUSTER}, got {self.cluster}")
        if not 0 <= self.index <= MAX_INDEX:
            raise ConfigError(f"{path}.index", f"expected 0..{MAX_INDEX}, got {self.index}")
        if not self.relays:
            raise ConfigError(f"{path}.relays", "at least one relay VIP is required")
        vips = [(r.address, r.port) for r in self.relays]
        if len(set(vips)) != len(vips):
            raise ConfigError(f"{path}.relays", "VIPs must be distinct")
        if self.route_key is not None:
            try:
                key = bytes.fromhex(self.route_key)
            except ValueError:
                key = b""
            if len(key) != 16:
                raise ConfigError(f"{path}.route_key", "expected 32 hex digits")
        if not 0 <= self.route_key_id <= MAX_KEY_ID:
            raise ConfigError(f"{path}.route_key_id", f"expected 0..{MAX_KEY_ID}, got {self.route_key_id}")
        if self.redis_url is None and self.route_key is None:
            raise ConfigError(f"{path}.redis_url", "either redis_url or route_key is required")
        if self.redis_url is not None and (problem := redisurl.check(self.redis_url)):
            raise ConfigError(f"{path}.redis_url", problem)
        for i, network in enumerate(self.relay_sources):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{path}.relay_sources[{i}]", f"expected a network such as 10.70.0.0/24, got {network!r}"
                ) from None
        for i, origin in enumerate(self.cors_origins):
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{path}.cors_origins[{i}]", f"expected '*' or http(s)://host[:port], got {origin!r}"
                )
        if self.agent_url is not None and not self.agent_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{path}.agent_url", f"expected a ws:// or wss:// URL, got {self.agent_url}")
        if not 0 < self.heartbeat_interval_s < self.heartbeat_ttl_s:
            raise ConfigError(f"{path}.heartbeat_ttl_s", "must exceed heartbeat_interval_s (> 0)")
        for name in ("connect_timeout_s", "drain_deadline_s", "stats_interval_s", "consent_window_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}", "must be positive")
        for name in ("max_sessions", "max_offer_bytes", "hold_packets", "hold_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}", "must be positive")

    @property
    def route_key_bytes(self) -> bytes | None:
        return None if self.route_key is None else bytes.fromhex(self.route_key)

    @property
    def advertised_tunnel(self) -> str:
        return self.tunnel_advertise or self.tunnel_bind

    @property
    def advertised_signaling(self) -> str:
        return self.signaling_url or f"http://{self.signaling_host}:{self.signaling_port}"

    def relays_by_priority(self) -> tuple[RelayConfig, ...]:
        """Primary first (highest ``priority``), configuration order among equals."""
        return tuple(sorted(self.relays, key=lambda r: -r.priority))
