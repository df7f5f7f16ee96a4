"""transceiver.mux: real Geneve/IP bytes over a real loopback socket, both directions."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from aioice import stun

from icegate import geneve, inet
from transceiver.mux import Addr, TunnelMux, Vip

VNI = 7
VIP1 = ("192.0.2.10", 3478)
VIP2 = ("192.0.2.20", 3478)
CLIENT = ("100.64.1.2", 40000)
UFRAG = "EAABAAdKXVR3FruGuX+P0BJ/"


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Addr]] = []

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.got.append((data, addr))


class RelaySide:
    """A plain UDP socket standing where the relay's tunnel endpoint would be (it forwards nothing)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
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
        # The relay forwards the inner packet untouched: its UDP checksum must verify.
        segment = raw[inner.header_len :]
        (stored,) = struct.unpack_from("!H", segment, 6)
        zeroed = segment[:6] + b"\x00\x00" + segment[8:]
        src, dst = inet.packed_address(inner.src), inet.packed_address(inner.dst)
        assert stored == inet.udp_checksum(src, dst, zeroed)
        assert inet.checksum(raw[: inner.header_len]) == 0  # IPv4 header checksum verifies

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
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: mux.counters["in", "no_flow"] == 1)
        with pytest.raises(ValueError, match="already routed"):
            mux.open_route(UFRAG)
            mux.open_route(UFRAG)

    mux = run(scenario)
    assert mux.counters["out", "closed"] == 1
    assert len(rec.got) == 1


def test_a_client_address_reused_by_a_new_session_moves_the_flow() -> None:
    old, new = Recorder(), Recorder()
    other = "BAABAAdKXVR3FruGuX+P0BJ/"

    async def scenario(mux: TunnelMux, bound: Addr, relay: RelaySide) -> None:
        mux.open_route(UFRAG).receivers[VIP1] = old
        mux.open_route(other).receivers[VIP1] = new
        relay.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        relay.send(packet(CLIENT, VIP1, binding_request(f"{other}:b")), bound)
        relay.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: mux.counters["in", "delivered"] == 3)

    run(scenario)
    assert len(old.got) == 1 and len(new.got) == 2


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
