"""What icegate keeps in Redis: key names and record encodings, no I/O.

One Redis per region. Every key starts with ``icegate:<region>:``.

``tx:<cluster>:<index>`` (hash, TTL = heartbeat TTL)
    A transceiver's registration, refreshed by its heartbeat. When the key expires
    the relays mark the backend dead (existing flows kept, new flows refused).
``tx-events`` (pub/sub channel)
    ``<cluster>:<index>`` is published on every registration change, so relays sync
    within one round trip; they also reconcile with a full scan periodically.
``route-keys`` (hash)
    ``k:<id>`` -> 32 hex digits, ``current`` -> id, ``previous`` -> id,
    ``previous_until`` -> unix seconds until which the previous key is still accepted.
``flow:<vip>:<vip port>:<client>:<client port>`` (hash, TTL = flow TTL)
    The flow cache, keyed by VIP (not by relay) so any relay behind the VIP recovers it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from icegate.errors import StoreError

PREFIX = "icegate"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field(record: Mapping[bytes | str, bytes | str], name: str) -> str:
    for key in (name, name.encode()):
        if key in record:
            return _text(record[key])
    raise StoreError(f"record has no field {name!r}")


class Keys:
    """Key names for one region."""

    def __init__(self, region: str) -> None:
        if not region or ":" in region or "*" in region:
            raise ValueError(f"region name {region!r} must be non-empty without ':' or '*'")
        self.region = region
        self.base = f"{PREFIX}:{region}"

    def transceiver(self, cluster: int, index: int) -> str:
        return f"{self.base}:tx:{cluster}:{index}"

    @property
    def transceiver_pattern(self) -> str:
        return f"{self.base}:tx:*"

    @property
    def transceiver_events(self) -> str:
        return f"{self.base}:tx-events"

    @property
    def route_keys(self) -> str:
        return f"{self.base}:route-keys"

    def flow(self, vip: str, vip_port: int, client: str, client_port: int) -> str:
        return f"{self.base}:flow:{vip}:{vip_port}:{client}:{client_port}"

    def flow_pattern(self, vip: str, vip_port: int) -> str:
        return f"{self.base}:flow:{vip}:{vip_port}:*"


@dataclass(frozen=True)
class Registration:
    """A transceiver as the relays see it."""

    cluster: int
    index: int
    tunnel_addr: str
    tunnel_port: int
    signaling_url: str
    state: str  # "active" or "draining"
    generation: int
    sessions: int = 0
    heartbeat_ms: int = 0

    STATES = ("active", "draining")

    def encode(self) -> dict[str, str]:
        return {
            "cluster": str(self.cluster),
            "index": str(self.index),
            "tunnel_addr": self.tunnel_addr,
            "tunnel_port": str(self.tunnel_port),
            "signaling_url": self.signaling_url,
            "state": self.state,
            "generation": str(self.generation),
            "sessions": str(self.sessions),
            "heartbeat_ms": str(self.heartbeat_ms or int(time.time() * 1000)),
        }

    @classmethod
    def decode(cls, record: Mapping[bytes | str, bytes | str]) -> Registration:
        try:
            reg = cls(
                cluster=int(_field(record, "cluster")),
                index=int(_field(record, "index")),
                tunnel_addr=_field(record, "tunnel_addr"),
                tunnel_port=int(_field(record, "tunnel_port")),
                signaling_url=_field(record, "signaling_url"),
                state=_field(record, "state"),
                generation=int(_field(record, "generation")),
                sessions=int(_field(record, "sessions")),
                heartbeat_ms=int(_field(record, "heartbeat_ms")),
            )
        except ValueError as exc:
            raise StoreError(f"bad transceiver registration: {exc}") from exc
        if reg.state not in cls.STATES:
            raise StoreError(f"bad transceiver state {reg.state!r}")
        return reg


@dataclass(frozen=True)
class CachedFlow:
    """A confirmed flow in the Redis flow cache."""

    cluster: int
    index: int
    token_tag: int
    created_unix_ms: int

    def encode(self) -> dict[str, str]:
        return {
            "cluster": str(self.cluster),
            "index": str(self.index),
            "token_tag": str(self.token_tag),
            "created_unix_ms": str(self.created_unix_ms),
        }

    @classmethod
    def decode(cls, record: Mapping[bytes | str, bytes | str]) -> CachedFlow:
        try:
            return cls(
                cluster=int(_field(record, "cluster")),
                index=int(_field(record, "index")),
                token_tag=int(_field(record, "token_tag")),
                created_unix_ms=int(_field(record, "created_unix_ms")),
            )
        except ValueError as exc:
            raise StoreError(f"bad cached flow: {exc}") from exc


@dataclass(frozen=True)
class RouteKeySet:
    """The accepted route keys: ``current`` always, ``previous`` until ``previous_until``."""

    keys: dict[int, bytes]
    current: int
    previous: int | None = None
    previous_until: float = 0.0

    def accepted(self, now: float | None = None) -> dict[int, bytes]:
        now = time.time() if now is None else now
        out = {self.current: self.keys[self.current]}
        if self.previous is not None and self.previous in self.keys and now < self.previous_until:
            out[self.previous] = self.keys[self.previous]
        return out

    def encode(self) -> dict[str, str]:
        fields = {f"k:{kid}": key.hex() for kid, key in self.keys.items()}
        fields["current"] = str(self.current)
        if self.previous is not None:
            fields["previous"] = str(self.previous)
            fields["previous_until"] = f"{self.previous_until:.3f}"
        return fields

    @classmethod
    def decode(cls, record: Mapping[bytes | str, bytes | str]) -> RouteKeySet:
        try:
            keys = {
                int(_text(name)[2:]): bytes.fromhex(_text(value))
                for name, value in record.items()
                if _text(name).startswith("k:")
            }
            current = int(_field(record, "current"))
            fields = {_text(k): _text(v) for k, v in record.items()}
            previous = int(fields["previous"]) if "previous" in fields else None
            until = float(fields.get("previous_until", "0"))
        except ValueError as exc:
            raise StoreError(f"bad route keys: {exc}") from exc
        if current not in keys:
            raise StoreError(f"current route key {current} is missing")
        if any(len(k) != 16 for k in keys.values()):
            raise StoreError("route keys must be 16 bytes")
        return cls(keys, current, previous, until)

    def rotated(self, new_key: bytes, grace_s: float, now: float | None = None) -> RouteKeySet:
        """The set after a rotation: a new current key, the old one accepted for ``grace_s``."""
        now = time.time() if now is None else now
        new_id = (self.current + 1) % 16
        keys = {self.current: self.keys[self.current], new_id: new_key}
        return RouteKeySet(keys, new_id, self.current, now + grace_s)
