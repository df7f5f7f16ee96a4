"""The transceiver's configuration: frozen dataclasses, validated at start.

YAML (section ``transceiver``) + click flags -> :class:`TransceiverConfig` -> constructors
(see :mod:`icegate.config`). Nothing else in :mod:`transceiver` reads files or the
environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path

from icegate import redisurl
from icegate.catalog import load_catalog
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


VAD_DETECTORS = ("energy", "webrtc", "silero")


@dataclass(frozen=True)
class VadConfig:
    """VAD and endpointing, in dBFS and milliseconds (multiples of the 20 ms frame).

    ``detector`` decides whether one frame is voice: ``energy`` (level >= ``threshold_db``),
    ``webrtc`` (the WebRTC VAD at ``webrtc_mode`` 0-3, more aggressive = fewer false
    positives) or ``silero`` (the Silero model's speech probability >= ``silero_threshold``).
    A session may override any field from its offer (docs/AGENT_PROTOCOL.md §3)."""

    threshold_db: float = -45.0  # energy detector: a frame at or above this level is voice
    start_ms: int = 60  # voice this long starts (or resumes) a turn
    hangover_ms: int = 100  # unvoiced this long: speech_stopped (the turn may resume)
    silence_ms: int = 500  # unvoiced this much longer: end_of_turn
    detector: str = "energy"  # energy, webrtc or silero
    webrtc_mode: int = 2  # webrtc detector: aggressiveness 0-3
    silero_threshold: float = 0.5  # silero detector: speech probability that counts as voice

    def validate(self, path: str) -> None:
        if self.detector not in VAD_DETECTORS:
            raise ConfigError(
                f"{path}.detector", f"expected one of {', '.join(VAD_DETECTORS)}, got {self.detector!r}"
            )
        if self.webrtc_mode not in (0, 1, 2, 3):
            raise ConfigError(f"{path}.webrtc_mode", f"expected 0..3, got {self.webrtc_mode}")
        if not 0.0 < self.silero_threshold < 1.0:
            raise ConfigError(f"{path}.silero_threshold", f"expected 0..1, got {self.silero_threshold}")
        if not -96.0 <= self.threshold_db <= 0.0:
            raise ConfigError(f"{path}.threshold_db", f"expected -96..0 dBFS, got {self.threshold_db}")
        for name in ("start_ms", "hangover_ms", "silence_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 10_000 or value % 20:
                raise ConfigError(f"{path}.{name}", f"expected a multiple of 20 in 0..10000, got {value}")
        if self.start_ms == 0:
            raise ConfigError(f"{path}.start_ms", "must be at least one frame (20)")


AGENT_FAILURE_ACTIONS = ("hangup", "continue")


@dataclass(frozen=True)
class AgentLinkConfig:
    """The link to the voice agent (docs/AGENT_PROTOCOL.md §5, §7).

    ``heartbeat_s``: WebSocket pings at this interval; an agent that answers none within
    half of it is dead (a frozen process, a lost host). ``on_failure``: when the agent is
    unreachable or dies, ``hangup`` plays ``fallback_ms`` of the fallback tone and ends the
    session; ``continue`` keeps it open without an agent. ``metadata_headers``: request
    headers of the offer passed to the agent in ``hello.metadata`` (only these)."""

    handshake_timeout_s: float = 2.0  # connect + hello -> accept, or the agent is unreachable
    heartbeat_s: float = 0.4  # ping after this long without a message; no answer in half: dead
    on_failure: str = "hangup"  # hangup (after the fallback tone) or continue without an agent
    fallback_ms: int = 400  # the tone the caller hears before a hang-up on agent failure
    max_queued_ms: int = 4000  # agent audio held for playout; more is dropped and counted
    max_input_queued_ms: int = 1000  # caller audio not yet taken by the agent; older is dropped
    metadata_headers: tuple[str, ...] = ()  # request headers passed to the agent in hello.metadata
    # The caller's audio held before decoding (aiortc: 4 packets, plus one it always waits
    # for); every packet held is 20 ms more before an end of turn or a barge-in is seen, and
    # is how long a reordered packet is waited for. 0: each packet decoded on arrival. 0-8.
    receive_prefetch_packets: int = 0  # caller audio held before decoding (aiortc: 4 + 1)

    def validate(self, path: str) -> None:
        if not 0 <= self.receive_prefetch_packets <= 8:
            raise ConfigError(
                f"{path}.receive_prefetch_packets", f"expected 0..8, got {self.receive_prefetch_packets}"
            )
        if self.on_failure not in AGENT_FAILURE_ACTIONS:
            raise ConfigError(f"{path}.on_failure", f"expected hangup or continue, got {self.on_failure!r}")
        for name in ("handshake_timeout_s", "heartbeat_s"):
            if not 0 < getattr(self, name) <= 60:
                raise ConfigError(f"{path}.{name}", f"expected 0..60 s, got {getattr(self, name)}")
        for name in ("fallback_ms", "max_queued_ms", "max_input_queued_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 600_000 or value % 20:
                raise ConfigError(f"{path}.{name}", f"expected a multiple of 20 in 0..600000, got {value}")
        if self.max_queued_ms < 200 or self.max_input_queued_ms < 200:
            raise ConfigError(f"{path}.max_queued_ms", "queues must hold at least 200 ms")


@dataclass(frozen=True)
class TransceiverConfig:
    cluster: int
    index: int
    relays: tuple[RelayConfig, ...] = ()  # or from `catalog`
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
    # docs/SECURITY.md: the session list and /metrics on their own listener (an operator's
    # network, not the clients'); None keeps them on the signaling port, with a warning.
    admin_host: str = "127.0.0.1"
    admin_port: Port | None = None  # session list and /metrics here; None: on the signaling port (warned)
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
    agent: AgentLinkConfig = field(default_factory=AgentLinkConfig)
    # When set, the answer's relays are the catalog's two best for (region, cluster), every VIP of each.
    catalog: Path | None = None  # the fleet catalog (docs/GEO.md), instead of `relays`

    def validate(self, path: str) -> None:
        if not 0 <= self.cluster <= MAX_CLUSTER:
            raise ConfigError(f"{path}.cluster", f"expected 0..{MAX_CLUSTER}, got {self.cluster}")
        if not 0 <= self.index <= MAX_INDEX:
            raise ConfigError(f"{path}.index", f"expected 0..{MAX_INDEX}, got {self.index}")
        if self.catalog is not None:
            catalog_relays(self.catalog, self.region, self.cluster, f"{path}.catalog")
        elif not self.relays:
            raise ConfigError(f"{path}.relays", "at least one relay VIP is required (or a catalog)")
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

    def with_catalog_relays(self) -> TransceiverConfig:
        """This config with ``relays`` taken from the catalog (unchanged without one)."""
        if self.catalog is None:
            return self
        return replace(
            self, relays=catalog_relays(self.catalog, self.region, self.cluster, "transceiver.catalog")
        )

    def relays_by_priority(self) -> tuple[RelayConfig, ...]:
        """Primary first (highest ``priority``), configuration order among equals."""
        return tuple(sorted(self.relays, key=lambda r: -r.priority))


def catalog_relays(path: Path, region: str, cluster: int, field_path: str) -> tuple[RelayConfig, ...]:
    """The catalog's answer relays for cluster ``cluster`` of ``region``: primary first, every VIP."""
    catalog = load_catalog(path)
    try:
        entry = catalog.cluster_by_id(region, cluster)
    except KeyError:
        raise ConfigError(field_path, f"{path} has no cluster {cluster} in region {region!r}") from None
    relays = catalog.answer_relays(entry.name)
    return tuple(
        RelayConfig(vip, relay.port, len(relays) - rank, relay.tunnel_port)
        for rank, relay in enumerate(relays)
        for vip in sorted(relay.vips, key=lambda v: ":" not in v)  # IPv6 first (RFC 8421 §4)
    )
