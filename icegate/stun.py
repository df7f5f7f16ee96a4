"""The little of STUN (RFC 8489) the relay reads: is this a binding request, and whose ufrag.

This is the reference for the first-packet rules; ``bpf/parsing.h`` applies the same
checks in the same order with the same bounds, and the userspace twin calls these
functions. The transceiver uses aioice for real STUN work and this module only to
find the session a check belongs to.

Rules for a UDP payload whose first byte is 0-3 (RFC 7983 STUN range):

1. shorter than 20 bytes, wrong magic cookie, message length not a multiple of 4 or
   not equal to the payload length minus 20 -> ``stun_malformed``;
2. message type other than Binding Request (0x0001) -> not a first check (the caller
   decides: forward on a known flow, slow path otherwise);
3. attributes are walked from offset 20, at most ``MAX_STUN_ATTRS``; an attribute
   running past the message -> ``stun_malformed``; no USERNAME within the walk ->
   ``username_missing``; USERNAME longer than ``MAX_USERNAME_LEN`` -> ``username_too_long``;
4. the server ufrag is the USERNAME up to ``:`` (RFC 8445 §7.2.2). A route token is
   exactly 24 characters, so byte 24 must be ``:``; otherwise a ``:`` within the first
   ``MAX_UFRAG_LEN + 1`` bytes -> ``token_length``, none -> ``username_no_colon``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator

from icegate.errors import StunReject
from icegate.rfc7983 import PacketKind, classify
from icegate.token import TOKEN_CHARS

COOKIE = 0x2112A442
HEADER_LEN = 20
ATTR_HEADER_LEN = 4
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
BINDING_INDICATION = 0x0011
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
INTEGRITY_LEN = 20  # HMAC-SHA1
MAX_STUN_ATTRS = 16  # attributes walked looking for USERNAME; stacks put it first or second
MAX_USERNAME_LEN = 508  # RFC 8489 §14.3: fewer than 509 bytes
MAX_UFRAG_LEN = 32  # longest ufrag we look for ':' in; tokens are 24

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


def is_stun(payload: bytes) -> bool:
    return bool(payload) and classify(payload[0]) is PacketKind.STUN


def message_type(payload: bytes) -> int:
    """Check the header (rule 1) and return the message type."""
    if len(payload) < HEADER_LEN:
        raise StunReject("stun_malformed")
    msg_type, length, cookie, _ = _HEADER.unpack_from(payload)
    if cookie != COOKIE or length % 4 or HEADER_LEN + length != len(payload):
        raise StunReject("stun_malformed")
    return int(msg_type)


def is_binding_success(payload: bytes) -> bool:
    """True for a well-formed Binding success response: what confirms a pending flow."""
    try:
        return message_type(payload) == BINDING_SUCCESS
    except StunReject:
        return False


def _attributes(payload: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(offset, type, value offset, value length)`` of each of the first ``MAX_STUN_ATTRS``
    attributes of a well-formed message (rules 1 and 3); StunReject when one runs past it."""
    message_type(payload)
    offset = HEADER_LEN
    for _ in range(MAX_STUN_ATTRS):
        if offset == len(payload):
            return
        if offset + ATTR_HEADER_LEN > len(payload):
            raise StunReject("stun_malformed")
        attr_type, attr_len = _ATTR.unpack_from(payload, offset)
        value_start = offset + ATTR_HEADER_LEN
        if value_start + attr_len > len(payload):
            raise StunReject("stun_malformed")
        yield offset, attr_type, value_start, attr_len
        offset = value_start + attr_len + (-attr_len % 4)


def find_username(payload: bytes) -> bytes:
    """Return the USERNAME value of a well-formed message (rules 1 and 3)."""
    for _, attr_type, value_start, attr_len in _attributes(payload):
        if attr_type == ATTR_USERNAME:
            if attr_len > MAX_USERNAME_LEN:
                raise StunReject("username_too_long")
            return bytes(payload[value_start : value_start + attr_len])
    raise StunReject("username_missing")


def server_ufrag(username: bytes) -> bytes:
    """The 24-character server part of ``<server ufrag>:<client ufrag>`` (rule 4)."""
    if len(username) > TOKEN_CHARS and username[TOKEN_CHARS] == ord(":"):
        return username[:TOKEN_CHARS]
    if b":" in username[: MAX_UFRAG_LEN + 1]:
        raise StunReject("token_length")
    raise StunReject("username_no_colon")


def first_check_ufrag(payload: bytes) -> bytes | None:
    """The server ufrag of a Binding Request, ``None`` for other well-formed STUN messages.

    Raises :class:`StunReject` for anything malformed (rules 1-4).
    """
    if message_type(payload) != BINDING_REQUEST:
        return None
    return server_ufrag(find_username(payload))


def local_ufrag(payload: bytes) -> bytes | None:
    """For the transceiver's mux: the part of USERNAME before ``:`` of any request, else None.

    Tolerant on purpose: the relay has already vetted first checks; here we only pick a session.
    """
    try:
        username = find_username(payload)
    except StunReject:
        return None
    ufrag, colon, _ = username.partition(b":")
    return ufrag if colon else None


def integrity_ok(payload: bytes, key: bytes) -> bool:
    """True when ``payload`` carries a MESSAGE-INTEGRITY (RFC 8489 §14.5) that verifies
    with the short-term credential ``key`` (the receiver's ICE password).

    The HMAC-SHA1 covers the header, with its length field counting up to the end of
    MESSAGE-INTEGRITY (FINGERPRINT after it is left out), and every attribute before it.
    """
    try:
        for offset, attr_type, value_start, attr_len in _attributes(payload):
            if attr_type == ATTR_MESSAGE_INTEGRITY:
                if attr_len != INTEGRITY_LEN:
                    return False
                length = (value_start + INTEGRITY_LEN - HEADER_LEN).to_bytes(2, "big")
                signed = payload[:2] + length + payload[4:offset]
                expected = hmac.new(key, signed, hashlib.sha1).digest()
                return hmac.compare_digest(expected, payload[value_start : value_start + INTEGRITY_LEN])
    except StunReject:
        pass
    return False
