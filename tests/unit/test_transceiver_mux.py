"""transceiver.mux: real Geneve/IP bytes over a real loopback socket, both directions."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from aioice import stun

from icegate import geneve, inet
from icegate.config import load
from icegate.errors import ConfigError
from transceiver.config import TransceiverConfig
from transceiver.mux import Addr, TunnelMux, Vip

VNI = 7
VIP1 = ("192.0.2.10", 3478)
VIP2 = ("192.0.2.20", 3478)
CLIENT = ("100.64.1.2", 40000)
UFRAG = "EAABAAdKXVR3FruGuX+P0BJ/"
UFRAG_B = "BAABAAdKXVR3FruGuX+P0BJ/"


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Addr]] = []

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.got.append((data, addr))


class RelaySide:
    """A plain UDP socket standing where the relay's tunnel endpoint would be (it forwards nothing)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.addr: Addr = self.sock.getsockname()

    def send(self, inner: bytes, to: Addr, *, vni: int = 0) -> None:
        self.sock.sendto(geneve.encapsulate(inner, vni), to)

    async def recv(self, timeout: float = 2.0) -> tuple[geneve.GeneveHeader, inet.UdpPacket, bytes]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        header, inner = geneve.decapsulate(data)
        return header, inet.parse_udp(inner), inner

    async def nothing(self, wait: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(wait)


def binding_request(username: str | None) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1
    return bytes(msg)


def dtls_record() -> bytes:
    return bytes([22, 0xFE, 0xFD]) + bytes(10) + b"\x00\x04abcd"


def packet(src: Addr, dst: Addr, payload: bytes, *, checksum: bool = True) -> bytes:
    return inet.build_udp(src[0], src[1], dst[0], dst[1], payload, with_checksum=checksum)


def assert_complete(raw: bytes, inner: inet.UdpPacket) -> None:
    """The relay forwards the inner packet untouched: its IPv4 and UDP checksums must verify."""
    segment = raw[inner.header_len :]
    (stored,) = struct.unpack_from("!H", segment, 6)
    zeroed = segment[:6] + b"\x00\x00" + segment[8:]
    src, dst = inet.packed_address(inner.src), inet.packed_address(inner.dst)
    assert stored == inet.udp_checksum(src, dst, zeroed)
    assert inet.checksum(raw[: inner.header_len]) == 0


Scenario = Callable[[TunnelMux, Addr, RelaySide], Awaitable[None]]


def run(scenario: Scenario, *, hold_packets: int = 4, hold_s: float = 1.0) -> TunnelMux:
    async def main() -> TunnelMux:
        relay = RelaySide()
        vips = [Vip(*VIP1, relay.addr[1]), Vip(*VIP2, relay.addr[1])]
        mux = TunnelMux(VNI, vips, hold_packets=hold_packets, hold_s=hold_s)
        bound = await mux.bind("127.0.0.1", 0)
        try:
            await scenario(mux, bound, relay)
        finally:
            mux.close()
            relay.sock.close()
        return mux

    return asyncio.run(main())


RelaysScenario = Callable[[TunnelMux, Addr, list[RelaySide]], Awaitable[None]]


def run_relays(scenario: RelaysScenario, hosts: tuple[str, ...] = ("127.0.0.2", "127.0.0.3")) -> TunnelMux:
    """One relay per host, all on one Geneve port (as in a deployment: 6081 on every relay).

    The mux returns to (outer source address, the VIP's configured tunnel port), so relays
    are told apart by address; both VIPs name that shared port.
    """

    async def main() -> TunnelMux:
        relays = [RelaySide(hosts[0])]
        try:
            port = relays[0].addr[1]
            relays += [RelaySide(host, port) for host in hosts[1:]]
            mux = TunnelMux(VNI, [Vip(*VIP1, port), Vip(*VIP2, port)], hold_packets=4, hold_s=1.0)
            bound = await mux.bind("127.0.0.1", 0)
            try:
                await scenario(mux, bound, relays)
            finally:
                mux.close()
        finally:
            for relay in relays:
                relay.sock.close()
        return mux

    return asyncio.run(main())


async def settle(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_stun_is_routed_by_ufrag_then_other_packets_by_flow() -> None:
    rec1, rec2 = Recorder(), Recorder()

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        route = mux.open_route(UFRAG)
        route.receivers.update({VIP1: rec1, VIP2: rec2})
        check = binding_request(f"{UFRAG}:clnt")
        relay.send(packet(CLIENT, VIP1, check), bound)
        await settle(lambda: len(rec1.got) == 1)
        assert rec1.got[0] == (check, CLIENT)
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: len(rec1.got) == 2)
        assert rec1.got[1] == (dtls_record(), CLIENT)
        assert not rec2.got
        assert mux.flows == 1

    mux = run(scenario)
    assert mux.counters["in", "delivered"] == 2


def test_return_is_geneve_to_the_relay_with_a_complete_inner_packet() -> None:
    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = Recorder()
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:clnt")), bound)
        await settle(lambda: mux.flows == 1)
        payload = b"\x80\x00" + bytes(30)  # RTP range
        mux.send(route, VIP1, CLIENT, payload)
        header, inner, raw = await relay.recv()
        assert header.vni == VNI and header.protocol == geneve.PROTO_IPV4 and not header.options
        assert (inner.src, inner.sport, inner.dst, inner.dport) == (*VIP1, *CLIENT)
        assert inner.payload == payload
        assert_complete(raw, inner)

    mux = run(scenario)
    assert mux.counters["out", "sent"] == 1


def test_inner_udp_checksum_is_not_verified() -> None:
    rec = Recorder()

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        mux.open_route(UFRAG).receivers[VIP1] = rec
        bad = bytearray(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:clnt")))
        bad[26] ^= 0xFF  # UDP checksum field of an IPv4 packet without options
        relay.send(bytes(bad), bound)
        await settle(lambda: len(rec.got) == 1)

    run(scenario)


@pytest.mark.parametrize(
    ("make", "result"),
    [
        (lambda: packet(CLIENT, VIP1, binding_request("AAAAAAAAAAAAAAAAAAAAAAAA:clnt")), "unknown_ufrag"),
        (lambda: packet(CLIENT, VIP1, dtls_record()), "no_flow"),
        (lambda: packet(CLIENT, VIP1, binding_request(None)), "no_flow"),
        (lambda: packet(CLIENT, ("192.0.2.99", 3478), binding_request(f"{UFRAG}:x")), "not_vip"),
        (lambda: packet(CLIENT, (VIP1[0], 3479), dtls_record()), "not_vip"),
        (lambda: b"\x45" + bytes(10), "malformed"),
    ],
)
def test_unknown_packets_are_counted_and_dropped(make: Callable[[], bytes], result: str) -> None:
    rec = Recorder()

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        mux.open_route(UFRAG).receivers.update({VIP1: rec, VIP2: rec})
        relay.send(make(), bound)
        await settle(lambda: sum(mux.counters.values()) == 1)
        await relay.nothing(0.05)

    mux = run(scenario)
    assert mux.counters == {("in", result): 1}
    assert not rec.got


def test_geneve_that_icegate_never_sends_is_malformed() -> None:
    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        inner = packet(CLIENT, VIP1, dtls_record())
        relay.sock.sendto(geneve.pack_header(0, geneve.PROTO_IPV4, oam=True) + inner, bound)
        relay.sock.sendto(geneve.pack_header(0, 0x6558) + inner, bound)  # Ethernet payload
        relay.sock.sendto(b"\x00\x00", bound)
        await settle(lambda: mux.counters["in", "malformed"] == 3)

    run(scenario)


def test_sends_to_an_unseen_client_are_held_then_flushed_in_order() -> None:
    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = Recorder()
        other = ("100.64.9.9", 5000)
        mux.send(route, VIP1, CLIENT, b"\x00first")
        mux.send(route, VIP1, other, b"\x00other")
        mux.send(route, VIP1, CLIENT, b"\x00second")
        await relay.nothing(0.1)  # the relay would drop them: no flow yet
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:clnt")), bound)
        first = await relay.recv()
        second = await relay.recv()
        assert [first[1].payload, second[1].payload] == [b"\x00first", b"\x00second"]
        assert len(route.held) == 1  # the other client's packet waits on

    mux = run(scenario)
    assert mux.counters["out", "held"] == 3
    assert mux.counters["out", "flushed"] == 2


def test_held_packets_are_bounded_and_expire() -> None:
    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = Recorder()
        for i in range(6):
            mux.send(route, VIP1, CLIENT, bytes([0, i]))
        assert [d for _, _, d in route.held] == [bytes([0, i]) for i in range(2, 6)]
        await settle(lambda: not route.held, timeout=1.0)
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:clnt")), bound)
        await relay.nothing(0.1)

    mux = run(scenario, hold_packets=4, hold_s=0.2)
    assert mux.counters["out", "hold_overflow"] == 2
    assert mux.counters["out", "hold_expired"] == 4


def test_closed_route_forgets_its_flows_and_ufrag() -> None:
    rec = Recorder()

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = rec
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:clnt")), bound)
        await settle(lambda: mux.flows == 1)
        mux.close_route(route)
        assert (mux.routes, mux.flows) == (0, 0)
        mux.send(route, VIP1, CLIENT, b"\x80late")
        # The client's last packets, crossing the end of its session: "closed", not "no_flow"
        # (issue 15: the transceivers' no_flow at 24 sessions were these, from starved clients).
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: mux.counters["in", "closed"] == 1)
        assert mux.counters["in", "no_flow"] == 0
        # A client this mux never knew is still no_flow.
        relay.send(packet(("198.51.100.9", 4000), VIP1, dtls_record()), bound)
        await settle(lambda: mux.counters["in", "no_flow"] == 1)
        with pytest.raises(ValueError, match="already routed"):
            mux.open_route(UFRAG)
            mux.open_route(UFRAG)

    mux = run(scenario)
    assert mux.counters["out", "closed"] == 1
    assert len(rec.got) == 1


def test_a_client_address_reused_by_a_new_session_moves_the_flow() -> None:
    """Once the old session is gone (closed, or idle past owner_idle_s) the address moves."""
    old, new, third = Recorder(), Recorder(), Recorder()
    other, another = "BAABAAdKXVR3FruGuX+P0BJ/", "CAABAAdKXVR3FruGuX+P0BJ/"

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        mux.owner_idle_s = 0.05
        old_route = mux.open_route(UFRAG)
        old_route.receivers[VIP1] = old
        mux.open_route(other).receivers[VIP1] = new
        mux.open_route(another).receivers[VIP1] = third
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        await settle(lambda: len(old.got) == 1)
        mux.close_route(old_route)
        relay.send(packet(CLIENT, VIP1, binding_request(f"{other}:b")), bound)
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: mux.counters["in", "delivered"] == 3)
        await asyncio.sleep(0.1)  # the owner falls idle: no timing asserted, only the order
        relay.send(packet(CLIENT, VIP1, binding_request(f"{another}:c")), bound)
        await settle(lambda: mux.counters["in", "delivered"] == 4)

    run(scenario)
    assert (len(old.got), len(new.got), len(third.got)) == (1, 2, 1)


