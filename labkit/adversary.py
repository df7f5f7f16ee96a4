"""An adversarial packet sequence for the relay datapath (issue 12, docs/SECURITY.md).

:func:`scenario` builds one deterministic list of Ethernet frames on the §9 topology
(``labkit.packets``): real sessions that connect and then carry DTLS/RTP both ways,
interleaved with forged traffic of every kind the review found, and valid-token floods.
``tests/bpf/test_adversarial.py`` runs the same list through the XDP program
(``BPF_PROG_TEST_RUN``) and through the twin and compares them packet by packet.

Every frame carries its *kind*:

- ``legit``: a live session's packet (check, success, DTLS, RTP): must be forwarded;
- ``forged``: must never be forwarded (bad tokens, valid tokens for unknown, draining
  or dead transceivers, rotated-out keys, Geneve on the public side or from the wrong
  port, junk without a flow, fragments and extension headers, martians);
- ``replay``: a live session's own token from other (spoofed) addresses: forwarded at
  most up to its tag's burst, never more (the transceiver's mux refuses the address);
- ``move``: another session's valid token from a live client's address: the check may
  reach that transceiver, the live flow must not move;
- ``flood``: valid-token checks from many sources and from one IPv6 /64;
- ``newcomer``: a legitimate client connecting after the floods: must be forwarded.

Rates are GCRA intervals of an hour with bursts (like the vectors), so the outcome does
not depend on timing and both datapaths must agree on every packet.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any

from icegate import token
from labkit import packets as pb

HOUR_NS = pb.HOUR_NS
ROLES = {"public": "public", "private": "private"}
SOURCE_BURST, TAG_BURST, SLOW_SOURCE_BURST, PENDING_CAP = 3, 5, 3, 8
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ROTATED_OUT_KEY = bytes(range(100, 116))  # a key id 0 the relay no longer holds


def rate_state() -> dict[str, int]:
    """The ``state.rate`` of the run: bursts small enough to be reached, hour refills."""
    huge = 100_000  # global budgets never reached: a flood is stopped by its own buckets
    return pb.rate(
        source_interval=HOUR_NS,
        source_tolerance=(SOURCE_BURST - 1) * HOUR_NS,
        tag_interval=HOUR_NS,
        tag_tolerance=(TAG_BURST - 1) * HOUR_NS,
        global_interval=1000,
        global_tolerance=huge * 1000,
        slow_interval=1000,
        slow_tolerance=huge * 1000,
        slow_source_interval=HOUR_NS,
        slow_source_tolerance=(SLOW_SOURCE_BURST - 1) * HOUR_NS,
        pending_timeout=HOUR_NS,
        pending_max_packets=PENDING_CAP,
    )


def state() -> dict[str, Any]:
    return {**pb.base_state(), "rate": rate_state(), "roles": ROLES, "flows": [], "pending": []}


@dataclass(frozen=True, slots=True)
class Frame:
    frame: bytes
    ingress: str
    kind: str  # legit | forged | replay | move | flood | newcomer
    category: str  # what it tries, for the report


@dataclass
class Scenario:
    frames: list[Frame] = field(default_factory=list)
    sessions: list[tuple[tuple[str, int], pb.B, str]] = field(default_factory=list)  # client, backend, ufrag
    newcomer: tuple[str, int] = ("100.64.200.200", 41000)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.frames if f.kind == kind)


class _Sources:
    """Distinct spoofed client addresses (no address repeats: bucket LRU order cannot matter)."""

    def __init__(self) -> None:
        self.v4 = int(ipaddress.IPv4Address("100.66.0.0"))
        self.v6 = int(ipaddress.IPv6Address("2001:db8:100:8000::"))

    def next(self, rnd: random.Random) -> tuple[str, int]:
        if rnd.random() < 0.8:
            self.v4 += 1
            return str(ipaddress.IPv4Address(self.v4)), rnd.randrange(1024, 65536)
        self.v6 += 1 << 64  # a new /64 each: the per-source buckets key IPv6 by /64
        return str(ipaddress.IPv6Address(self.v6)), rnd.randrange(1024, 65536)


def _vip(client: tuple[str, int]) -> tuple[str, int, int]:
    return pb.VIP6 if ":" in client[0] else pb.VIP4


def _check(client: tuple[str, int], ufrag: str) -> bytes:
    return pb.from_client(pb.client_packet(client, _vip(client), pb.check(ufrag)))


def _to_client(b: pb.B, client: tuple[str, int], payload: bytes, **kw: Any) -> bytes:
    return pb.returned(b, pb.reply(_vip(client), client, payload), **kw)


def _mutate(ufrag: str, rnd: random.Random) -> str:
    i = rnd.randrange(len(ufrag))
    choices = [c for c in _ALPHABET + "-_." if c != ufrag[i]]
    return ufrag[:i] + rnd.choice(choices) + ufrag[i + 1 :]


def _forged(rnd: random.Random, sources: _Sources, sessions: list[Any]) -> Frame:
    """One forged packet of a random category."""
    client = sources.next(rnd)
    live_client, live_b, live_ufrag = rnd.choice(sessions)
    kind = rnd.randrange(12)
    if kind == 0:
        return Frame(
            _check(client, "".join(rnd.choice(_ALPHABET) for _ in range(24))), "public", "forged", "random"
        )
    if kind == 1:
        return Frame(_check(client, _mutate(live_ufrag, rnd)), "public", "forged", "mutation")
    if kind == 2:
        b = rnd.choice([pb.B13, pb.B14])  # draining, dead
        return Frame(
            _check(client, pb.tok(b, nonce=rnd.randrange(1, 1 << 40))), "public", "forged", "refused backend"
        )
    if kind == 3:
        ufrag = token.mint(0, pb.KEYS[0], 1, 99, rnd.randrange(1, 1 << 40))  # valid MAC, no such transceiver
        return Frame(_check(client, ufrag), "public", "forged", "unknown backend")
    if kind == 4:
        ufrag = token.mint(0, ROTATED_OUT_KEY, live_b.cluster, live_b.index, rnd.randrange(1, 1 << 40))
        return Frame(_check(client, ufrag), "public", "forged", "rotated-out key")
    if kind == 5:
        ufrag = token.mint(2, ROTATED_OUT_KEY, live_b.cluster, live_b.index, rnd.randrange(1, 1 << 40))
        return Frame(_check(client, ufrag), "public", "forged", "withdrawn key id")
    if kind == 6:  # finding 3: Geneve with a transceiver's source, on the public side
        frame = _to_client(live_b, client, bytes([22, 0xFE, 0xFD]) + rnd.randbytes(1300))
        return Frame(frame, "public", "forged", "geneve on the public side")
    if kind == 7:  # the owner's address, not its Geneve port
        frame = _to_client(live_b, live_client, pb.DTLS, sport=rnd.randrange(1024, 6000))
        return Frame(frame, "private", "forged", "geneve from the wrong port")
    if kind == 8:  # finding 6: junk without a flow from many sources
        payload = bytes([rnd.choice((22, 23, 0x80))]) + rnd.randbytes(rnd.randrange(20, 200))
        return Frame(
            pb.from_client(pb.client_packet(client, _vip(client), payload)), "public", "forged", "junk"
        )
    if kind == 9:  # finding 4
        v6 = ":" in client[0]
        seg = pb.udp(client[0], client[1], _vip(client)[0], 3478, pb.check(live_ufrag))
        if v6:
            packet = pb.ipv6(client[0], pb.VIP6[0], rnd.choice((44, 60, 0)), bytes(8) + seg)
            return Frame(
                pb.eth(pb.PUB_MAC, pb.GW_MAC, 0x86DD, packet), "public", "forged", "fragment/extension"
            )
        packet = pb.ipv4(client[0], pb.VIP4[0], 17, seg, frag=rnd.choice((0x2000, 0x00B9)))
        return Frame(pb.eth(pb.PUB_MAC, pb.GW_MAC, 0x0800, packet), "public", "forged", "fragment/extension")
    if kind == 10:  # finding 8
        martian = rnd.choice(["127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", pb.VIP4[0], pb.TUNNEL4])
        return Frame(_check((martian, client[1]), live_ufrag), "public", "forged", "martian source")
    # client traffic on the private side (finding 3's other half)
    frame = pb.from_client(pb.client_packet(live_client, _vip(live_client), pb.RTP))
    return Frame(frame, "private", "forged", "client on the private side")


def scenario(forged: int, seed: int = 12, sessions: int = 12, rounds: int = 0) -> Scenario:
    """``forged`` forged packets interleaved with ``sessions`` live sessions' traffic
    (``rounds`` packets each way per session, default enough to spread across the run)."""
    rnd = random.Random(seed)
    sc = Scenario()
    backends = [pb.B11, pb.B12, pb.B15]
    for i in range(sessions):
        client = (f"100.64.1.{10 + i}", 40000 + i) if i % 3 else (f"2001:db8:100:{i + 1:x}::10", 40000 + i)
        b = backends[i % len(backends)]
        sc.sessions.append((client, b, pb.tok(b, nonce=1000 + i)))
    # set-up: each session's check, then its transceiver's success response
    for client, b, ufrag in sc.sessions:
        sc.frames.append(Frame(_check(client, ufrag), "public", "legit", "check"))
        sc.frames.append(Frame(_to_client(b, client, pb.success(client)), "private", "legit", "success"))
    rounds = rounds or max(10, forged // (4 * sessions))
    legit: list[Frame] = []
    for _ in range(rounds):
        for client, b, ufrag in sc.sessions:
            payload = pb.RTP if rnd.random() < 0.8 else pb.DTLS
            legit.append(
                Frame(
                    pb.from_client(pb.client_packet(client, _vip(client), payload)),
                    "public",
                    "legit",
                    "media in",
                )
            )
            legit.append(Frame(_to_client(b, client, payload), "private", "legit", "media out"))
            if rnd.random() < 0.05:  # consent freshness: the session's own checks keep flowing
                legit.append(Frame(_check(client, ufrag), "public", "legit", "consent check"))
    sources = _Sources()
    attack: list[Frame] = [_forged(rnd, sources, sc.sessions) for _ in range(forged)]
    # replays of live tokens from other addresses, and another session's token into live flows
    attacker = pb.tok(pb.B12, nonce=77_001)
    for _ in range(max(20, forged // 50)):
        client, b, ufrag = rnd.choice(sc.sessions)
        attack.append(Frame(_check(sources.next(rnd), ufrag), "public", "replay", "replayed token"))
        target = attacker if b != pb.B12 else pb.tok(pb.B11, nonce=77_002)
        attack.append(Frame(_check(client, target), "public", "move", "spoofed check into a live flow"))
    rnd.shuffle(attack)
    # interleave: attack packets spread evenly through the legit traffic
    merged: list[Frame] = []
    step = max(1, len(attack) // max(1, len(legit)))
    a = 0
    for frame in legit:
        merged.append(frame)
        merged.extend(attack[a : a + step])
        a += step
    merged.extend(attack[a:])
    sc.frames.extend(merged)
    # floods of valid tokens: many sources with one token, one /64 with another
    flood_many = pb.tok(pb.B11, nonce=88_001)
    for i in range(max(100, forged // 20)):
        sc.frames.append(
            Frame(_check(sources.next(rnd), flood_many), "public", "flood", "many sources, one token")
        )
        one64 = (str(ipaddress.IPv6Address("2001:db8:100:77::") + i + 1), 50000)
        sc.frames.append(Frame(_check(one64, pb.tok(pb.B11, nonce=89_000 + i)), "public", "flood", "one /64"))
    # a legitimate newcomer connects after the floods
    newcomer_ufrag = pb.tok(pb.B11, nonce=99_001)
    sc.frames.append(Frame(_check(sc.newcomer, newcomer_ufrag), "public", "newcomer", "check"))
    sc.frames.append(
        Frame(_to_client(pb.B11, sc.newcomer, pb.success(sc.newcomer)), "private", "newcomer", "success")
    )
    sc.frames.append(
        Frame(pb.from_client(pb.client_packet(sc.newcomer, pb.VIP4, pb.DTLS)), "public", "newcomer", "DTLS")
    )
    return sc


_BACKEND_ADDRS = {ipaddress.ip_address(b.address) for b in pb.BACKENDS}


def destination(output: bytes) -> tuple[str, int]:
    """(address, UDP port) a forwarded packet (from its IP header on) is sent to."""
    if output[0] >> 4 == 4:
        u = (output[0] & 0xF) * 4
        return str(ipaddress.IPv4Address(output[16:20])), int.from_bytes(output[u + 2 : u + 4], "big")
    return str(ipaddress.IPv6Address(output[24:40])), int.from_bytes(output[42:44], "big")


def is_return(output: bytes) -> bool:
    """Is a forwarded packet a return to a client (not Geneve to a transceiver)?"""
    return ipaddress.ip_address(destination(output)[0]) not in _BACKEND_ADDRS
