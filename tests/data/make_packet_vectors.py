"""Regenerate tests/data/packets.json: ``python -m tests.data.make_packet_vectors``.

The shared packet vectors of docs/DATAPATH.md §9, deterministic. Every step names the
counter, action, egress, MACs and output bytes the specification demands; the frames and
the expected outputs come from the icegate codecs (``labkit/packets.py``), not from
either implementation. ``controlplane.datapath.engine.Datapath.process_frame``
(tests/unit/test_datapath.py) and the XDP program (tests/bpf/) must reproduce them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from icegate import stun
from icegate.rfc7983 import PacketKind, classify
from labkit.packets import (
    B11,
    B12,
    B13,
    B14,
    B15,
    BACKENDS,
    C1,
    C2,
    C6,
    DTLS,
    HOUR_NS,
    RTP,
    T11,
    T11_KEY1,
    T11_NONCE2,
    T11_VERSION0,
    T12,
    T13,
    T14,
    T15,
    T16,
    T17,
    T19,
    T_FORGED,
    T_FORGED_TAG,
    T_STEER,
    T_UNKNOWN_KEY,
    T_VERSION2,
    TOPOLOGY,
    VIP4,
    VIP6,
    VIP_ALT,
    at_tunnel,
    at_vip,
    base_state,
    case,
    check,
    client_packet,
    flow,
    from_client,
    rate,
    step,
    stun_message,
    success,
    to_backend,
    to_client,
)
from tests.data.packet_cases_harden import hardening
from tests.data.packet_cases_wire import frames, next_hops, returns

OUT = Path(__file__).with_name("packets.json")
Case = dict[str, Any]


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
                at_vip("DROP_PENDING_NOT_STUN", C1, VIP4, DTLS),
                to_backend("FWD_PENDING", B11, C1, VIP4, check(T11)),
                at_vip("DROP_PENDING_NOT_STUN", C1, VIP4, RTP),
                to_client("FWD_CONFIRM", B11, VIP4, C1, success(C1)),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
            ],
            pending=[],
            flows=[flow(C1, VIP4, B11)],
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
                at_tunnel("DROP_PENDING_NOT_STUN", B11, VIP4, C1, DTLS),
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
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B13, VIP4, C1, DTLS),
                at_tunnel("DROP_PENDING_NOT_STUN", B12, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, success(C1)),
            ],
            {"flows": [flow(C1, VIP4, B11)], "pending": [flow(C1, VIP4, B12)]},
        ),
    ]


def ice_restarts() -> list[Case]:
    confirmed = {"flows": [flow(C1, VIP4, B11)]}
    return [
        case(
            "ICE restart to another transceiver moves a confirmed flow once it answers",
            [
                to_backend("FWD_MOVE_PENDING", B12, C1, VIP4, check(T12)),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, DTLS),
                at_tunnel("DROP_PENDING_NOT_STUN", B12, VIP4, C1, DTLS),
                to_backend("FWD_MOVE_PENDING", B12, C1, VIP4, check(T12)),
                to_client("FWD_MOVE_CONFIRM", B12, VIP4, C1, success(C1)),
                to_backend("FWD_FLOW", B12, C1, VIP4, DTLS),
                at_tunnel("DROP_RETURN_WRONG_BACKEND", B11, VIP4, C1, DTLS),
                to_client("FWD_RETURN", B12, VIP4, C1, DTLS),
                to_backend("FWD_FLOW", B12, C1, VIP4, check(T12)),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B12)],
            pending=[],
        ),
        case(
            "a spoofed check with another session's token does not move a live flow",
            [
                to_backend("FWD_MOVE_PENDING", B12, C1, VIP4, check(T12)),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, RTP),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B11)],
            pending=[flow(C1, VIP4, B12)],
        ),
        case(
            "ICE restart on the same transceiver is immediate",
            [
                to_backend("FWD_REROUTE", B11, C1, VIP4, check(T11_NONCE2)),
                to_backend("FWD_FLOW", B11, C1, VIP4, check(T11_NONCE2)),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
            ],
            confirmed,
            flows=[flow(C1, VIP4, B11, T11_NONCE2)],
        ),
        case(
            "ICE restart re-routes a pending flow",
            [
                to_backend("FWD_REROUTE", B12, C1, VIP4, check(T12)),
                to_backend("FWD_PENDING", B12, C1, VIP4, check(T12)),
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
                at_vip("DROP_PENDING_NOT_STUN", C6, VIP6, DTLS),
                at_tunnel("DROP_PENDING_NOT_STUN", B11, VIP6, C6, DTLS),
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
                to_backend("FWD_MOVE_PENDING", B15, C6, VIP6, check(T15)),
                to_client("FWD_MOVE_CONFIRM", B15, VIP6, C6, success(C6)),
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
        + hardening()
    )
    names = [c["name"] for c in cases]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate case names")
    doc = {
        "comment": "Generated by tests/data/make_packet_vectors.py from the icegate codecs; drives "
        "controlplane/datapath/engine.py (tests/unit) and bpf/relay.c (tests/bpf). "
        "Format: docs/DATAPATH.md §9.",
        "topology": TOPOLOGY,
        "state": base_state(),
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
