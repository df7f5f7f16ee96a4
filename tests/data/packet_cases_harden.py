"""Shared packet vectors for the policies around the parser (issue 12, docs/SECURITY.md).

One case per finding of the review: each failed on the code before the fix and runs
through the XDP program (tests/bpf/test_vectors.py) and the twin
(tests/unit/test_datapath.py) like every other case of ``packets.json``.
"""

from __future__ import annotations

from typing import Any

from labkit.packets import (
    B11,
    B12,
    B21,
    C1,
    C2,
    C6,
    DTLS,
    HOUR_NS,
    T11,
    T11_NONCE2,
    T12,
    T21,
    TUNNEL4,
    VIP4,
    VIP6,
    at_tunnel,
    at_vip,
    case,
    check,
    client_packet,
    flow,
    from_client,
    rate,
    reply,
    returned,
    step,
    stun_message,
    success,
    to_backend,
    to_client,
)

Case = dict[str, Any]
ROLES = {"public": "public", "private": "private"}  # ingress name -> role (§1 r8)


def martians() -> list[Case]:
    v4 = ["0.0.0.1", "127.0.0.1", "224.0.0.5", "240.0.0.1", "255.255.255.255", VIP4[0], TUNNEL4]
    v6 = ["::", "::1", "ff02::1", "::ffff:100.64.1.2", "::100.64.1.2"]
    return [
        case(
            "martian sources are dropped before any rule (finding 8)",
            [at_vip("DROP_MARTIAN", (a, 40000), VIP4, check(T11)) for a in v4]
            + [at_vip("DROP_MARTIAN", (a, 40000), VIP6, check(T11)) for a in v6]
            + [to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11))],
            pending=[flow(C1, VIP4, B11)],
        )
    ]


def buckets() -> list[Case]:
    same64 = ("2001:db8:100::99", 40000)
    other64 = ("2001:db8:100:1::5", 40000)
    return [
        case(
            "an IPv6 /64 shares one new-flow bucket (finding 1)",
            [
                to_backend("FWD_NEW_FLOW", B11, C6, VIP6, check(T11)),
                at_vip("DROP_RATE_SOURCE", same64, VIP6, check(T12)),
                to_backend("FWD_NEW_FLOW", B12, other64, VIP6, check(T12)),
            ],
            {"rate": rate(source_interval=HOUR_NS)},
        ),
        case(
            "one token opens new flows at its tag's rate, whatever the source (finding 1)",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_RATE_TOKEN", C2, VIP4, check(T11)),
                at_vip("DROP_RATE_TOKEN", C6, VIP6, check(T11)),
                to_backend("FWD_NEW_FLOW", B12, C2, VIP4, check(T12)),
                to_backend("FWD_NEW_FLOW", B11, C6, VIP6, check(T11_NONCE2)),
            ],
            {"rate": rate(tag_interval=HOUR_NS)},
        ),
        case(
            "the slow path has a budget per source, IPv6 per /64 (finding 6)",
            [
                at_vip("SLOW_NO_FLOW", C1, VIP4, DTLS),
                at_vip("DROP_RATE_SLOW_SOURCE", (C1[0], 40001), VIP4, DTLS),
                at_vip("SLOW_NO_FLOW", C2, VIP4, DTLS),
                at_vip("SLOW_NO_FLOW", C6, VIP6, DTLS),
                at_vip("DROP_RATE_SLOW_SOURCE", ("2001:db8:100::99", 40000), VIP6, DTLS),
                at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP4, C1, DTLS),
                at_tunnel("SLOW_RETURN_NO_FLOW", B11, VIP4, C2, DTLS),
            ],
            {"rate": rate(slow_source_interval=HOUR_NS)},
        ),
    ]


def pending_limits() -> list[Case]:
    transceiver_check = check(username=b"cLnT:" + T11.encode())
    return [
        case(
            "a pending flow times out (finding 1)",
            [
                at_tunnel("SLOW_RETURN_NO_FLOW", B12, VIP4, C1, success(C1)),
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                to_client("FWD_CONFIRM", B11, VIP4, C1, success(C1)),
            ],
            {"pending": [flow(C1, VIP4, B12)], "rate": rate(pending_timeout=10**9)},
            flows=[flow(C1, VIP4, B11)],
            pending=[],
        ),
        case(
            "a pending flow carries only STUN, a few packets each way (finding 8)",
            [
                to_backend("FWD_NEW_FLOW", B11, C1, VIP4, check(T11)),
                at_vip("DROP_PENDING_NOT_STUN", C1, VIP4, DTLS),
                to_backend("FWD_PENDING", B11, C1, VIP4, check(T11)),
                at_vip("DROP_PENDING_CAP", C1, VIP4, check(T11)),
                at_tunnel("DROP_PENDING_NOT_STUN", B11, VIP4, C1, DTLS),
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, transceiver_check),
                to_client("FWD_RETURN_PENDING", B11, VIP4, C1, stun_message(0x0111, [])),
                at_tunnel("DROP_PENDING_CAP", B11, VIP4, C1, success(C1)),
            ],
            {"rate": rate(pending_max_packets=2)},
            pending=[flow(C1, VIP4, B11)],
            flows=[],
        ),
    ]


def roles() -> list[Case]:
    spoofed_private = ("10.70.0.11", 40000)  # a client claiming B11's private address
    return [
        case(
            "clients only on public interfaces, Geneve only on private ones (finding 3)",
            [
                step(from_client(client_packet(C1, VIP4, DTLS)), "DROP_WRONG_IFACE", "private"),
                step(returned(B11, reply(VIP4, C1, DTLS)), "DROP_WRONG_IFACE", "public"),
                to_backend("FWD_FLOW", B11, C1, VIP4, DTLS),
                to_client("FWD_RETURN", B11, VIP4, C1, DTLS),
            ],
            {"roles": ROLES, "flows": [flow(C1, VIP4, B11)]},
        ),
        case(
            "no return into the private network, no tunnel out of the public one (finding 8)",
            [
                at_tunnel("DROP_EGRESS_ROLE", B11, VIP4, spoofed_private, DTLS),
                at_vip("DROP_EGRESS_ROLE", C1, VIP4, check(T21)),
            ],
            {"roles": ROLES, "flows": [flow(spoofed_private, VIP4, B11)]},
            pending=[],
        ),
    ]


def hardening() -> list[Case]:
    return martians() + buckets() + pending_limits() + roles()


__all__ = ["B21", "hardening"]
