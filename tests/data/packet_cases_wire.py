"""Shared packet vectors, the wire-level cases: frames, IP/UDP rules, Geneve returns, next hops.

Part of ``make_packet_vectors.py`` (which writes tests/data/packets.json), split off to
keep each file readable; the same rules apply: expectations come from the codecs.
"""

from __future__ import annotations

import struct
from typing import Any

from icegate import geneve, inet
from labkit.packets import (
    B11,
    B12,
    B15,
    B16,
    B17,
    B21,
    C1,
    C2,
    C6,
    C_NO_NEIGH,
    C_NO_ROUTE,
    DTLS,
    GW_MAC,
    PRIV_MAC,
    PUB_MAC,
    RTP,
    T11,
    T16,
    T17,
    T21,
    TUNNEL4,
    TUNNEL6,
    TUNNEL_PORT,
    VIP4,
    VIP6,
    at_tunnel,
    at_vip,
    case,
    check,
    eth,
    flow,
    from_backend,
    from_client,
    ipv4,
    ipv6,
    reply,
    step,
    success,
    to_backend,
    to_client,
    udp,
)

Case = dict[str, Any]
GW, PUB = GW_MAC, PUB_MAC


def returns() -> list[Case]:
    confirmed = {"flows": [flow(C1, VIP4, B11)]}
    inner = reply(VIP4, C1, DTLS)
    options = geneve.pack_header(1, geneve.PROTO_IPV4, bytes.fromhex("010401010a0b0c0d"))
    with_ip_options = ipv4(
        VIP4[0], C1[0], 17, udp(VIP4[0], VIP4[1], C1[0], C1[1], DTLS), options=b"\x01\x01\x01\x00"
    )
    return [
        case(
            "Geneve return from the registered transceiver",
            [
                to_client("FWD_RETURN", B11, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, RTP),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B11, VIP4, C1, DTLS, sport=50123),
            ],
            confirmed,
        ),
        case(
            "Geneve return from a sender that does not own the flow",
            [
                step(
                    from_backend("10.70.0.77", geneve.encapsulate(inner, 1)),
                    "DROP_RETURN_WRONG_BACKEND",
                    "private",
                ),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B12, VIP4, C1, DTLS),
                step(
                    from_backend(B15.address, geneve.encapsulate(inner, 1)),
                    "DROP_RETURN_WRONG_BACKEND",
                    "private",
                ),
            ],
            confirmed,
        ),
        case(
            "inner source is not a VIP",
            [
                at_tunnel("DROP_RETURN_NOT_VIP", B11, (VIP4[0], 9999, 0), C1, DTLS),
                at_tunnel("DROP_RETURN_NOT_VIP", B11, ("203.0.113.5", 3478, 0), C1, DTLS),
                at_tunnel("DROP_RETURN_NOT_VIP", B11, (TUNNEL4, TUNNEL_PORT, 0), C1, DTLS),
            ],
            confirmed,
        ),
        case(
            "inner IP options, Geneve options, reserved bits and VNI are passed over",
            [
                step(
                    from_backend(B11.address, options + inner), "FWD_RETURN", "private", **_client_out(inner)
                ),
                step(
                    from_backend(B11.address, b"\x00\x3f\x08\x00\x00\x00\x01\xff" + inner),
                    "FWD_RETURN",
                    "private",
                    **_client_out(inner),
                ),
                step(
                    from_backend(B11.address, geneve.encapsulate(inner, 99)),
                    "FWD_RETURN",
                    "private",
                    **_client_out(inner),
                ),
                step(
                    from_backend(B11.address, geneve.encapsulate(with_ip_options, 1)),
                    "FWD_RETURN",
                    "private",
                    **_client_out(with_ip_options),
                ),
                step(
                    from_backend(B11.address, geneve.encapsulate(inner, 1) + b"trailing"),
                    "FWD_RETURN",
                    "private",
                    **_client_out(inner),
                ),
            ],
            confirmed,
        ),
        case("Geneve malformed and unsupported", _geneve_errors(inner), confirmed),
        case("inner packet malformed", _inner_errors(), confirmed),
        case(
            "802.1Q-tagged return",
            [
                step(
                    _vlan(from_backend(B11.address, geneve.encapsulate(inner, 1))),
                    "FWD_RETURN",
                    "private",
                    **_client_out(inner),
                )
            ],
            confirmed,
        ),
    ]


