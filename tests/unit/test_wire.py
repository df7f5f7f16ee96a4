"""IP/UDP, Geneve, RFC 7983 and the STUN first-check rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icegate import geneve, inet, stun, token
from icegate.errors import WireError
from icegate.rfc7983 import PacketKind, classify

KEY = bytes(range(16))


def binding_request(username: bytes | None, *, attrs_before: int = 0, cookie: int = stun.COOKIE) -> bytes:
    body = b""
    for _ in range(attrs_before):
        body += struct.pack("!HHI", 0x0024, 4, 0x6E7F1EFF)  # PRIORITY
    if username is not None:
        body += (
            struct.pack("!HH", stun.ATTR_USERNAME, len(username)) + username + b"\x00" * (-len(username) % 4)
        )
    return struct.pack("!HHI12s", stun.BINDING_REQUEST, len(body), cookie, b"t" * 12) + body


def test_checksum_known_value() -> None:
    # RFC 1071 example words 0001 f203 f4f5 f6f7 sum to 0xddf2; checksum is its complement.
    assert inet.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@given(st.binary(max_size=300), st.integers(1, 65535), st.integers(1, 65535))
def test_udp_build_parse_round_trip_v4(payload: bytes, sport: int, dport: int) -> None:
    packet = inet.build_udp("192.0.2.10", sport, "198.51.100.7", dport, payload)
    assert inet.checksum(packet[:20]) == 0  # header checksum verifies
    parsed = inet.parse_udp(packet)
    assert (parsed.src, parsed.sport, parsed.dst, parsed.dport, parsed.payload) == (
        "192.0.2.10",
        sport,
        "198.51.100.7",
        dport,
        payload,
    )
    pseudo_ok = inet.udp_checksum(
        inet.packed_address("192.0.2.10"), inet.packed_address("198.51.100.7"), packet[20:]
    )
    assert pseudo_ok == 0xFFFF  # a segment including its own checksum sums to zero


def test_udp_round_trip_v6() -> None:
    packet = inet.build_udp("2001:db8::1", 3478, "2001:db8::2", 50000, b"\x80hello")
    parsed = inet.parse_udp(packet)
    assert (parsed.version, parsed.src, parsed.dst, parsed.payload) == (
        6,
        "2001:db8::1",
        "2001:db8::2",
        b"\x80hello",
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p[:10], "truncated"),
        (lambda p: bytes([0x44]) + p[1:], "header length"),
        (lambda p: p[:6] + b"\x20\x00" + p[8:], "fragment"),
        (lambda p: p[:9] + b"\x06" + p[10:], "not UDP"),
        (lambda p: p[:2] + struct.pack("!H", 500) + p[4:], "total length"),
        (lambda p: p[:24] + struct.pack("!H", 9) + p[26:], "UDP length"),
    ],
)
def test_parse_udp_rejects(mutate, message: str) -> None:
    packet = inet.build_udp("192.0.2.10", 3478, "198.51.100.7", 5000, b"\x16" * 30)
    with pytest.raises(WireError, match=message):
        inet.parse_udp(mutate(packet))


def test_addr16_round_trip() -> None:
    assert inet.addr16("10.0.0.1") == b"\x00" * 10 + b"\xff\xff\x0a\x00\x00\x01"
    assert inet.from_addr16(inet.addr16("10.0.0.1")) == "10.0.0.1"
    assert inet.from_addr16(inet.addr16("2001:db8::5")) == "2001:db8::5"


def test_geneve_round_trip_and_layout() -> None:
    inner = inet.build_udp("100.64.1.2", 40000, "192.0.2.10", 3478, b"\x00\x01")
    payload = geneve.encapsulate(inner, vni=7)
    assert payload[:8] == bytes([0, 0, 0x08, 0x00, 0, 0, 7, 0])
    header, got = geneve.decapsulate(payload)
    assert (header.vni, header.protocol, got) == (7, geneve.PROTO_IPV4, inner)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00\x08", "truncated"),
        (bytes([0x40, 0, 8, 0, 0, 0, 0, 0]), "version"),
        (bytes([0x02, 0, 8, 0, 0, 0, 0, 0]) + b"\x00" * 4, "options"),
        (bytes([0, 0x80, 8, 0, 0, 0, 0, 0]), "OAM"),
        (bytes([0, 0x40, 8, 0, 0, 0, 0, 0]), "critical"),
        (bytes([0, 0, 0x65, 0x58, 0, 0, 0, 0]), "not IP"),
    ],
)
def test_geneve_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        geneve.decapsulate(payload)


def test_geneve_skips_noncritical_options() -> None:
    inner = inet.build_udp("100.64.1.2", 1, "192.0.2.10", 3478, b"\x80")
    option = struct.pack("!HBB", 0x0102, 0x01, 1) + b"abcd"  # class, type, length in words
    header, got = geneve.decapsulate(geneve.pack_header(3, geneve.PROTO_IPV4, option) + inner)
    assert header.options == option and got == inner


def test_entropy_port_range_and_stability() -> None:
    a = inet.addr16("100.64.1.2")
    p = geneve.entropy_port(a, 40000, 3478)
    assert 49152 <= p <= 65535
    assert p == geneve.entropy_port(a, 40000, 3478)
    assert len({geneve.entropy_port(a, port, 3478) for port in range(40000, 40100)}) > 50


@pytest.mark.parametrize(
    "byte, kind",
    [
        (0, PacketKind.STUN),
        (3, PacketKind.STUN),
        (4, PacketKind.UNKNOWN),
        (16, PacketKind.ZRTP),
        (20, PacketKind.DTLS),
        (63, PacketKind.DTLS),
        (64, PacketKind.TURN_CHANNEL),
        (79, PacketKind.TURN_CHANNEL),
        (80, PacketKind.UNKNOWN),
        (127, PacketKind.UNKNOWN),
        (128, PacketKind.RTP),
        (191, PacketKind.RTP),
        (192, PacketKind.UNKNOWN),
        (255, PacketKind.UNKNOWN),
    ],
)
def test_rfc7983_classes(byte: int, kind: PacketKind) -> None:
    assert classify(byte) is kind


def test_first_check_ufrag_of_valid_request() -> None:
    ufrag = token.mint(0, KEY, 1, 2).encode()
    assert stun.first_check_ufrag(binding_request(ufrag + b":abcd", attrs_before=2)) == ufrag


@pytest.mark.parametrize(
    "packet, reason",
    [
        (binding_request(b"x" * 24 + b":abcd")[:19], "stun_malformed"),
        (binding_request(b"x" * 24 + b":abcd", cookie=0x2112A443), "stun_malformed"),
        (binding_request(b"x" * 24 + b":abcd") + b"\x00\x00\x00\x00", "stun_malformed"),
        (binding_request(None), "username_missing"),
        (binding_request(b"x" * 24 + b":abcd", attrs_before=16), "username_missing"),
        (binding_request(b"x" * 24 + b":" + b"y" * 500), "username_too_long"),
        (binding_request(b"abcdefgh"), "username_no_colon"),
        (binding_request(b"abcd:efgh"), "token_length"),
        (binding_request(b"x" * 25 + b":efgh"), "token_length"),
    ],
)
def test_first_check_rejects(packet: bytes, reason: str) -> None:
    with pytest.raises(stun.StunReject) as err:
        stun.first_check_ufrag(packet)
    assert err.value.reason == reason


def test_attribute_past_end_is_malformed() -> None:
    packet = bytearray(binding_request(b"x" * 24 + b":abcd"))
    struct.pack_into("!H", packet, 22, 200)  # USERNAME length runs past the message
    with pytest.raises(stun.StunReject, match="stun_malformed"):
        stun.first_check_ufrag(bytes(packet))


def test_non_binding_messages_are_not_first_checks() -> None:
    indication = struct.pack("!HHI12s", stun.BINDING_INDICATION, 0, stun.COOKIE, b"t" * 12)
    assert stun.first_check_ufrag(indication) is None
    success = struct.pack("!HHI12s", stun.BINDING_SUCCESS, 0, stun.COOKIE, b"t" * 12)
    assert stun.is_binding_success(success) and not stun.is_binding_success(indication)


def test_local_ufrag_for_mux() -> None:
    assert stun.local_ufrag(binding_request(b"serverfrag:clnt")) == b"serverfrag"
    assert stun.local_ufrag(binding_request(None)) is None
    assert stun.local_ufrag(b"\x16\xfe\xfd") is None


def signed_check(password: bytes, *, fingerprint: bool = True) -> bytes:
    """A binding request as aioice (aiortc's ICE) signs one."""
    from aioice import stun as aioice_stun

    msg = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    msg.attributes["USERNAME"] = "EAABAAdKXVR3FruGuX+P0BJ/:abcd"
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes["ICE-CONTROLLING"] = 5
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(password)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


@pytest.mark.parametrize("fingerprint", [True, False], ids=["with-fingerprint", "without"])
def test_message_integrity_of_a_real_stack(fingerprint: bool) -> None:
    packet = signed_check(b"s3cret-ice-password-22c", fingerprint=fingerprint)
    assert stun.integrity_ok(packet, b"s3cret-ice-password-22c")
    assert not stun.integrity_ok(packet, b"another-password-of-22c")
    flipped = bytearray(packet)
    flipped[30] ^= 1  # inside USERNAME, which the HMAC covers
    assert not stun.integrity_ok(bytes(flipped), b"s3cret-ice-password-22c")


def test_message_integrity_missing_or_malformed() -> None:
    key = b"k" * 22
    assert not stun.integrity_ok(binding_request(b"x" * 24 + b":abcd"), key)  # no MESSAGE-INTEGRITY
    packet = signed_check(key, fingerprint=False)
    assert not stun.integrity_ok(packet[:-4], key)  # cut inside the attribute
    short_mi = packet[:-24] + struct.pack("!HH", stun.ATTR_MESSAGE_INTEGRITY, 16) + packet[-20:-4]
    relength = short_mi[:2] + struct.pack("!H", len(short_mi) - 20) + short_mi[4:]
    assert not stun.integrity_ok(relength, key)  # a 16-byte MESSAGE-INTEGRITY is not HMAC-SHA1
    assert not stun.integrity_ok(b"\x00\x01" + bytes(10), key)  # not even a header
