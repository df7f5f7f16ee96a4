"""A real ICE agent's first connectivity check is routed by its ufrag.

An ``aioice.Connection`` (controlling, the remote ufrag a minted route token, the remote
candidate a UDP socket this test owns) runs in the relay host's namespace; the exact
bytes of the first STUN Binding Request it sends are captured, put on the wire from a
client address to the VIP, and run through the XDP program and the twin.
"""

from __future__ import annotations

import asyncio

import aioice

from controlplane.datapath.layout import Stat
from icegate import geneve, inet, netns, stun, token
from icegate.inet import addr16
from labkit import packets as pb
from labkit.bpf_harness import XdpRelay, twin_for, twin_view, vectors

STATE = vectors()["state"]


async def first_check(remote_ufrag: str, host: str) -> bytes:
    """The first datagram an aioice agent sends to a remote candidate at ``host``."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    class Catch(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not received.done():
                received.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Catch, local_addr=(host, 0))
    port = transport.get_extra_info("sockname")[1]
    conn = aioice.Connection(ice_controlling=True, use_ipv6=False)
    connecting: asyncio.Task[None] | None = None
    try:
        await conn.gather_candidates()
        conn.remote_username = remote_ufrag
        conn.remote_password = "p" * 22
        await conn.add_remote_candidate(aioice.Candidate("1", 1, "udp", 2130706431, host, port, "host"))
        await conn.add_remote_candidate(None)
        connecting = asyncio.ensure_future(conn.connect())
        return await asyncio.wait_for(received, 10)
    finally:
        if connecting is not None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        await conn.close()
        transport.close()


def test_aioice_binding_request_is_routed_by_its_ufrag(xdp: XdpRelay) -> None:
    ufrag = pb.tok(pb.B12, nonce=0xA10CE)
    host = pb.TOPOLOGY["public"]["address"].split("/")[0]
    with netns.entered(xdp.host.ns):
        check = asyncio.run(first_check(ufrag, host))

    # It really is aioice's check, carrying the token as the server ufrag.
    assert stun.message_type(check) == stun.BINDING_REQUEST
    assert stun.first_check_ufrag(check) == ufrag.encode()

    xdp.apply(STATE)
    packet = inet.build_udp(pb.C1[0], pb.C1[1], pb.VIP4[0], pb.VIP4[1], check)
    frame = pb.from_client(packet)
    got = xdp.run(frame)
    assert got.stat == Stat.FWD_NEW_FLOW.name
    assert got.egress == "private" and got.eth == {"src": pb.PRIV_MAC, "dst": "02:00:00:00:00:22"}
    outer = inet.parse_udp(bytes.fromhex(got.output or ""))
    assert (outer.dst, outer.dport) == (pb.B12.address, pb.B12.port)
    assert geneve.decapsulate(outer.payload)[1] == packet
    pending = xdp.store.get_pending((addr16(pb.C1[0]), pb.C1[1], pb.VIP4[2]))
    assert pending is not None
    assert (pending.cluster, pending.index, pending.token_tag) == (
        pb.B12.cluster,
        pb.B12.index,
        token.verify(ufrag, pb.KEYS).tag,
    )
    assert got.step_view() == twin_view(twin_for(STATE).process_frame(frame, "public"))