def test_an_address_owned_by_a_live_session_is_not_handed_to_another() -> None:
    """Issue 12, findings 2 and 7: another session's authentic check from a live session's
    address (a spoofed source) is not delivered, so aioice never answers it and the
    relay never confirms or moves the flow; the victim's packets keep their session."""
    victim, attacker = Recorder(), Recorder()
    password = "attacker-password-22ch"

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        mux.open_route(UFRAG).receivers[VIP1] = victim
        mux.open_route(UFRAG_B, password).receivers[VIP1] = attacker
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:v")), bound)
        await settle(lambda: len(victim.got) == 1)
        for _ in range(3):
            relay.send(packet(CLIENT, VIP1, signed_request(f"{UFRAG_B}:x", password)), bound)
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: len(victim.got) == 2)
        assert mux.counters["in", "address_owned"] == 3

    run(scenario)
    assert not attacker.got and victim.got[1][0] == dtls_record()


def test_ipv6_inner_packets() -> None:
    vip6, client6 = ("2001:db8:1::10", 3478), ("2001:db8:100::2", 41000)
    rec = Recorder()

    async def main() -> None:
        relay = RelaySide()
        mux = TunnelMux(VNI, [Vip(*vip6, relay.addr[1])])
        bound = await mux.bind("127.0.0.1", 0)
        try:
            route = mux.open_route(UFRAG)
            route.receivers[vip6] = rec
            relay.send(packet(client6, vip6, binding_request(f"{UFRAG}:c")), bound)
            await settle(lambda: len(rec.got) == 1)
            assert rec.got[0][1] == client6
            mux.send(route, vip6, client6, b"\x80six")
            header, inner, _ = await relay.recv()
            assert header.protocol == geneve.PROTO_IPV6
            assert (inner.src, inner.dst, inner.payload) == (vip6[0], client6[0], b"\x80six")
        finally:
            mux.close()
            relay.sock.close()

    asyncio.run(main())


