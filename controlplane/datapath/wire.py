"""Packet bytes for the Python datapath: parse IP/UDP at an offset, build UDP and Geneve.

``engine.py`` calls these once per packet, so they work on ``bytes`` and offsets
(no copies, no ``ipaddress``, no dataclasses) and compute Internet checksums with
``int.from_bytes(...) % 0xFFFF``: 2**16 == 1 (mod 0xFFFF), so that residue is the
ones' complement sum of the 16-bit big-endian words, summed in C. The results equal
``icegate.inet`` (the reference; ``tests/unit/test_twin.py`` checks it).
Addresses are addr16 (``bpf/shared.h``: IPv4 as ``::ffff:a.b.c.d``).
"""

from __future__ import annotations

from controlplane.datapath.layout import Stat
from icegate.geneve import entropy_port as entropy_port  # the one implementation, beside the builders
from icegate.inet import IPPROTO_UDP

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPV6_NEXT_FRAGMENT = 44
OUTER_V4 = 20 + 8 + 8  # outer IPv4 + UDP + Geneve (DATAPATH.md §2.2)
OUTER_V6 = 40 + 8 + 8
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

ParsedUdp = tuple[int, int, bytes, bytes, int, int, int]
"""(IP end, UDP offset, src addr16, dst addr16, sport, dport, UDP length)."""


def is_webrtc(first: int) -> bool:
    """RFC 7983 STUN 0-3, DTLS 20-63, RTP/RTCP 128-191 (``icegate.rfc7983.WEBRTC_KINDS``)."""
    return first <= 3 or 20 <= first <= 63 or 128 <= first <= 191


def parse_ip(buf: bytes, o: int, end: int, etype: int) -> ParsedUdp | Stat:
    """DATAPATH.md §1 r2-r5 on the IP packet at ``buf[o:end]`` (``etype`` 0x0800 or 0x86DD).

    Returns :data:`ParsedUdp`, or the stat of the first rule that fails. §1 r6-r7
    (is it ours, UDP length) are the caller's: their order differs between the outer and
    the inner packet.
    """
    avail = end - o
    if etype == ETH_P_IP:
        if avail < 20 or buf[o] >> 4 != 4:
            return Stat.DROP_MALFORMED_IP
        ihl = (buf[o] & 0x0F) << 2
        total = buf[o + 2] << 8 | buf[o + 3]
        if ihl < 20 or total < ihl or total > avail:
            return Stat.DROP_MALFORMED_IP
        if buf[o + 6] & 0x3F or buf[o + 7]:  # MF or a fragment offset
            return Stat.PASS_FRAGMENT
        if buf[o + 9] != IPPROTO_UDP:
            return Stat.PASS_NOT_UDP
        src = V4_MAPPED + buf[o + 12 : o + 16]
        dst = V4_MAPPED + buf[o + 16 : o + 20]
    else:
        # The version nibble is checked for IPv6 too (the spec names it for IPv4 only).
        if avail < 40 or buf[o] >> 4 != 6:
            return Stat.DROP_MALFORMED_IP
        ihl = 40
        total = 40 + (buf[o + 4] << 8 | buf[o + 5])
        if total > avail:
            return Stat.DROP_MALFORMED_IP
        if buf[o + 6] == IPV6_NEXT_FRAGMENT:
            return Stat.PASS_FRAGMENT
        if buf[o + 6] != IPPROTO_UDP:  # extension headers are not walked
            return Stat.PASS_NOT_UDP
        src = buf[o + 8 : o + 24]
        dst = buf[o + 24 : o + 40]
    if total - ihl < 8:  # the IP payload, not the frame: Ethernet padding is not UDP
        return Stat.DROP_MALFORMED_UDP
    u = o + ihl
    sport = buf[u] << 8 | buf[u + 1]
    dport = buf[u + 2] << 8 | buf[u + 3]
    return o + total, u, src, dst, sport, dport, buf[u + 4] << 8 | buf[u + 5]


# RFC 8200 section 4 and IANA's list: next-header values that are extension headers (and
# ESP/AH), never walked by the relay; to one of our addresses they are dropped (§1 r3).
IPV6_EXTENSIONS = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254})


