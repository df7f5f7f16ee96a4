"""transceiver.iceadapter: a real aiortc answerer whose ICE runs over the mux, no socket of its own.

The client side is played by hand with real STUN messages (aioice.stun) in real Geneve:
this pins exactly the aioice/aiortc internals the adapter relies on. The full
client <-> relay <-> transceiver path is in tests/integration/test_transceiver_*.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Callable

import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection

from icegate import geneve, inet, token
from transceiver.iceadapter import MuxProtocol, bind_peer_connection, ice_transports
from transceiver.mux import Addr, TunnelMux, Vip

KEY = bytes(range(16))
CLUSTER, INDEX = 3, 7
VIP1 = ("192.0.2.10", 3478)
VIP2 = ("192.0.2.20", 3478)


def socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def sdp_value(sdp: str, name: str) -> str:
    match = re.search(rf"^a={name}:(\S+)", sdp, re.M)
    assert match, name
    return match.group(1)


class Harness:
    def __init__(self) -> None:
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.relay.setblocking(False)
        port = self.relay.getsockname()[1]
        self.vips = [Vip(*VIP1, port), Vip(*VIP2, port)]
        self.mux = TunnelMux(INDEX, self.vips, hold_packets=16, hold_s=5.0)
        self.bound: Addr = ("", 0)

    async def recv(self, timeout: float = 3.0) -> tuple[inet.UdpPacket, stun.Message | None]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.relay, 65535), timeout)
        header, inner = geneve.decapsulate(data)
        assert header.vni == INDEX
        pkt = inet.parse_udp(inner)
        try:
            return pkt, stun.parse_message(pkt.payload)
        except ValueError:
            return pkt, None

    def send(self, client: Addr, vip: Addr, payload: bytes) -> None:
        inner = inet.build_udp(client[0], client[1], vip[0], vip[1], payload)
        self.relay.sendto(geneve.encapsulate(inner, 0), self.bound)


Scenario = Callable[[Harness, RTCPeerConnection, RTCPeerConnection], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        h = Harness()
        h.bound = await h.mux.bind("127.0.0.1", 0)
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTransceiver("audio")
        client.createDataChannel("events")
        await client.setLocalDescription(await client.createOffer())
        server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await scenario(h, client, server)
        finally:
            await server.close()
            await client.close()
            h.mux.close()
            h.relay.close()

    asyncio.run(main())


async def answer(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> str:
    await server.setRemoteDescription(client.localDescription)
    binding = bind_peer_connection(server, h.mux, h.vips, lambda: token.mint(0, KEY, CLUSTER, INDEX))
    assert len(binding.ufrags) == 1  # aiortc offers BUNDLE: one ICE transport
    await server.setLocalDescription(await server.createAnswer())
    return server.localDescription.sdp


def test_answer_carries_only_relay_vips_and_a_route_token() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        before = socket_inodes()
        sdp = await answer(h, client, server)
        assert socket_inodes() <= before, "the session opened a socket of its own"
        candidates = re.findall(r"^a=candidate:(\S+) 1 udp (\d+) (\S+) (\d+) typ (\S+)", sdp, re.M)
        # Each m-line (audio, data channel) lists the same two candidates: the VIPs, nothing else.
        assert [(c[2], int(c[3]), c[4]) for c in candidates] == [(*VIP1, "host"), (*VIP2, "host")] * 2
        assert int(candidates[0][1]) > int(candidates[1][1]), "primary relay must rank first"
        assert "a=end-of-candidates" in sdp
        ufrag = sdp_value(sdp, "ice-ufrag")
        decoded = token.verify(ufrag, {0: KEY})
        assert (decoded.cluster, decoded.index) == (CLUSTER, INDEX)
        (transport,) = ice_transports(server)
        assert all(isinstance(p, MuxProtocol) for p in transport._connection._protocols)

    run(scenario)


def test_binding_after_gathering_is_refused() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        with pytest.raises(RuntimeError, match="gathered already"):
            bind_peer_connection(server, h.mux, h.vips, lambda: token.mint(0, KEY, CLUSTER, INDEX))
        assert h.mux.routes == 0

    run(scenario)


def test_ice_completes_over_the_mux_and_dtls_starts() -> None:
    """The client's check is answered, aioice's held check is flushed, nomination completes."""

    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        sdp = await answer(h, client, server)
        offer = client.localDescription.sdp
        client_ufrag, client_pwd = sdp_value(offer, "ice-ufrag"), sdp_value(offer, "ice-pwd")
        server_ufrag, server_pwd = sdp_value(sdp, "ice-ufrag"), sdp_value(sdp, "ice-pwd")
        host = re.search(r"^a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host", offer, re.M)
        assert host, "the client offered no IPv4 host candidate"
        me = (host.group(1), int(host.group(2)))  # the relay would show the client as this address
        await asyncio.sleep(0.3)  # aioice has started its checks to the offered candidates: held
        assert h.mux.counters["out", "held"] >= 1 and h.mux.counters["out", "sent"] == 0

        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes.update(
            {
                "USERNAME": f"{server_ufrag}:{client_ufrag}",
                "PRIORITY": 1_000_000,
                "ICE-CONTROLLING": 1,
                "USE-CANDIDATE": None,
            }
        )
        check.add_message_integrity(server_pwd.encode())
        check.add_fingerprint()
        h.send(me, VIP1, bytes(check))

        response: stun.Message | None = None
        requests: list[tuple[inet.UdpPacket, stun.Message]] = []
        while response is None or not requests:
            pkt, msg = await h.recv()
            assert (pkt.src, pkt.sport, pkt.dst, pkt.dport) == (*VIP1, *me)
            assert msg is not None
            if msg.transaction_id == check.transaction_id:
                response = msg
            elif msg.message_class == stun.Class.REQUEST:
                requests.append((pkt, msg))
        assert response.message_class == stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == me
        assert h.mux.counters["out", "flushed"] >= 1, "the held check was not flushed"

        # aioice's own check carries <client ufrag>:<server ufrag>; answer it as the client would.
        _, request = requests[0]
        assert request.attributes["USERNAME"] == f"{client_ufrag}:{server_ufrag}"
        reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id)
        reply.attributes["XOR-MAPPED-ADDRESS"] = VIP1
        reply.add_message_integrity(client_pwd.encode())
        reply.add_fingerprint()
        h.send(me, VIP1, bytes(reply))

        (transport,) = ice_transports(server)
        deadline = asyncio.get_running_loop().time() + 5
        while transport.state != "completed":
            assert asyncio.get_running_loop().time() < deadline, f"ICE state {transport.state}"
            await asyncio.sleep(0.01)
        # The answer said setup:active: the transceiver's DTLS ClientHello leaves through the mux.
        while True:
            pkt, msg = await h.recv()
            if msg is None:
                assert pkt.payload[0] == 22 and (pkt.dst, pkt.dport) == me
                break

    run(scenario)


def test_closing_the_session_releases_its_route() -> None:
    async def scenario(h: Harness, client: RTCPeerConnection, server: RTCPeerConnection) -> None:
        await server.setRemoteDescription(client.localDescription)
        binding = bind_peer_connection(server, h.mux, h.vips, lambda: token.mint(0, KEY, CLUSTER, INDEX))
        await server.setLocalDescription(await server.createAnswer())
        assert h.mux.routes == 1
        await server.close()
        binding.close()
        assert h.mux.routes == 0
        (transport,) = ice_transports(server)
        assert transport._connection._protocols == []  # aioice closed them through MuxTransport

    run(scenario)