def _private(packet: bytes) -> bytes:
    return eth("02:00:00:00:00:11", "02:00:00:00:00:21", 0x0800, packet)


def _client_out(inner: bytes) -> dict[str, Any]:
    return {"egress": "public", "dst_mac": GW, "output": inner}


def _vlan(frame: bytes) -> bytes:
    return frame[:12] + struct.pack("!H", 0x8100) + struct.pack("!H", 7) + frame[12:]


def _geneve_errors(inner: bytes) -> list[dict[str, Any]]:
    def raw(first: int, flags: int, proto: int, rest: bytes, vni: int = 1) -> bytes:
        return struct.pack("!BBHI", first, flags, proto, vni << 8) + rest

    inner6 = reply(VIP6, C6, DTLS)
    cases = [
        ("DROP_GENEVE_MALFORMED", b""),
        ("DROP_GENEVE_MALFORMED", bytes(7)),
        ("DROP_GENEVE_MALFORMED", raw(0x01, 0, 0x0800, b"")),
        ("DROP_GENEVE_MALFORMED", raw(0x3F, 0, 0x0800, inner)),
        ("DROP_GENEVE_MALFORMED", raw(0x41, 0, 0x0800, b"")),  # §3 r1 before r2
        ("DROP_GENEVE_UNSUPPORTED", raw(0x40, 0, 0x0800, inner)),
        ("DROP_GENEVE_UNSUPPORTED", raw(0xC0, 0, 0x0800, inner)),
        ("DROP_GENEVE_UNSUPPORTED", raw(0x00, 0x80, 0x0800, inner)),
        ("DROP_GENEVE_UNSUPPORTED", raw(0x01, 0x40, 0x0800, bytes.fromhex("01040181") + inner)),
        ("DROP_GENEVE_UNSUPPORTED", raw(0x00, 0, 0x6558, inner)),
        ("DROP_GENEVE_UNSUPPORTED", raw(0x00, 0, 0x0000, inner)),
        ("DROP_INNER_MALFORMED", raw(0x00, 0, 0x0800, inner6)),
        ("DROP_INNER_MALFORMED", raw(0x00, 0, 0x86DD, inner)),
    ]
    return [step(from_backend(B11.address, payload), stat, "private") for stat, payload in cases]


def _inner_errors() -> list[dict[str, Any]]:
    seg = udp(VIP4[0], VIP4[1], C1[0], C1[1], DTLS)
    inner = reply(VIP4, C1, DTLS)
    bad = [
        b"",
        inner[:10],
        inner[:19],
        ipv4(VIP4[0], C1[0], 17, seg, ihl=4),
        ipv4(VIP4[0], C1[0], 17, seg, total=len(seg) + 30),
        ipv4(VIP4[0], C1[0], 17, seg, frag=0x2000),
        ipv4(VIP4[0], C1[0], 17, seg, frag=0x0010),
        ipv4(VIP4[0], C1[0], 6, seg),
        ipv4(VIP4[0], C1[0], 17, seg[:4]),
        ipv4(VIP4[0], C1[0], 17, udp(VIP4[0], VIP4[1], C1[0], C1[1], DTLS, length=len(seg) + 1)),
        ipv4(VIP4[0], C1[0], 17, udp(VIP4[0], VIP4[1], C1[0], C1[1], DTLS, length=7)),
    ]
    found = [
        step(
            from_backend(B11.address, geneve.pack_header(1, geneve.PROTO_IPV4) + p),
            "DROP_INNER_MALFORMED",
            "private",
        )
        for p in bad
    ]
    seg6 = udp(VIP6[0], VIP6[1], C6[0], C6[1], DTLS)
    for p in (
        ipv6(VIP6[0], C6[0], 17, seg6, plen=len(seg6) + 1),
        ipv6(VIP6[0], C6[0], 44, seg6),
        ipv6(VIP6[0], C6[0], 17, seg6, version=4),
    ):
        found.append(
            step(
                from_backend(B11.address, geneve.pack_header(1, geneve.PROTO_IPV6) + p),
                "DROP_INNER_MALFORMED",
                "private",
            )
        )
    found.append(at_tunnel("DROP_NOT_WEBRTC", B11, VIP4, C1, b"\x64abc"))
    return found