def l3_dst_proto(buf: bytes, o: int, etype: int) -> tuple[bytes, int, bool] | None:
    """(destination addr16, protocol / next header, is a fragment) of a packet that
    :func:`parse_ip` passed as a fragment or not UDP; None if the header is short."""
    if etype == ETH_P_IP:
        if len(buf) - o < 20:
            return None
        return V4_MAPPED + buf[o + 16 : o + 20], buf[o + 9], bool(buf[o + 6] & 0x3F or buf[o + 7])
    if len(buf) - o < 40:
        return None
    return buf[o + 24 : o + 40], buf[o + 6], buf[o + 6] == IPV6_NEXT_FRAGMENT


def words(data: bytes) -> int:
    """``data`` as one integer whose residue mod 0xFFFF is its 16-bit word sum (odd: zero-padded)."""
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) & 1 else value


def udp_checksum(src: bytes, dst: bytes, udp_len: int, segment_words: int) -> int:
    """UDP checksum from the addresses (4 or 16 bytes each) and :func:`words` of the segment.

    A computed 0 comes out as 0xFFFF, as ``icegate.inet.udp_checksum`` sends it.
    """
    return 0xFFFF - (int.from_bytes(src + dst, "big") + IPPROTO_UDP + udp_len + segment_words) % 0xFFFF


def _ipv4_header(src: bytes, dst: bytes, total: int) -> bytes:
    """Version 4, IHL 5, TOS 0, ID 0, DF, TTL 64, UDP, header checksum."""
    r = (0xC511 + total + int.from_bytes(src + dst, "big")) % 0xFFFF  # 0x4500 + 0x4000 + 0x4011
    csum = 0xFFFF - r if r else 0
    return (
        b"\x45\x00"
        + total.to_bytes(2, "big")
        + b"\x00\x00\x40\x00\x40\x11"
        + csum.to_bytes(2, "big")
        + src
        + dst
    )


def _ipv6_header(src: bytes, dst: bytes, payload_len: int) -> bytes:
    """Traffic class 0, flow label 0, next header UDP, hop limit 64."""
    return b"\x60\x00\x00\x00" + payload_len.to_bytes(2, "big") + b"\x11\x40" + src + dst


def build_udp(src16: bytes, sport: int, dst16: bytes, dport: int, payload: bytes) -> bytes:
    """``icegate.inet.build_udp`` with its defaults (TTL 64, ID 0, checksums), from addr16."""
    udp_len = 8 + len(payload)
    seg = sport + dport + udp_len + words(payload)
    if src16[:12] == V4_MAPPED and dst16[:12] == V4_MAPPED:
        src, dst = src16[12:], dst16[12:]
        header = _ipv4_header(src, dst, 20 + udp_len)
    else:
        src, dst = src16, dst16
        header = _ipv6_header(src, dst, udp_len)
    csum = udp_checksum(src, dst, udp_len, seg)
    return header + (sport << 48 | dport << 32 | udp_len << 16 | csum).to_bytes(8, "big") + payload


def geneve_header(protocol: int, vni: int) -> bytes:
    """Version 0, no options, O = C = 0 (``icegate.geneve.pack_header``)."""
    return bytes((0, 0, protocol >> 8, protocol & 0xFF)) + ((vni & 0xFFFFFF) << 8).to_bytes(4, "big")


def encapsulate(src: bytes, dst: bytes, sport: int, dport: int, geneve: bytes, inner: bytes) -> bytes:
    """DATAPATH.md §2.2: outer IP (IPv4 if the addresses are 4 bytes) | UDP | ``geneve`` | ``inner``.

    The UDP checksum is 0 over IPv4 (RFC 8926 §3.3) and computed over IPv6 (RFC 8200).
    """
    udp_len = 8 + len(geneve) + len(inner)
    if len(src) == 4:
        header = _ipv4_header(src, dst, 20 + udp_len)
        csum = 0
    else:
        header = _ipv6_header(src, dst, udp_len)
        csum = udp_checksum(src, dst, udp_len, sport + dport + udp_len + words(geneve) + words(inner))
    return header + (sport << 48 | dport << 32 | udp_len << 16 | csum).to_bytes(8, "big") + geneve + inner
