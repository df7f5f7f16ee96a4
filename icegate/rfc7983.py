"""Demultiplexing WebRTC packets on one port by their first byte (RFC 7983 §7).

One table used by the XDP program (``bpf/shared.h`` mirrors it), the userspace twin
and the transceiver's mux, so all three classify a packet the same way.
"""

from __future__ import annotations

from enum import IntEnum


class PacketKind(IntEnum):
    UNKNOWN = 0
    STUN = 1  # 0-3
    ZRTP = 2  # 16-19
    DTLS = 3  # 20-63
    TURN_CHANNEL = 4  # 64-79
    RTP = 5  # 128-191 (RTP and RTCP)


# Kinds a WebRTC session carries through the relay. ZRTP and TURN channel data are
# legal on a shared port in general, but never appear between a browser and icegate.
WEBRTC_KINDS = frozenset({PacketKind.STUN, PacketKind.DTLS, PacketKind.RTP})


def classify(first_byte: int) -> PacketKind:
    if first_byte <= 3:
        return PacketKind.STUN
    if 16 <= first_byte <= 19:
        return PacketKind.ZRTP
    if 20 <= first_byte <= 63:
        return PacketKind.DTLS
    if 64 <= first_byte <= 79:
        return PacketKind.TURN_CHANNEL
    if 128 <= first_byte <= 191:
        return PacketKind.RTP
    return PacketKind.UNKNOWN