def frames() -> list[Case]:
    seg = udp(C1[0], C1[1], VIP4[0], VIP4[1], DTLS)
    seg6 = udp(C6[0], C6[1], VIP6[0], VIP6[1], DTLS)
    v4 = ipv4(C1[0], VIP4[0], 17, seg)

    def pub(packet: bytes, etype: int = 0x0800) -> bytes:
        return eth(PUB, GW, etype, packet)

    def priv(packet: bytes) -> bytes:
        return eth(PRIV_MAC, "02:00:00:00:00:21", 0x0800, packet)

    def not_ours(stat: str, dst: tuple[str, int], payload: bytes = DTLS) -> dict[str, Any]:
        packet = inet.build_udp(C1[0] if ":" not in dst[0] else C6[0], C1[1], dst[0], dst[1], payload)
        return step(from_client(packet), stat)

    arp = bytes.fromhex("0001080006040001") + bytes.fromhex(PUB.replace(":", "")) + bytes(18)
    confirmed = {"flows": [flow(C1, VIP4, B11), flow(C6, VIP6, B11)]}
    return [
        case(
            "not relay traffic",
            [
                step(eth(PUB, GW, 0x0806, arp), "PASS_NOT_IP"),
                step(eth(PUB, GW, 0x88CC, bytes(40)), "PASS_NOT_IP"),
                step(eth(PUB, GW, 0x8100, b"\x00"), "PASS_NOT_IP"),
                step(eth(PUB, GW, 0x8100, b"\x00\x07\x81\x00\x00\x07\x08\x00" + v4), "PASS_NOT_IP"),
                step(eth(PUB, GW, 0x88A8, b"\x00\x07\x08\x00" + v4), "PASS_NOT_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 6, seg)), "PASS_NOT_UDP"),
                step(pub(ipv4(C1[0], VIP4[0], 1, bytes(16))), "PASS_NOT_UDP"),
                step(pub(ipv6(C6[0], VIP6[0], 0, bytes(8) + seg6), 0x86DD), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv6(C6[0], "2001:db8:1::99", 0, bytes(8) + seg6), 0x86DD), "PASS_NOT_UDP"),
                step(pub(ipv6(C6[0], VIP6[0], 58, bytes(16)), 0x86DD), "PASS_NOT_UDP"),
                not_ours("PASS_NOT_RELAY", (VIP4[0], 53)),
                not_ours("PASS_NOT_RELAY", ("192.0.2.2", 3478)),
                not_ours("PASS_NOT_RELAY", (TUNNEL4, 6082)),
                not_ours("PASS_NOT_RELAY", (VIP4[0], TUNNEL_PORT)),
                not_ours("PASS_NOT_RELAY", (TUNNEL6, 3478)),
                not_ours("PASS_NOT_RELAY", (VIP6[0], 3479)),
                step(
                    pub(ipv4(C1[0], VIP4[0], 17, udp(C1[0], C1[1], VIP4[0], 53, DTLS, length=9))),
                    "PASS_NOT_RELAY",
                ),
            ],
        ),
        case(
            "IP fragments to our addresses are dropped, others passed to the kernel",
            [
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, frag=0x2000)), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, frag=0x00B9)), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg[:5], frag=0x00B9)), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv6(C6[0], VIP6[0], 44, bytes(8) + seg6), 0x86DD), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv6(C6[0], VIP6[0], 60, bytes(8) + seg6), 0x86DD), "DROP_FRAGMENT_TO_VIP"),
                step(pub(ipv4(C1[0], "192.0.2.2", 17, seg, frag=0x2000)), "PASS_FRAGMENT"),
                step(pub(ipv6(C6[0], "2001:db8:1::2", 44, bytes(8) + seg6), 0x86DD), "PASS_FRAGMENT"),
                step(
                    priv(ipv4(B11.address, TUNNEL4, 17, seg, frag=0x2000)), "DROP_FRAGMENT_TO_VIP", "private"
                ),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, frag=0x2000, ihl=4)), "DROP_MALFORMED_IP"),
            ],
            confirmed,
        ),
        case(
            "malformed IP",
            [
                step(pub(v4[:19]), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, version=5)), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, version=6)), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, ihl=4)), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, total=16)), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, total=len(seg) + 21)), "DROP_MALFORMED_IP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, ihl=15, total=40)), "DROP_MALFORMED_IP"),
                step(pub(ipv6(C6[0], VIP6[0], 17, seg6)[:39], 0x86DD), "DROP_MALFORMED_IP"),
                step(pub(ipv6(C6[0], VIP6[0], 17, seg6, plen=len(seg6) + 1), 0x86DD), "DROP_MALFORMED_IP"),
                step(pub(ipv6(C6[0], VIP6[0], 17, seg6, version=4), 0x86DD), "DROP_MALFORMED_IP"),
                step(pub(v4, 0x86DD), "DROP_MALFORMED_IP"),
            ],
            confirmed,
        ),
        case(
            "malformed UDP",
            [
                step(from_client(ipv4(C1[0], VIP4[0], 17, seg[:4]), pad_to=60), "DROP_MALFORMED_UDP"),
                step(pub(ipv4(C1[0], VIP4[0], 17, b"")), "DROP_MALFORMED_UDP"),
                step(pub(ipv6(C6[0], VIP6[0], 17, seg6[:7]), 0x86DD), "DROP_MALFORMED_UDP"),
                step(
                    pub(ipv4(C1[0], VIP4[0], 17, udp(C1[0], C1[1], VIP4[0], VIP4[1], DTLS, length=7))),
                    "DROP_MALFORMED_UDP",
                ),
                step(
                    pub(
                        ipv4(
                            C1[0], VIP4[0], 17, udp(C1[0], C1[1], VIP4[0], VIP4[1], DTLS, length=len(seg) + 1)
                        )
                    ),
                    "DROP_MALFORMED_UDP",
                ),
                step(
                    pub(
                        ipv4(
                            C1[0], VIP4[0], 17, udp(C1[0], C1[1], VIP4[0], VIP4[1], DTLS, length=len(seg) - 1)
                        )
                    ),
                    "DROP_MALFORMED_UDP",
                ),
                step(
                    pub(
                        ipv6(C6[0], VIP6[0], 17, udp(C6[0], C6[1], VIP6[0], VIP6[1], DTLS, length=9)), 0x86DD
                    ),
                    "DROP_MALFORMED_UDP",
                ),
                step(
                    from_client(ipv4(C1[0], VIP4[0], 17, seg[:2] + b"\x00\x35"), pad_to=60),
                    "DROP_MALFORMED_UDP",
                ),
                step(
                    _private(ipv4(B11.address, TUNNEL4, 17, struct.pack("!HHHH", 6081, TUNNEL_PORT, 7, 0))),
                    "DROP_MALFORMED_UDP",
                    "private",
                ),
            ],
            confirmed,
        ),
        case(
            "IP options are tunnelled intact; Ethernet padding is not",
            [
                to_backend("FWD_NEW_FLOW", B11, C2, VIP4, check(T11), options=b"\x94\x04\x00\x00"),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS, options=b"\x01" * 39 + b"\x00"),
                to_backend("FWD_FLOW", B11, C1, VIP4, bytes([23, 0xFE, 0xFD, 0, 1]), pad_to=60),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS, frag=0xC000),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS, frag=0x0000),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS, vlan=7),
                to_backend("FWD_FLOW", B11, C6, VIP6, DTLS, pad_to=128),
            ],
            confirmed,
        ),
    ]


