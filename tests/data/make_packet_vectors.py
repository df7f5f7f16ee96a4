"""Regenerate tests/data/packets.json: ``python -m tests.data.make_packet_vectors``.

The shared packet vectors of docs/DATAPATH.md §9, deterministic. Every step names the
counter, action, egress, MACs and output bytes the specification demands; the frames and
the expected outputs come from the icegate codecs (``packet_builders.py``), not from
either implementation. ``controlplane.datapath.Datapath.process_frame``
(tests/unit/test_datapath.py) and the XDP program (tests/bpf/) must reproduce them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from icegate import geneve, inet, stun
from icegate.rfc7983 import PacketKind, classify
from tests.data.packet_builders import (
    B11,
    B12,
    B13,
    B14,
    B15,
    B16,
    B17,
    B21,
    BACKENDS,
    C1,
    C2,
    C6,
    C_NO_NEIGH,
    C_NO_ROUTE,
    DTLS,
    HOUR_NS,
    RTP,
    T11,
    T11_KEY1,
    T11_VERSION0,
    T12,
    T13,
    T14,
    T15,
    T16,
    T17,
    T19,
    T21,
    T_FORGED,
    T_FORGED_TAG,
    T_STEER,
    T_UNKNOWN_KEY,
    T_VERSION2,
    TOPOLOGY,
    TUNNEL4,
    TUNNEL6,
    TUNNEL_PORT,
    VIP4,
    VIP6,
    VIP_ALT,
    at_tunnel,
    at_vip,
    base_state,
    case,
    check,
    client_packet,
    eth,
    flow,
    from_backend,
    from_client,
    ipv4,
    ipv6,
    rate,
    reply,
    step,
    stun_message,
    success,
    to_backend,
    to_client,
    udp,
)

OUT = Path(__file__).with_name("packets.json")
Case = dict[str, Any]
GW, PUB = "02:00:00:00:00:02", "02:00:00:00:00:01"


def first_checks() -> list[Case]:
    long_user = (T11 + ":").encode()
    return [
        case(
            "valid first STUN creates a pending flow",
            [to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11))],
            pending=[flow(C1, VIP4, B11)],
            flows=[],
        ),
        case(
            "first STUN signed with the previous route key",
            [to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11_KEY1))],
            pending=[flow(C1, VIP4, B11, T11_KEY1)],
        ),
        case(
            "STUN then DTLS: the handshake follows the pending flow",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                to_backend("FWD_PENDING", B11, C1, VIP4, DTLS),
                to_backend("FWD_PENDING", B11, C1, VIP4, check(T11)),
                to_backend("FWD_PENDING", B11, C1, VIP4, RTP),
            ],
            pending=[flow(C1, VIP4, B11)],
            flows=[],
        ),
        case(
            "USERNAME after 15 other attributes",
            [to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11, before=15))],
        ),
        case(
            "USERNAME after 16 other attributes",
            [at_vip("DROP_USERNAME_MISSING", C1, VIP4, check(T11, before=16))],
        ),
        case("USERNAME missing", [at_vip("DROP_USERNAME_MISSING", C1, VIP4, check(missing=True))]),
        case(
            "STUN header only",
            [at_vip("DROP_USERNAME_MISSING", C1, VIP4, stun_message(1, [], fingerprint=False))],
        ),
        case(
            "USERNAME of 508 bytes",
            [to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(username=long_user + b"u" * 483))],
        ),
        case(
            "USERNAME of 509 bytes is too long",
            [at_vip("DROP_USERNAME_TOO_LONG", C1, VIP4, check(username=long_user + b"u" * 484))],
        ),
        case(
            "USERNAME without ':'", [at_vip("DROP_USERNAME_NO_COLON", C1, VIP4, check(username=T11.encode()))]
        ),
        case("USERNAME empty", [at_vip("DROP_USERNAME_NO_COLON", C1, VIP4, check(username=b""))]),
        case("server ufrag of 4 characters", [at_vip("DROP_TOKEN_LENGTH", C1, VIP4, check("abcd"))]),
        case("server ufrag of 25 characters", [at_vip("DROP_TOKEN_LENGTH", C1, VIP4, check(T11 + "A"))]),
        case("':' at byte 32", [at_vip("DROP_TOKEN_LENGTH", C1, VIP4, check(username=b"u" * 32 + b":x"))]),
        case(
            "':' first at byte 33",
            [at_vip("DROP_USERNAME_NO_COLON", C1, VIP4, check(username=b"u" * 33 + b":x"))],
        ),
        case(
            "token with a URL-safe character", [at_vip("DROP_TOKEN_ALPHABET", C1, VIP4, check("-" + T11[1:]))]
        ),
        case("token version 2", [at_vip("DROP_TOKEN_VERSION", C1, VIP4, check(T_VERSION2))]),
        case("token with an unknown key id", [at_vip("DROP_TOKEN_KEY", C1, VIP4, check(T_UNKNOWN_KEY))]),
        case("token with a forged MAC", [at_vip("DROP_TOKEN_MAC", C1, VIP4, check(T_FORGED))], pending=[]),
        case(
            "token for an unknown backend", [at_vip("DROP_BACKEND_UNKNOWN", C1, VIP4, check(T19))], pending=[]
        ),
        case("draining backend refuses new flows", [at_vip("DROP_BACKEND_DRAINING", C1, VIP4, check(T13))]),
        case("dead backend refuses new flows", [at_vip("DROP_BACKEND_DEAD", C1, VIP4, check(T14))]),
    ]


def stun_rules() -> list[Case]:
    msg = check(T11)
    bad_cookie = msg[:4] + b"\x21\x12\xa4\x43" + msg[8:]
    odd = struct.pack("!H", len(msg) - 20 + 2)
    odd_length = msg[:2] + odd + msg[4:] + b"\x00\x00"
    long_header = msg[:2] + struct.pack("!H", len(msg) - 20 + 4) + msg[4:]
    past_end = stun_message(1, [struct.pack("!HH", 0x0024, 100) + bytes(4)], fingerprint=False)
    with_flow = {"flows": [flow(C1, VIP4, B11)]}
    return [
        case("STUN with the wrong magic cookie", [at_vip("DROP_STUN_MALFORMED", C1, VIP4, bad_cookie)]),
        case("STUN length not a multiple of 4", [at_vip("DROP_STUN_MALFORMED", C1, VIP4, odd_length)]),
        case("STUN length longer than the payload", [at_vip("DROP_STUN_MALFORMED", C1, VIP4, long_header)]),
        case("STUN attribute past the end", [at_vip("DROP_STUN_MALFORMED", C1, VIP4, past_end)]),
        case(
            "STUN rules apply on a known flow too",
            [
                at_vip("DROP_STUN_MALFORMED", C1, VIP4, bad_cookie),
                at_vip("DROP_USERNAME_MISSING", C1, VIP4, check(missing=True)),
                at_vip("DROP_USERNAME_NO_COLON", C1, VIP4, check(username=b"nocolon")),
                to_backend("FWD_FLOW", B11, C1, VIP4, msg),
            ],
            with_flow,
        ),
        case(
            "STUN other than a binding request without a flow",
            [
                at_vip("SLOW_NO_FLOW", C1, VIP4, stun_message(stun.BINDING_INDICATION, [])),
                at_vip("SLOW_NO_FLOW", C1, VIP4, success(C1)),
            ],
        ),
        case(
            "STUN other than a binding request with a flow",
            [
                to_backend("FWD_FLOW", B11, C1, VIP4, stun_message(stun.BINDING_INDICATION, [])),
                to_backend("FWD_FLOW", B11, C1, VIP4, success(C1)),
            ],
            with_flow,
        ),
    ]


def truncations() -> list[Case]:
    msg = check(T11)
    frame = from_client(client_packet(C1, VIP4, msg))
    # BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header: cuts start there.
    cut_frames = [step(frame[:n], "DROP_MALFORMED_IP") for n in range(14, len(frame))]
    cut_payloads = [
        at_vip("DROP_NOT_WEBRTC" if n == 0 else "DROP_STUN_MALFORMED", C1, VIP4, msg[:n])
        for n in range(len(msg))
    ]
    # Cut at every attribute-aligned offset with the STUN length fixed: the reference decides.
    msg2 = check(T11, before=1)
    cut_messages = []
    for n in range(20, len(msg2) + 1, 4):
        cut = msg2[:2] + struct.pack("!H", n - 20) + msg2[4:n]
        client = (C1[0], 41000 + n)
        try:
            stun.first_check_ufrag(cut)
        except stun.StunReject as exc:
            cut_messages.append(at_vip(f"DROP_{exc.reason.upper()}", client, VIP4, cut))
        else:
            cut_messages.append(to_backend("FWD_NEW_FLOW", B11, client, VIP4, cut))
    return [
        case("STUN frame cut at every offset", cut_frames),
        case("STUN payload cut at every offset", cut_payloads),
        case("STUN message cut at every attribute offset, length fixed", cut_messages),
    ]


def first_bytes() -> list[Case]:
    with_flow, without, returns = [], [], []
    for first in range(256):
        payload = bytes([first]) + bytes(range(1, 40))
        kind = classify(first)
        if kind is PacketKind.STUN:
            with_flow.append(at_vip("DROP_STUN_MALFORMED", C1, VIP4, payload))
            without.append(at_vip("DROP_STUN_MALFORMED", C1, VIP4, payload))
        elif kind in (PacketKind.DTLS, PacketKind.RTP):
            with_flow.append(to_backend("FWD_FLOW", B11, C1, VIP4, payload))
            without.append(at_vip("SLOW_NO_FLOW", C1, VIP4, payload))
        else:
            with_flow.append(at_vip("DROP_NOT_WEBRTC", C1, VIP4, payload))
            without.append(at_vip("DROP_NOT_WEBRTC", C1, VIP4, payload))
        if kind in (PacketKind.STUN, PacketKind.DTLS, PacketKind.RTP):
            returns.append(to_client("FWD_RETURN", B11, VIP4, C1, payload))
        else:
            returns.append(at_tunnel("DROP_NOT_WEBRTC", B11, VIP4, C1, payload))
    with_flow.append(at_vip("DROP_NOT_WEBRTC", C1, VIP4, b""))
    without.append(at_vip("DROP_NOT_WEBRTC", C1, VIP4, b""))
    returns.append(at_tunnel("DROP_NOT_WEBRTC", B11, VIP4, C1, b""))
    state = {"flows": [flow(C1, VIP4, B11)]}
    return [
        case("all 256 first bytes on a flow", with_flow, state),
        case("all 256 first bytes without a flow", without),
        case("all 256 first bytes returned on a flow", returns, state),
    ]


def flows_and_slow_path() -> list[Case]:
    confirmed = {"flows": [flow(C1, VIP4, B11)]}
    pending = {"pending": [flow(C1, VIP4, B11)]}
    transceiver_check = check(username=b"cLnT:" + T11.encode())
    error = stun_message(stun.BINDING_ERROR, [])
    bad_success = success(C1)[:4] + b"\x00\x00\x00\x00" + success(C1)[8:]
    return [
        case(
            "DTLS and RTP without a flow go to the slow path",
            [at_vip("SLOW_NO_FLOW", C1, VIP4, DTLS), at_vip("SLOW_NO_FLOW", C1, VIP4, RTP)],
            flows=[],
            pending=[],
        ),
        case(
            "DTLS and RTP on a confirmed flow",
            [to_backend("FWD_FLOW", B11, C1, VIP4, DTLS), to_backend("FWD_FLOW", B11, C1, VIP4, RTP)],
            confirmed,
        ),
        case(
            "the flow key holds the client port and the VIP",
            [
                at_vip("SLOW_NO_FLOW", (C1[0], 40001), VIP4, DTLS),
                at_vip("SLOW_NO_FLOW", C1, VIP_ALT, DTLS),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP4, (C1[0], 40001), DTLS),
                at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP_ALT, C1, DTLS),
            ],
            confirmed,
        ),
        case(
            "a STUN success response from the owner confirms the flow",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                to_client("FWD_CONFIRM", B11, VIP4, C1, success(C1)),
                to_client("FWD_RETURN", B11, VIP4, C1, transceiver_check),
                to_backend("FWD_FLOW", B11, C1, VIP4, success(C1)),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, success(C1)),
            ],
            flows=[flow(C1, VIP4, B11)],
            pending=[],
        ),
        case(
            "returns on a pending flow before the success response",
            [
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, transceiver_check),
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, error),
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, bad_success),
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, DTLS),
            ],
            pending,
            pending=[flow(C1, VIP4, B11)],
            flows=[],
        ),
        case(
            "a return without a flow goes to the slow path",
            [at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP4, C1, DTLS)],
        ),
        case(
            "confirmed flows are looked up before pending ones",
            [
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B12, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, success(C1)),
            ],
            {"flows": [flow(C1, VIP4, B11)], "pending": [flow(C1, VIP4, B12)]},
        ),
    ]


def ice_restarts() -> list[Case]:
    confirmed = {"flows": [flow(C1, VIP4, B11)]}
    return [
        case(
            "ICE restart re-routes a confirmed flow",
            [
                to_backend("FWD_REROUTE", B12, C1, VIP4, check(T12)),
                to_backend("FWD_FLOW", B12, C1, VIP4, DTLS),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B11, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B12, VIP4, C1, DTLS),
                to_backend("FWD_FLOW", B12, C1, VIP4, check(T12)),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B12)],
        ),
        case(
            "ICE restart re-routes a pending flow",
            [
                to_backend("FWD_REROUTE", B12, C1, VIP4, check(T12)),
                to_backend("FWD_PENDING", B12, C1, VIP4, DTLS),
            ],
            {"pending": [flow(C1, VIP4, B11)]},
            pending=[flow(C1, VIP4, B12)],
        ),
        case(
            "ICE restart with a bad token keeps the flow",
            [
                at_vip("DROP_TOKEN_MAC", C1, VIP4, check(T_FORGED_TAG)),
                at_vip("DROP_BACKEND_DRAINING", C1, VIP4, check(T13)),
                at_vip("DROP_BACKEND_DEAD", C1, VIP4, check(T14)),
                at_vip("DROP_BACKEND_UNKNOWN", C1, VIP4, check(T19)),
                at_vip("DROP_TOKEN_KEY", C1, VIP4, check(T_UNKNOWN_KEY)),
                at_vip("DROP_TOKEN_VERSION", C1, VIP4, check(T_VERSION2)),
                at_vip("DROP_TOKEN_ALPHABET", C1, VIP4, check("_" + T11[1:])),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B11)],
        ),
        case(
            "the token is decoded (version) before its tag is compared",
            [at_vip("DROP_TOKEN_VERSION", C1, VIP4, check(T11_VERSION0))],
            confirmed,
        ),
        case(
            "a token copying the flow's tag is not re-verified and cannot steer",
            [
                to_backend("FWD_FLOW", B11, C1, VIP4, check(T_FORGED)),
                to_backend("FWD_FLOW", B11, C1, VIP4, check(T_STEER)),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B11)],
        ),
        case(
            "an unchanged tag is not re-verified after its key is withdrawn",
            [
                to_backend("FWD_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_TOKEN_KEY", C2, VIP4, check(T11)),
            ],
            {"route_keys": {}, **confirmed},
        ),
    ]


def backend_states() -> list[Case]:
    def keeps(b: Any, ufrag: str, refused: str) -> Case:
        return case(
            f"{b.state} backend keeps its flows and refuses new ones",
            [
                to_backend("FWD_FLOW", b, C1, VIP4, DTLS),
                to_backend("FWD_FLOW", b, C1, VIP4, check(ufrag)),
                to_client("FWD_RETURN", b, VIP4, C1, DTLS),
                at_vip(refused, C2, VIP4, check(ufrag)),
            ],
            {"flows": [flow(C1, VIP4, b)]},
            flows=[flow(C1, VIP4, b)],
        )

    gone = [{**b._asdict(), "generation": 1} for b in BACKENDS if b != B11]
    return [
        keeps(B13, T13, "DROP_BACKEND_DRAINING"),
        keeps(B14, T14, "DROP_BACKEND_DEAD"),
        case(
            "a flow whose backend was removed",
            [
                at_vip("DROP_BACKEND_UNKNOWN", C1, VIP4, DTLS),
                at_vip("DROP_BACKEND_UNKNOWN", C1, VIP4, check(T11)),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B11, VIP4, C1, DTLS),
            ],
            {"backends": gone, "flows": [flow(C1, VIP4, B11)]},
        ),
    ]


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
                to_client("FWD_RETURN", B11, VIP4, C1, DTLS, sport=50123),
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
        ("DROP_GENEVE_MALFORMED", raw(0x41, 0, 0x0800, b"")),  # rule 3.1 before 3.2
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
                step(pub(ipv6(C6[0], VIP6[0], 0, bytes(8) + seg6), 0x86DD), "PASS_NOT_UDP"),
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
            "IP fragments are passed to the kernel",
            [
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, frag=0x2000)), "PASS_FRAGMENT"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg, frag=0x00B9)), "PASS_FRAGMENT"),
                step(pub(ipv4(C1[0], VIP4[0], 17, seg[:5], frag=0x00B9)), "PASS_FRAGMENT"),
                step(pub(ipv6(C6[0], VIP6[0], 44, bytes(8) + seg6), 0x86DD), "PASS_FRAGMENT"),
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
                to_backend("FWD_PENDING", B21, C1, VIP4, DTLS),
            ],
            pending=[flow(C1, VIP4, B21)],
        ),
    ]


def rate_limits() -> list[Case]:
    c1b = (C1[0], 40001)
    c1c = (C1[0], 40002)
    return [
        case(
            "new-flow rate limit per source address",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_RATE_SOURCE", c1b, VIP4, check(T11)),
                to_backend("FWD_NEW_FLOW", B11, C2, VIP4, check(T11)),
                to_backend("FWD_PENDING", B11, C1, VIP4, check(T11)),
            ],
            {"rate": rate(source_interval=HOUR_NS)},
            pending=[flow(C1, VIP4, B11), flow(C2, VIP4, B11)],
        ),
        case(
            "per-source burst of two",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                to_backend("FWD_NEW_FLOW", B11, c1b, VIP4, check(T11)),
                at_vip("DROP_RATE_SOURCE", c1c, VIP4, check(T11)),
            ],
            {"rate": rate(source_interval=HOUR_NS, source_tolerance=HOUR_NS)},
        ),
        case(
            "new-flow rate limit of the relay",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_RATE_GLOBAL", C2, VIP4, check(T11)),
            ],
            {"rate": rate(global_interval=HOUR_NS)},
            pending=[flow(C1, VIP4, B11)],
        ),
        case(
            "source is checked before global",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_RATE_SOURCE", c1b, VIP4, check(T11)),
                at_vip("DROP_RATE_GLOBAL", C2, VIP4, check(T11)),
            ],
            {"rate": rate(source_interval=HOUR_NS, global_interval=HOUR_NS)},
        ),
        case(
            "refused and unforwardable first checks charge no bucket",
            [
                at_vip("DROP_TOKEN_MAC", C1, VIP4, check(T_FORGED)),
                at_vip("DROP_BACKEND_DRAINING", C1, VIP4, check(T13)),
                at_vip("SLOW_NO_NEIGH", C1, VIP4, check(T16)),
                at_vip("DROP_FIB", C1, VIP4, check(T17)),
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
            ],
            {"rate": rate(source_interval=HOUR_NS, global_interval=HOUR_NS)},
        ),
        case(
            "slow-path rate limit",
            [
                at_vip("SLOW_NO_FLOW", C1, VIP4, DTLS),
                at_vip("DROP_RATE_SLOW_PATH", C2, VIP4, DTLS),
                at_tunnel("DROP_RATE_SLOW_PATH", B11, VIP4, C1, DTLS),
                at_vip("DROP_RATE_SLOW_PATH", C1, VIP4, check(T16)),
                to_backend("FWD_NEW_FLOW", B11, C2, VIP4, check(T11)),
            ],
            {"rate": rate(slow_interval=HOUR_NS)},
        ),
        case(
            "slow-path burst of two, shared by both directions and NO_NEIGH",
            [
                at_vip("SLOW_NO_NEIGH", C1, VIP4, check(T16)),
                at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP4, C1, DTLS),
                at_vip("DROP_RATE_SLOW_PATH", C1, VIP4, DTLS),
            ],
            {"rate": rate(slow_interval=HOUR_NS, slow_tolerance=HOUR_NS)},
        ),
    ]


def ipv6_cases() -> list[Case]:
    return [
        case(
            "IPv6 client on the IPv6 VIP",
            [
                to_backend("FWD_NEW_FLOW", B11, C6, VIP6, check(T11)),
                to_backend("FWD_PENDING", B11, C6, VIP6, DTLS),
                to_client("FWD_RETURN_PENDING", B11, VIP6, C6, DTLS),
                to_client("FWD_CONFIRM", B11, VIP6, C6, success(C6)),
                to_client("FWD_RETURN", B11, VIP6, C6, RTP),
                to_backend("FWD_FLOW", B11, C6, VIP6, RTP),
            ],
            flows=[flow(C6, VIP6, B11)],
            pending=[],
        ),
        case(
            "IPv6 transceiver",
            [
                to_backend("FWD_NEW_FLOW", B15, C1, VIP4, check(T15)),
                to_client("FWD_CONFIRM", B15, VIP4, C1, success(C1)),
                to_backend("FWD_FLOW", B15, C1, VIP4, DTLS),
                to_backend("FWD_NEW_FLOW", B15, C6, VIP6, check(T15)),
                to_client("FWD_CONFIRM", B15, VIP6, C6, success(C6)),
                to_backend("FWD_FLOW", B15, C6, VIP6, RTP),
            ],
            flows=[flow(C1, VIP4, B15), flow(C6, VIP6, B15)],
        ),
        case(
            "IPv6 ICE restart from an IPv4 to an IPv6 transceiver",
            [
                to_backend("FWD_REROUTE", B15, C6, VIP6, check(T15)),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B11, VIP6, C6, DTLS),
                to_client("FWD_RETURN", B15, VIP6, C6, DTLS),
            ],
            {"flows": [flow(C6, VIP6, B11)]},
            flows=[flow(C6, VIP6, B15)],
        ),
    ]


def main() -> None:
    cases = (
        first_checks()
        + stun_rules()
        + truncations()
        + first_bytes()
        + flows_and_slow_path()
        + ice_restarts()
        + backend_states()
        + returns()
        + frames()
        + next_hops()
        + rate_limits()
        + ipv6_cases()
    )
    names = [c["name"] for c in cases]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate case names")
    doc = {
        "comment": "Generated by tests/data/make_packet_vectors.py from the icegate codecs; drives "
        "controlplane/datapath.py (tests/unit) and bpf/relay.c (tests/bpf). Format: docs/DATAPATH.md §9.",
        "topology": TOPOLOGY,
        "state": base_state(),
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