@pytest.mark.parametrize("vip_b", [VIP1, VIP2], ids=["same_vip", "other_vip"])
def test_each_session_returns_through_the_relay_it_came_through(vip_b: Addr) -> None:
    """Two relays; session A is reached through relay 1, session B through relay 2.

    Every packet of each session, held ones included, leaves as Geneve to its own relay:
    inner VIP:3478 -> client with complete checksums, and nothing reaches the other relay.
    """
    client_a, client_b = CLIENT, ("100.64.7.8", 50000)

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        relay1, relay2 = relays
        a, b = mux.open_route(UFRAG), mux.open_route(UFRAG_B)
        for route in (a, b):
            route.receivers.update({VIP1: Recorder(), VIP2: Recorder()})
        # aioice checks the offer's candidates before the client's own check arrives: held.
        mux.send(a, VIP1, client_a, b"\x00a-held")
        mux.send(b, vip_b, client_b, b"\x00b-held")
        relay1.send(packet(client_a, VIP1, binding_request(f"{UFRAG}:a")), bound)
        relay2.send(packet(client_b, vip_b, binding_request(f"{UFRAG_B}:b")), bound)
        await settle(lambda: mux.counters["out", "flushed"] == 2)
        for i in range(3):
            mux.send(a, VIP1, client_a, b"\x80a" + bytes([i]))
            mux.send(b, vip_b, client_b, b"\x80b" + bytes([i]))
        for relay, vip, client, tag in ((relay1, VIP1, client_a, b"a"), (relay2, vip_b, client_b, b"b")):
            payloads = []
            for _ in range(4):
                header, inner, raw = await relay.recv()
                assert header.vni == VNI and header.protocol == geneve.PROTO_IPV4
                assert (inner.src, inner.sport, inner.dst, inner.dport) == (*vip, *client)
                assert_complete(raw, inner)
                payloads.append(inner.payload)
            assert payloads == [b"\x00" + tag + b"-held"] + [b"\x80" + tag + bytes([i]) for i in range(3)]
        await relay1.nothing(0.05)
        await relay2.nothing(0.05)

    mux = run_relays(scenario)
    assert mux.counters == {
        ("in", "delivered"): 2,
        ("out", "held"): 2,
        ("out", "flushed"): 2,
        ("out", "sent"): 8,
    }


