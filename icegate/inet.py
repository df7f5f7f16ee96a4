"""IPv4/IPv6 + UDP packets: build, parse, checksum.

The relay tunnels whole client IP packets, so both the transceiver (which writes the
inner packet VIP:3478 -> client with a complete UDP checksum) and the userspace twin
(which synthesises the inner packet from a socket datagram) build IP packets here.
Addresses are text (``"192.0.2.10"``) at the API, 16 bytes (IPv4-mapped for IPv4) in
map keys, matching ``bpf/shared.h``.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

from icegate.errors import WireError

IPPROTO_UDP = 17
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
DEFAULT_TTL = 64
IPV4_FLAG_DF = 0x4000
IPV4_FLAG_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
IPV6_NEXT_FRAGMENT = 44

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (already complemented, ready to store)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def packed_address(host: str) -> bytes:
    """4 bytes for IPv4, 16 for IPv6."""
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return socket.inet_aton(host)


def text_address(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntoa(packed)
    return socket.inet_ntop(socket.AF_INET6, packed)


def addr16(host: str) -> bytes:
    """The 16-byte form used in BPF map keys: IPv6 as is, IPv4 as ``::ffff:a.b.c.d``."""
    packed = packed_address(host)
    return _V4_MAPPED_PREFIX + packed if len(packed) == 4 else packed


def from_addr16(raw: bytes) -> str:
    if len(raw) != 16:
        raise ValueError(f"expected 16 address bytes, got {len(raw)}")
    if raw[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntoa(raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def udp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """UDP checksum over the pseudo header (RFC 768 / RFC 8200 §8.1) and ``segment``.

    A computed 0 is sent as 0xFFFF (0 means "no checksum" in IPv4 and is illegal in IPv6).
    """
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, len(segment))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(segment), IPPROTO_UDP)
    value = checksum(pseudo + segment)
    return value or 0xFFFF


def build_udp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes,
    *,
    ttl: int = DEFAULT_TTL,
    ident: int = 0,
    tos: int = 0,
    with_checksum: bool = True,
) -> bytes:
    """Return a complete IPv4 or IPv6 packet (by address family) carrying one UDP datagram."""
    src_b, dst_b = packed_address(src), packed_address(dst)
    if len(src_b) != len(dst_b):
        raise ValueError(f"address families differ: {src} -> {dst}")
    udp_len = UDP_HEADER_LEN + len(payload)
    segment = _UDP.pack(sport, dport, udp_len, 0) + payload
    if with_checksum:
        csum = udp_checksum(src_b, dst_b, segment)
        segment = segment[:6] + struct.pack("!H", csum) + segment[8:]
    if len(src_b) == 4:
        header = _IPV4.pack(
            0x45, tos, IPV4_HEADER_LEN + udp_len, ident, IPV4_FLAG_DF, ttl, IPPROTO_UDP, 0, src_b, dst_b
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + segment
    first_word = (6 << 28) | (tos << 20)
    return _IPV6.pack(first_word, udp_len, IPPROTO_UDP, ttl, src_b, dst_b) + segment


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """A parsed IP packet carrying UDP. ``payload`` excludes any link-layer padding."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    version: int
    ttl: int
    header_len: int


def parse_udp(packet: bytes) -> UdpPacket:
    """Parse an IPv4 or IPv6 packet carrying UDP. Fragments and extension headers are refused."""
    if not packet:
        raise WireError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER_LEN:
            raise WireError(f"IPv4 header truncated: {len(packet)} bytes")
        ver_ihl, _, total, _, frag, ttl, proto, _, src_b, dst_b = _IPV4.unpack_from(packet)
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < IPV4_HEADER_LEN:
            raise WireError(f"IPv4 header length {ihl} < 20")
        if total < ihl or total > len(packet):
            raise WireError(f"IPv4 total length {total} does not fit {len(packet)} bytes")
        if frag & (IPV4_FLAG_MF | IPV4_OFFSET_MASK):
            raise WireError("IPv4 fragment")
        if proto != IPPROTO_UDP:
            raise WireError(f"IP protocol {proto} is not UDP")
        header_len, end = ihl, total
    elif version == 6:
        if len(packet) < IPV6_HEADER_LEN:
            raise WireError(f"IPv6 header truncated: {len(packet)} bytes")
        _, plen, proto, ttl, src_b, dst_b = _IPV6.unpack_from(packet)
        if proto != IPPROTO_UDP:
            raise WireError(f"IPv6 next header {proto} is not UDP")
        header_len, end = IPV6_HEADER_LEN, IPV6_HEADER_LEN + plen
        if end > len(packet):
            raise WireError(f"IPv6 payload length {plen} does not fit {len(packet)} bytes")
    else:
        raise WireError(f"IP version {version}")
    if end - header_len < UDP_HEADER_LEN:
        raise WireError("UDP header truncated")
    sport, dport, udp_len, _ = _UDP.unpack_from(packet, header_len)
    if udp_len < UDP_HEADER_LEN or header_len + udp_len != end:
        raise WireError(f"UDP length {udp_len} disagrees with IP length {end - header_len}")
    return UdpPacket(
        src=text_address(src_b),
        sport=sport,
        dst=text_address(dst_b),
        dport=dport,
        payload=bytes(packet[header_len + UDP_HEADER_LEN : end]),
        version=version,
        ttl=ttl,
        header_len=header_len,
    )
