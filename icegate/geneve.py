"""Geneve (RFC 8926): the tunnel between relay and transceivers.

Forward: the relay prepends outer IP/UDP/Geneve to the client's untouched IP packet.
Return: the transceiver sends Geneve whose inner packet is VIP:3478 -> client.
The inner packet has no Ethernet header: protocol type 0x0800 or 0x86DD (RFC 8926 §3.4).

Header, 8 bytes + options::

    |Ver(2)|Opt Len(6)|O|C|Rsvd(6)|   Protocol Type (16)   |
    |        Virtual Network Identifier (24)     | Rsvd (8) |

icegate sets VNI to the transceiver index of the flow (informational: the relay does
not trust it, it checks the outer source against the flow's backend) and sends no
options, but accepts non-critical options on receive. ``bpf/parsing.h`` is the C twin.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from icegate.errors import WireError

GENEVE_PORT = 6081
HEADER_LEN = 8
MAX_OPTIONS_LEN = 63 * 4  # Opt Len is 6 bits of 4-byte words
PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD
FLAG_OAM = 0x80
FLAG_CRITICAL = 0x40
EPHEMERAL_BASE = 0xC000  # outer source ports come from 49152-65535 (RFC 8926 §3.3)

_HEADER = struct.Struct("!BBHI")


@dataclass(frozen=True, slots=True)
class GeneveHeader:
    vni: int
    protocol: int
    options: bytes = b""
    oam: bool = False
    critical: bool = False

    def __bytes__(self) -> bytes:
        return pack_header(self.vni, self.protocol, self.options, oam=self.oam, critical=self.critical)


def pack_header(
    vni: int, protocol: int, options: bytes = b"", *, oam: bool = False, critical: bool = False
) -> bytes:
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI must fit in 24 bits, got {vni}")
    if len(options) % 4 or len(options) > MAX_OPTIONS_LEN:
        raise ValueError(f"options must be a multiple of 4 bytes up to {MAX_OPTIONS_LEN}, got {len(options)}")
    flags = (FLAG_OAM if oam else 0) | (FLAG_CRITICAL if critical else 0)
    return _HEADER.pack(len(options) // 4, flags, protocol, vni << 8) + options


def unpack_header(data: bytes) -> tuple[GeneveHeader, int]:
    """Return the header and the offset of the inner packet."""
    if len(data) < HEADER_LEN:
        raise WireError(f"Geneve header truncated: {len(data)} bytes")
    first, flags, protocol, vni_word = _HEADER.unpack_from(data)
    version = first >> 6
    if version != 0:
        raise WireError(f"Geneve version {version}")
    offset = HEADER_LEN + (first & 0x3F) * 4
    if offset > len(data):
        raise WireError(f"Geneve options ({offset - HEADER_LEN} bytes) run past the packet")
    header = GeneveHeader(
        vni=vni_word >> 8,
        protocol=protocol,
        options=bytes(data[HEADER_LEN:offset]),
        oam=bool(flags & FLAG_OAM),
        critical=bool(flags & FLAG_CRITICAL),
    )
    return header, offset


def protocol_for(inner_packet: bytes) -> int:
    if not inner_packet:
        raise WireError("empty inner packet")
    version = inner_packet[0] >> 4
    if version == 4:
        return PROTO_IPV4
    if version == 6:
        return PROTO_IPV6
    raise WireError(f"inner IP version {version}")


def encapsulate(inner_packet: bytes, vni: int) -> bytes:
    """Geneve header + ``inner_packet``: the UDP payload sent to port 6081."""
    return pack_header(vni, protocol_for(inner_packet)) + inner_packet


def decapsulate(payload: bytes) -> tuple[GeneveHeader, bytes]:
    """Split a Geneve UDP payload into header and inner IP packet.

    Refuses what icegate never sends: OAM frames, critical options, non-IP payloads.
    """
    header, offset = unpack_header(payload)
    if header.oam:
        raise WireError("Geneve OAM frame")
    if header.critical:
        raise WireError("Geneve critical options are not supported")
    if header.protocol not in (PROTO_IPV4, PROTO_IPV6):
        raise WireError(f"Geneve protocol type 0x{header.protocol:04x} is not IP")
    return header, bytes(payload[offset:])


def entropy_port(client_addr16: bytes, client_port: int, vip_port: int) -> int:
    """Outer UDP source port for a flow: stable per flow, spread for ECMP/RSS (RFC 8926 §3.3).

    XOR of the four big-endian 32-bit words of the 16-byte client address and
    ``client_port << 16 | vip_port``, folded to 16 bits, mapped into 49152-65535 (the
    words are XORed as one integer: the twin calls this once per forwarded packet).
    ``entropy_port()`` in ``bpf/forward.h`` computes the same value; the shared packet
    vectors (``tests/data/packets.json``) hold both to it.
    """
    w = int.from_bytes(client_addr16, "big")
    h = ((w >> 96) ^ (w >> 64) ^ (w >> 32) ^ w ^ (client_port << 16 | vip_port)) & 0xFFFFFFFF
    h ^= h >> 16
    return EPHEMERAL_BASE | (h & 0x3FFF)
