"""Route tokens: the server ICE ufrag that tells the relay which transceiver owns a session.

A transceiver mints its ufrag as a token; every connectivity check the client sends
carries it as the part of the STUN USERNAME before ``:`` (RFC 8445 §7.2.2), so the
relay routes the first packet of a session without any lookup.

Wire format, 18 bytes encoded as 24 characters of standard base64 without padding
(all of them ``ice-char``, RFC 8839 §5.4)::

    byte  0      version (high 4 bits, = 1) | key id (low 4 bits)
    bytes 1-2    cluster id, big endian
    bytes 3-4    transceiver index, big endian
    bytes 5-9    nonce, 40 random bits (RFC 8445 §5.3 wants at least 24)
    bytes 10-17  MAC = SipHash-2-4(route key, bytes 0-9), 64 bits, little endian

The XDP program decodes the same format in ``bpf/token.h``; the vectors in
``tests/data/token_vectors.json`` drive both decoders.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from icegate.errors import TokenError
from icegate.siphash import KEY_BYTES, siphash24

TOKEN_VERSION = 1
TOKEN_BYTES = 18
TOKEN_CHARS = 24
MAC_OFFSET = 10
MAX_KEY_ID = 15
MAX_CLUSTER = 0xFFFF
MAX_INDEX = 0xFFFF
NONCE_BITS = 40

# ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839 §5.4); the URL-safe "-" and "_" are illegal.
_ICE_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


@dataclass(frozen=True)
class RouteToken:
    """A decoded token. ``verified`` is True only when it came from :func:`verify`."""

    version: int
    key_id: int
    cluster: int
    index: int
    nonce: int
    mac: int
    verified: bool = False

    @property
    def tag(self) -> int:
        """The low 32 bits of the MAC: what a flow stores to detect a changed ufrag (ICE restart)."""
        return self.mac & 0xFFFFFFFF


def _body(key_id: int, cluster: int, index: int, nonce: int) -> bytes:
    return struct.pack(">BHH", (TOKEN_VERSION << 4) | key_id, cluster, index) + nonce.to_bytes(5, "big")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"route key must be {KEY_BYTES} bytes, got {len(key)}")


def mint(key_id: int, key: bytes, cluster: int, index: int, nonce: int | None = None) -> str:
    """Return a fresh ufrag that routes to transceiver ``index`` of ``cluster``."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be 0..{MAX_KEY_ID}, got {key_id}")
    if not 0 <= cluster <= MAX_CLUSTER:
        raise ValueError(f"cluster id must be 0..{MAX_CLUSTER}, got {cluster}")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"transceiver index must be 0..{MAX_INDEX}, got {index}")
    _check_key(key)
    if nonce is None:
        nonce = secrets.randbits(NONCE_BITS)
    elif not 0 <= nonce < 1 << NONCE_BITS:
        raise ValueError(f"nonce must fit in {NONCE_BITS} bits")
    body = _body(key_id, cluster, index, nonce)
    raw = body + struct.pack("<Q", siphash24(key, body))
    return base64.b64encode(raw).decode("ascii")


def decode(ufrag: str | bytes) -> RouteToken:
    """Parse a token without checking its MAC. Raises :class:`TokenError` naming the problem."""
    text = ufrag.encode("latin-1", "replace") if isinstance(ufrag, str) else bytes(ufrag)
    if len(text) != TOKEN_CHARS:
        raise TokenError("token_length", f"expected {TOKEN_CHARS} characters, got {len(text)}")
    if _ICE_CHARS.fullmatch(text) is None:
        raise TokenError("token_alphabet", "characters outside [A-Za-z0-9+/]")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:  # pragma: no cover - the alphabet check above rules this out
        raise TokenError("token_alphabet", str(exc)) from exc
    version, key_id = raw[0] >> 4, raw[0] & 0x0F
    if version != TOKEN_VERSION:
        raise TokenError("token_version", f"version {version}, this relay speaks {TOKEN_VERSION}")
    _, cluster, index = struct.unpack_from(">BHH", raw)
    nonce = int.from_bytes(raw[5:MAC_OFFSET], "big")
    (mac,) = struct.unpack_from("<Q", raw, MAC_OFFSET)
    return RouteToken(TOKEN_VERSION, key_id, cluster, index, nonce, mac)


def verify(ufrag: str | bytes, keys: Mapping[int, bytes]) -> RouteToken:
    """Decode and check the MAC against ``keys`` (key id -> 16-byte route key)."""
    token = decode(ufrag)
    key = keys.get(token.key_id)
    if key is None:
        raise TokenError("token_key", f"key id {token.key_id} is not an accepted route key")
    _check_key(key)
    body = _body(token.key_id, token.cluster, token.index, token.nonce)
    if siphash24(key, body) != token.mac:
        raise TokenError("token_mac", "MAC does not verify")
    return RouteToken(token.version, token.key_id, token.cluster, token.index, token.nonce, token.mac, True)


def new_key() -> bytes:
    """Return a fresh random route key."""
    return secrets.token_bytes(KEY_BYTES)
