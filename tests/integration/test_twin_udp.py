"""The userspace twin between real UDP sockets, in a network namespace of its own.

Client, relay and transceiver all live on the namespace's loopback with their real
addresses (VIPs, tunnel, transceiver, clients), so every datagram crosses the kernel:
a client sends a real STUN binding request with a valid token and then DTLS/RTP-sized
packets to VIP:3478; a plain UDP socket playing the transceiver's tunnel endpoint
decapsulates with ``icegate.geneve``, checks it sees the client's real address, and
answers with Geneve whose inner packet is VIP:3478 -> client; the client sees every
reply come from VIP:3478; the twin's counters match exactly.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.config import RelayConfig, TunnelConfig, VipConfig
from controlplane.datapath import twin
from controlplane.datapath.layout import BackendState, FlowEventKind, Stat
from controlplane.datapath.store import Backend, FlowEvent, MemoryStore, RateConfig, TunnelEndpoint, Vip
from icegate import geneve, inet, netns, stun, token
from labkit.packets import check, success

KEY = bytes(range(16))
T11 = token.mint(0, KEY, 1, 1, 7)
_RAW = bytearray(base64.b64decode(T11))
_RAW[10] ^= 1  # inside the tag
T_FORGED = base64.b64encode(bytes(_RAW)).decode()
VIP4, VIP6 = ("192.0.2.10", 3478), ("2001:db8:1::10", 3478)
TUNNEL4, TUNNEL6, TUNNEL_PORT = "10.70.0.1", "fd00:70::1", 6081
TRANSCEIVER = ("10.70.0.11", 6081)
CLIENT4, CLIENT6 = ("100.64.1.2", 40000), ("2001:db8:100::5", 40000)
ADDRESSES = ("192.0.2.10/32", "10.70.0.1/32", "10.70.0.11/32", "100.64.1.2/32")
ADDRESSES6 = ("2001:db8:1::10/128", "fd00:70::1/128", "2001:db8:100::5/128")
MEDIA = 40  # DTLS- and RTP-sized packets each way, per client


@pytest.fixture
def namespace(ns_prefix: str) -> Iterator[str]:
    name = f"{ns_prefix}twin"
    netns.create(name)
    for cidr in ADDRESSES + ADDRESSES6:
        netns.address(name, "lo", cidr)
    yield name  # ns_prefix removes it


class Peer(asyncio.DatagramProtocol):
    """A plain UDP socket: what the client or the transceiver's tunnel endpoint does."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)

    async def next(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.received.get(), 5.0)


async def bind(host_port: tuple[str, int]) -> Peer:
    sock = twin.open_udp(*host_port)
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(Peer, sock=sock)
    return proto


def relay_config() -> RelayConfig:
    return RelayConfig(
        name="twin-it",
        vips=(VipConfig(*VIP4), VipConfig(*VIP6)),
        tunnel=TunnelConfig(TUNNEL4, TUNNEL6, TUNNEL_PORT),
        mode="userspace",
    )


def relay_store() -> MemoryStore:
    store = MemoryStore()
    store.set_vips([Vip(*VIP4, 0), Vip(*VIP6, 1)])
    store.set_config(TunnelEndpoint(TUNNEL4, TUNNEL6, TUNNEL_PORT), RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(Backend(1, 1, *TRANSCEIVER, BackendState.ACTIVE, 1))
    return store


async def session(
    client: Peer, address: tuple[str, int], vip: tuple[str, int], transceiver: Peer
) -> dict[Stat, list[int]]:
    """One client's session; returns the packets and bytes each counter should have seen."""
    expected: dict[Stat, list[int]] = {}
    ip = 40 if ":" in address[0] else 20

    def count(stat: Stat, nbytes: int) -> None:
        entry = expected.setdefault(stat, [0, 0])
        entry[0] += 1
        entry[1] += nbytes

    def unwrap(data: bytes, sender: tuple[str, int]) -> inet.UdpPacket:
        assert sender == (TUNNEL4, TUNNEL_PORT)  # Geneve comes from the relay's tunnel socket
        header, inner = geneve.decapsulate(data)
        assert header.vni == 1
        packet = inet.parse_udp(inner)
        assert (packet.src, packet.sport, packet.dst, packet.dport) == (*address, *vip)  # the real client
        src, dst = inet.packed_address(packet.src), inet.packed_address(packet.dst)
        assert inet.udp_checksum(src, dst, inner[packet.header_len :]) == 0xFFFF
        return packet

    async def answer(payload: bytes) -> None:
        reply = geneve.encapsulate(inet.build_udp(*vip, *address, payload), 1)
        transceiver.send(reply, (TUNNEL4, TUNNEL_PORT))
        count(Stat.FWD_CONFIRM if payload[0] <= 3 else Stat.FWD_RETURN, 28 + len(reply))
        data, sender = await client.next()
        assert (data, sender) == (payload, vip)  # the reply comes from VIP:3478

    first = check(T11)
    client.send(first, vip)
    count(Stat.FWD_NEW_FLOW, ip + 8 + len(first))
    assert unwrap(*await transceiver.next()).payload == first
    await answer(success(address))

    for i in range(MEDIA):
        media = bytes([22 if i % 4 == 0 else 0x80]) + bytes([i]) * (299 if i % 4 == 0 else 171)
        client.send(media, vip)
        count(Stat.FWD_FLOW, ip + 8 + len(media))
        assert unwrap(*await transceiver.next()).payload == media
        await answer(media[:1] + b"reply" + media[1:])
    return expected


async def scenario() -> None:
    events: list[FlowEvent] = []
    store = relay_store()
    relay = await twin.TwinRelay.start(relay_config(), store, on_event=events.append)
    peers = [await bind(TRANSCEIVER), await bind(CLIENT4), await bind(CLIENT6)]
    transceiver, client4, client6 = peers
    try:
        expected: dict[Stat, list[int]] = {}
        for client, address, vip in ((client4, CLIENT4, VIP4), (client6, CLIENT6, VIP6)):
            for stat, (packets, nbytes) in (await session(client, address, vip, transceiver)).items():
                entry = expected.setdefault(stat, [0, 0])
                entry[0] += packets
                entry[1] += nbytes

        # A forged ICE restart (new tag, bad MAC) is dropped before the transceiver sees
        # anything: the next datagram it gets is the media packet sent after it.
        forged = check(T_FORGED)
        client4.send(forged, VIP4)
        client4.send(b"\x80after", VIP4)
        data, _ = await transceiver.next()
        assert geneve.decapsulate(data)[1].endswith(b"\x80after")
        expected[Stat.DROP_TOKEN_MAC] = [1, 28 + len(forged)]
        expected[Stat.FWD_FLOW][0] += 1
        expected[Stat.FWD_FLOW][1] += 28 + 6

        counters = {s: list(c) for s, c in zip(Stat, relay.counters(), strict=True) if c != (0, 0)}
        assert counters == expected
        assert [e.kind for e in events] == [FlowEventKind.CREATED] * 2
        assert len(list(store.flows())) == 2 and list(store.pending()) == []
    finally:
        await relay.close()
        for peer in peers:
            peer.transport.close()
    assert not relay.running


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_twin_relays_real_sockets(namespace: str, loop: str) -> None:
    with netns.entered(namespace):
        if loop == "uvloop":
            twin.run(scenario())
        else:
            asyncio.run(scenario())
    assert stun.is_stun(check(T11))