def next_hops() -> list[Case]:
    big4 = bytes([23]) + bytes(1464 - 28 - 1)  # inner IP 1464: outer IPv4 1500
    big6 = bytes([23]) + bytes(1444 - 28 - 1)  # inner IP 1444: outer IPv6 1500
    big_return = bytes([23]) + bytes(1500 - 28 - 1)
    return [
        case(
            "transceiver without a neighbour entry: the slow path forwards",
            [at_vip("SLOW_NO_NEIGH", C1, VIP4, check(T16)), at_vip("SLOW_NO_NEIGH", C2, VIP4, DTLS)],
            {"flows": [flow(C2, VIP4, B16)]},
            pending=[],
            flows=[flow(C2, VIP4, B16)],
        ),
        case(
            "no route to the transceiver",
            [at_vip("DROP_FIB", C1, VIP4, check(T17)), at_vip("DROP_FIB", C2, VIP4, DTLS)],
            {"flows": [flow(C2, VIP4, B17)]},
            pending=[],
        ),
        case(
            "ICE restart to a transceiver without a next hop changes nothing",
            [at_vip("SLOW_NO_NEIGH", C1, VIP4, check(T16)), at_vip("DROP_FIB", C1, VIP4, check(T17))],
            {"flows": [flow(C1, VIP4, B11)]},
            flows=[flow(C1, VIP4, B11)],
        ),
        case(
            "client without a neighbour entry or a route",
            [
                at_tunnel("SLOW_NO_NEIGH", B11, VIP4, C_NO_NEIGH, DTLS),
                at_tunnel("DROP_FIB", B11, VIP4, C_NO_ROUTE, DTLS),
            ],
            {"flows": [flow(C_NO_NEIGH, VIP4, B11), flow(C_NO_ROUTE, VIP4, B11)]},
        ),
        case(
            "a confirming success that cannot be forwarded confirms nothing",
            [at_tunnel("SLOW_NO_NEIGH", B11, VIP4, C_NO_NEIGH, success(C_NO_NEIGH))],
            {"pending": [flow(C_NO_NEIGH, VIP4, B11)]},
            pending=[flow(C_NO_NEIGH, VIP4, B11)],
            flows=[],
        ),
        case(
            "encapsulated packet larger than the private MTU",
            [
                to_backend("FWD_FLOW", B11, C1, VIP4, big4),
                at_vip("DROP_FRAG_NEEDED", C1, VIP4, big4 + b"x"),
                to_backend("FWD_FLOW", B15, C2, VIP4, big6),
                at_vip("DROP_FRAG_NEEDED", C2, VIP4, big6 + b"x"),
                to_client("FWD_RETURN", B11, VIP4, C1, big_return),
                at_tunnel("DROP_FRAG_NEEDED", B11, VIP4, C1, big_return + b"x"),
            ],
            {"flows": [flow(C1, VIP4, B11), flow(C2, VIP4, B15)]},
        ),
        case(
            "transceiver reached through the public gateway: XDP_TX",
            [
                to_backend("FWD_NEW_FLOW", B21, C1, VIP4, check(T21)),
                to_backend("FWD_PENDING", B21, C1, VIP4, check(T21)),
            ],
            pending=[flow(C1, VIP4, B21)],
        ),
    ]
