"""transceiver.mux behind a relay fleet: returns follow the node that carries the client now.

Real Geneve over real loopback sockets, one per relay node (127.0.0.2-4, one shared port).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.unit.test_transceiver_mux import (
    CLIENT,
    UFRAG,
    VIP1,
    VNI,
    Addr,
    Recorder,
    RelaySide,
    binding_request,
    dtls_record,
    packet,
    settle,
)
from transceiver.mux import TunnelMux, Vip

NODES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


Scenario = Callable[[TunnelMux, Addr, list[RelaySide]], Awaitable[None]]


def run_fleet(relay_sources: list[str], scenario: Scenario) -> TunnelMux:
    async def main() -> TunnelMux:
        relays = [RelaySide(NODES[0])]
        port = relays[0].addr[1]
        relays += [RelaySide(host, port) for host in NODES[1:]]
        mux = TunnelMux(VNI, [Vip(*VIP1, port)], relay_sources=relay_sources)
        bound = await mux.bind("127.0.0.1", 0)
        try:
            await scenario(mux, bound, relays)
        finally:
            mux.close()
            for relay in relays:
                relay.sock.close()
        return mux

    return asyncio.run(main())


def test_returns_follow_the_node_that_now_carries_the_client() -> None:
    """Node 1 dies; ECMP hashes the client's SRTP to node 2: the very next return goes to
    node 2, with no STUN check in between (a consent check is seconds away)."""

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        node1, node2, _ = relays
        rec = Recorder()
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = rec
        node1.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        await settle(lambda: len(rec.got) == 1)
        mux.send(route, VIP1, CLIENT, b"\x80before")
        assert (await node1.recv())[1].payload == b"\x80before"
        node2.send(packet(CLIENT, VIP1, dtls_record()), bound)  # the first packet through node 2
        await settle(lambda: len(rec.got) == 2)
        mux.send(route, VIP1, CLIENT, b"\x80after")
        assert (await node2.recv())[1].payload == b"\x80after"
        await node1.nothing(0.05)
        node2.send(packet(CLIENT, VIP1, dtls_record()), bound)  # same node again: no move
        await settle(lambda: len(rec.got) == 3)

    mux = run_fleet(["127.0.0.0/29"], scenario)
    assert mux.counters["in", "relay_moved"] == 1
    assert mux.counters["out", "sent"] == 2


def test_without_relay_sources_only_a_check_moves_returns() -> None:
    """No list of relays: any sender on the tunnel network could be one, so a non-STUN packet
    never moves returns (the next authentic check does)."""

    async def scenario(mux: TunnelMux, bound: Addr, relays: list[RelaySide]) -> None:
        node1, node2, _ = relays
        rec = Recorder()
        route = mux.open_route(UFRAG)
        route.receivers[VIP1] = rec
        node1.send(packet(CLIENT, VIP1, binding_request(f"{UFRAG}:a")), bound)
        node2.send(packet(CLIENT, VIP1, dtls_record()), bound)
        await settle(lambda: len(rec.got) == 2)
        mux.send(route, VIP1, CLIENT, b"\x80stay")
        assert (await node1.recv())[1].payload == b"\x80stay"
        await node2.nothing(0.05)

    mux = run_fleet([], scenario)
    assert mux.counters["in", "relay_moved"] == 0