def test_returns_follow_the_last_stun_check_even_from_a_relay_never_seen() -> None:
    """The mux has no list of relays: whoever sends Geneve is one (the relay checked the token).

    A STUN check naming the route (re)binds the flow to its outer source address and the
    VIP's tunnel port (not the datagram's source port); other packets of a known flow are
    delivered from any sender but never move its returns.
    """

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        relay1, relay2, relay3 = relays
        ephemeral = RelaySide(relay3.addr[0])  # relay 3 sending from a port it does not listen on
        try:
            rec = Recorder()
            route = mux.open_route(UFRAG)
            route.receivers[VIP1] = rec
            relay1.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
            await settle(lambda: len(rec.got) == 1)
            relay2.send(packet(CLIENT, VIP1, dtls_record()), bound)
            await settle(lambda: len(rec.got) == 2)
            mux.send(route, VIP1, CLIENT, b"\x80one")
            assert (await relay1.recv())[1].payload == b"\x80one"
            await relay2.nothing(0.05)
            # The client's checks now come through relay 3, which nothing has named before.
            ephemeral.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
            await settle(lambda: len(rec.got) == 3)
            mux.send(route, VIP1, CLIENT, b"\x80two")
            _, inner, raw = await relay3.recv()
            assert inner.payload == b"\x80two" and (inner.dst, inner.dport) == CLIENT
            assert_complete(raw, inner)
            for other in (relay1, relay2, ephemeral):
                await other.nothing(0.05)
            assert mux.flows == 1
        finally:
            ephemeral.sock.close()

    mux = run_relays(scenario, hosts=("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    assert mux.counters == {("in", "delivered"): 3, ("out", "sent"): 2}


def signed_request(username: str, password: str) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1
    msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg)


def test_only_an_authentic_check_moves_a_flow() -> None:
    """A route opened with the session's ICE password: a check must verify with it. A
    forged one (right ufrag, wrong or no integrity), from any sender on the tunnel
    network, is counted and dropped: it cannot take the flow or redirect its returns."""
    password = "ice-password-of-22chars"

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        relay, forger = relays
        rec = Recorder()
        route = mux.open_route(UFRAG, password)
        route.receivers[VIP1] = rec
        relay.send(packet(CLIENT, VIP1, signed_request(f"{UFRAG}:a", password)), bound)
        await settle(lambda: len(rec.got) == 1)
        forger.send(packet(CLIENT, VIP1, signed_request(f"{UFRAG}:a", "not-the-password-22char")), bound)
        forger.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        forger.send(packet(("100.64.9.9", 9), VIP1, binding_request(f"{UFRAG}:a")), bound)
        await settle(lambda: mux.counters["in", "bad_integrity"] == 3)
        mux.send(route, VIP1, CLIENT, b"\x80mine")
        assert (await relay.recv())[1].payload == b"\x80mine"  # returns stay with the real relay
        await forger.nothing(0.05)
        assert len(rec.got) == 1 and mux.flows == 1

    mux = run_relays(scenario)
    assert mux.counters == {("in", "delivered"): 1, ("in", "bad_integrity"): 3, ("out", "sent"): 1}


def test_relay_sources_drop_geneve_from_elsewhere() -> None:
    """With ``relay_sources`` set, Geneve from outside those networks is dropped before it
    is parsed (``not_relay``); from inside, it is handled as usual."""

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        relay, stranger = relays
        rec = Recorder()
        mux.open_route(UFRAG).receivers[VIP1] = rec
        stranger.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        stranger.send(b"not even geneve", bound)
        await settle(lambda: mux.counters["in", "not_relay"] == 2)
        assert rec.got == [] and mux.flows == 0
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        await settle(lambda: len(rec.got) == 1)

    async def main() -> TunnelMux:
        relays = [RelaySide("127.0.0.2"), RelaySide("127.0.0.3")]
        port = relays[0].addr[1]
        mux = TunnelMux(VNI, [Vip(*VIP1, port)], relay_sources=["127.0.0.2/32", "10.70.0.0/24"])
        bound = await mux.bind("127.0.0.1", 0)
        try:
            await scenario(mux, bound, relays)
        finally:
            mux.close()
            for relay in relays:
                relay.sock.close()
        return mux

    mux = asyncio.run(main())
    assert mux.counters == {("in", "not_relay"): 2, ("in", "delivered"): 1}


def test_a_bad_relay_source_fails_at_start_naming_the_field() -> None:
    base = {"cluster": 1, "index": 1, "relays": [{"address": "192.0.2.10"}], "route_key": "00" * 16}
    good = load(
        TransceiverConfig, None, "transceiver", base | {"relay_sources": ["10.70.0.0/24", "fd00:70::1"]}
    )
    assert good.relay_sources == ("10.70.0.0/24", "fd00:70::1")
    with pytest.raises(ConfigError, match=r"transceiver\.relay_sources\[1\]: expected a network"):
        load(TransceiverConfig, None, "transceiver", base | {"relay_sources": ["10.70.0.1", "10.70.0.0/33"]})
