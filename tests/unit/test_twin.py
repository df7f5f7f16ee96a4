"""The twin's socket mode: ``Datapath.from_client`` / ``from_backend``, its fast packet
builders against the icegate codecs, and ``TwinRelay`` on loopback sockets (no root)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.config import RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath import wire
from controlplane.datapath.engine import Datapath, SocketResult
from controlplane.datapath.layout import BackendState, FlowEventKind, Stat
from controlplane.datapath.store import (
    Backend,
    Flow,
    FlowEvent,
    FlowKeyT,
    MemoryStore,
    RateConfig,
    TunnelEndpoint,
    Vip,
)
from controlplane.datapath.twin import TwinRelay
from icegate import geneve, inet, stun, token
from labkit.packets import DTLS, RTP, check, success

KEY = bytes(range(16))
VIP = ("192.0.2.10", 3478)
VIP6 = ("2001:db8:1::10", 3478)
CLIENT = ("100.64.1.2", 40000)
CLIENT6 = ("2001:db8:100::5", 40000)
BACKEND = Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 1)
T11 = token.mint(0, KEY, 1, 1, 1)
T12 = token.mint(0, KEY, 1, 2, 1)
HOUR_NS = 3600 * 10**9


def make_store(rate: RateConfig | None = None) -> MemoryStore:
    store = MemoryStore()
    store.set_vips([Vip(*VIP, 0), Vip(*VIP6, 1)])
    store.set_config(TunnelEndpoint("10.70.0.1", "fd00:70::1", 6081), rate or RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(BACKEND)
    store.put_backend(Backend(1, 2, "fd00:70::21", 7000, BackendState.ACTIVE, 1))
    return store


def ip_len(payload: bytes, v6: bool = False) -> int:
    return (40 if v6 else 20) + 8 + len(payload)


def returned(payload: bytes, client: tuple[str, int] = CLIENT, vip: tuple[str, int] = VIP) -> bytes:
    return geneve.encapsulate(inet.build_udp(vip[0], vip[1], client[0], client[1], payload), 1)


# ---- the fast builders equal the codecs ----

hosts4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
hosts6 = st.binary(min_size=16, max_size=16).map(lambda b: inet.text_address(b))


@given(
    st.one_of(st.tuples(hosts4, hosts4), st.tuples(hosts6, hosts6)),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=1500),
)
def test_build_udp_equals_icegate_inet(pair: tuple[str, str], sport: int, dport: int, payload: bytes) -> None:
    src, dst = pair
    expected = inet.build_udp(src, sport, dst, dport, payload)
    assert wire.build_udp(inet.addr16(src), sport, inet.addr16(dst), dport, payload) == expected


@given(st.binary(min_size=16, max_size=16), st.integers(0, 65535), st.integers(0, 65535))
def test_entropy_port_is_ephemeral_and_per_flow(client16: bytes, cport: int, vport: int) -> None:
    """In 49152-65535 (RFC 8926 §3.3) and different for the next client port: flows of one
    client spread over ECMP/RSS. (XDP computes the same value: the packet vectors hold both.)"""
    port = geneve.entropy_port(client16, cport, vport)
    assert 49152 <= port <= 65535
    assert port != geneve.entropy_port(client16, cport ^ 1, vport)


@given(st.binary(max_size=600), st.integers(0, 65535))
def test_encapsulate_over_ipv6_has_a_valid_checksum(inner: bytes, sport: int) -> None:
    src, dst = inet.packed_address("fd00:70::1"), inet.packed_address("fd00:70::21")
    packet = wire.encapsulate(src, dst, sport, 6081, wire.geneve_header(0x86DD, 5), inner)
    assert inet.udp_checksum(src, dst, packet[40:]) == 0xFFFF  # a segment with its checksum sums to 0
    assert packet[40 + 16 :] == inner and packet[40 + 8 : 40 + 16] == geneve.pack_header(5, 0x86DD)


# ---- socket mode ----


def test_session_through_socket_mode() -> None:
    events: list[FlowEvent] = []
    store = make_store()
    dp = Datapath(store, on_event=events.append)
    first = check(T11)
    result = dp.from_client(*CLIENT, *VIP, first)
    assert result.stat is Stat.FWD_NEW_FLOW and result.addr == ("10.70.0.11", 6081)
    header, inner = geneve.decapsulate(result.data or b"")
    assert (header.vni, header.protocol) == (1, geneve.PROTO_IPV4)
    assert inner == inet.build_udp(*CLIENT, *VIP, first)  # the synthesised client packet (§7)
    key: FlowKeyT = (inet.addr16(CLIENT[0]), CLIENT[1], 0)
    assert result.key == key and store.get_pending(key) is not None

    answer = dp.from_backend("10.70.0.11", returned(success(CLIENT)))
    assert (answer.stat, answer.data, answer.addr) == (Stat.FWD_CONFIRM, success(CLIENT), CLIENT)
    assert answer.vip == (inet.addr16(VIP[0]), VIP[1])
    assert [e.kind for e in events] == [FlowEventKind.CREATED] and store.get_flow(key) is not None

    assert dp.from_client(*CLIENT, *VIP, DTLS).stat is Stat.FWD_FLOW
    back = dp.from_backend("10.70.0.11", returned(RTP))
    assert (back.stat, back.data) == (Stat.FWD_RETURN, RTP)
    flow = store.get_flow(key)
    assert flow is not None and (flow.packets_in, flow.packets_out) == (2, 2)
    assert flow.bytes_in == ip_len(first) + ip_len(DTLS)
    assert dp.counter(Stat.FWD_NEW_FLOW) == (1, ip_len(first))
    assert dp.counter(Stat.FWD_CONFIRM) == (1, 28 + len(returned(success(CLIENT))))
    assert dp.counter(Stat.FWD_RETURN) == (1, 28 + len(returned(RTP)))
    assert sum(p for p, _ in dp.counters) == 4


def test_ipv6_client_to_ipv6_backend_in_socket_mode() -> None:
    store = make_store()
    dp = Datapath(store)
    result = dp.from_client(*CLIENT6, *VIP6, check(T12))
    assert (result.stat, result.addr) == (Stat.FWD_NEW_FLOW, ("fd00:70::21", 7000))
    header, inner = geneve.decapsulate(result.data or b"")
    assert header.protocol == geneve.PROTO_IPV6 and inet.parse_udp(inner).src == CLIENT6[0]
    assert dp.counter(Stat.FWD_NEW_FLOW) == (1, ip_len(check(T12), v6=True))
    back = dp.from_backend("fd00:70::21", returned(success(CLIENT6), CLIENT6, VIP6))
    assert (back.stat, back.addr) == (Stat.FWD_CONFIRM, CLIENT6)
    assert dp.counter(Stat.FWD_CONFIRM) == (1, 48 + len(returned(success(CLIENT6), CLIENT6, VIP6)))


def test_refusals_in_socket_mode() -> None:
    dp = Datapath(make_store(RateConfig(source_interval_ns=HOUR_NS)))
    assert dp.from_client(*CLIENT, "192.0.2.99", 3478, DTLS).stat is Stat.PASS_NOT_RELAY
    assert dp.from_client("not-an-address", 1, *VIP, DTLS).stat is Stat.PASS_NOT_RELAY
    assert dp.from_client(*CLIENT, *VIP, b"\x64").stat is Stat.DROP_NOT_WEBRTC
    assert dp.from_client(*CLIENT, *VIP, check(T11)[:-1]).stat is Stat.DROP_STUN_MALFORMED
    assert dp.from_client(*CLIENT, *VIP, check("x" * 24)).stat is Stat.DROP_TOKEN_VERSION
    assert dp.from_client(*CLIENT, *VIP, check(T11)).stat is Stat.FWD_NEW_FLOW
    assert dp.from_client(CLIENT[0], 40001, *VIP, check(T11)).stat is Stat.DROP_RATE_SOURCE
    assert dp.from_backend("10.70.0.12", returned(DTLS)).stat is Stat.DROP_RETURN_WRONG_BACKEND
    assert dp.from_backend("10.70.0.11", b"\x00" * 7).stat is Stat.DROP_GENEVE_MALFORMED
    assert (
        dp.from_backend("10.70.0.11", returned(DTLS, vip=("192.0.2.10", 1))).stat is Stat.DROP_RETURN_NOT_VIP
    )
    assert dp.from_backend("bogus", returned(DTLS)).stat is Stat.DROP_RETURN_WRONG_BACKEND


def test_twin_relay_bounds_rate_sources_by_its_config() -> None:
    """``limits.max_rate_sources`` reaches the twin's datapath: the per-source buckets are an
    LRU of that size, as the kernel's ``rate_sources`` map, so a source pushed out by as many
    other sources gets a fresh bucket (with the default bound it would still be refused)."""
    limits = RelayLimits(max_rate_sources=16)
    cfg = RelayConfig(name="t", vips=(VipConfig(*VIP),), tunnel=TunnelConfig("10.70.0.1"), limits=limits)
    dp = TwinRelay(cfg, make_store(RateConfig(source_interval_ns=HOUR_NS))).datapath
    assert dp.from_client(*CLIENT, *VIP, check(T11)).stat is Stat.FWD_NEW_FLOW
    assert dp.from_client(CLIENT[0], 40001, *VIP, check(T11)).stat is Stat.DROP_RATE_SOURCE
    for i in range(limits.max_rate_sources):
        assert dp.from_client(f"100.64.2.{i}", 40000, *VIP, check(T11)).stat is Stat.FWD_NEW_FLOW
    assert dp.from_client(CLIENT[0], 40002, *VIP, check(T11)).stat is Stat.FWD_NEW_FLOW


def test_slow_verdicts_carry_the_key_and_a_retry_is_not_counted() -> None:
    store = make_store(RateConfig(slow_interval_ns=HOUR_NS, slow_tolerance_ns=HOUR_NS))
    dp = Datapath(store)
    key: FlowKeyT = (inet.addr16(CLIENT[0]), CLIENT[1], 0)
    slow = dp.from_client(*CLIENT, *VIP, DTLS)
    assert (slow.stat, slow.key, slow.data) == (Stat.SLOW_NO_FLOW, key, None)
    back = dp.from_backend("10.70.0.11", returned(DTLS))
    assert (back.stat, back.key) == (Stat.SLOW_RETURN_NO_FLOW, key)
    assert dp.from_client(*CLIENT, *VIP, DTLS).stat is Stat.DROP_RATE_SLOW_PATH  # burst of 2 used
    before = [list(c) for c in dp.counters]
    assert dp.from_client(*CLIENT, *VIP, DTLS, retry=True).stat is Stat.SLOW_NO_FLOW  # not charged
    store.put_flow(key, Flow(1, 1, 0, 0, 0))  # what recovery does
    assert dp.from_client(*CLIENT, *VIP, DTLS, retry=True).stat is Stat.FWD_FLOW
    assert dp.from_backend("10.70.0.11", returned(DTLS), retry=True).stat is Stat.FWD_RETURN
    assert dp.counters == before


class CopyingStore(MemoryStore):
    """Returns copies, as a store over kernel maps does: updates must be written back."""

    def get_flow(self, key: FlowKeyT) -> Flow | None:
        found = super().get_flow(key)
        return None if found is None else dataclasses.replace(found)

    def get_pending(self, key: FlowKeyT) -> Flow | None:
        found = super().get_pending(key)
        return None if found is None else dataclasses.replace(found)


def test_updates_are_written_back_to_stores_that_copy() -> None:
    store = CopyingStore()
    store.set_vips([Vip(*VIP, 0)])
    store.set_config(TunnelEndpoint("10.70.0.1", None, 6081), RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(BACKEND)
    store.put_backend(dataclasses.replace(BACKEND, index=2, address="10.70.0.12"))
    dp = Datapath(store)
    assert not dp.live
    key: FlowKeyT = (inet.addr16(CLIENT[0]), CLIENT[1], 0)
    dp.from_client(*CLIENT, *VIP, check(T11))
    dp.from_client(*CLIENT, *VIP, check(T11))
    dp.from_backend("10.70.0.11", returned(check(username=b"cLnT:" + T11.encode())))
    pending = store.get_pending(key)
    assert pending is not None and (pending.packets_in, pending.packets_out) == (2, 1)
    dp.from_backend("10.70.0.11", returned(success(CLIENT)))
    assert dp.from_client(*CLIENT, *VIP, DTLS).stat is Stat.FWD_FLOW
    # another transceiver: the flow moves when it answers (§2.1 r1, §3 r9)
    assert dp.from_client(*CLIENT, *VIP, check(T12)).stat is Stat.FWD_MOVE_PENDING
    assert dp.from_backend("10.70.0.12", returned(success(CLIENT))).stat is Stat.FWD_MOVE_CONFIRM
    flow = store.get_flow(key)
    assert flow is not None and (flow.index, flow.packets_in, flow.packets_out) == (2, 3, 3)


# ---- TwinRelay on loopback ----


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))

    async def next(self, timeout: float = 2.0) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.received.get(), timeout)


async def peer(host: str = "127.0.0.1") -> tuple[Peer, int]:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(Peer, local_addr=(host, 0))
    assert proto.transport is not None
    return proto, proto.transport.get_extra_info("sockname")[1]


async def loopback_relay(store: MemoryStore, **options: Any) -> tuple[TwinRelay, tuple[str, int], Peer]:
    """A twin on 127.0.0.1 (ephemeral ports) with one transceiver peer as backend 1/1."""
    tunnel = TunnelConfig("127.0.0.1", None, socket_port())
    config = RelayConfig(name="t", vips=(VipConfig("127.0.0.1", 0),), tunnel=tunnel)
    relay = await TwinRelay.start(config, store, **options)
    (vip,) = relay.vip_addresses()
    store.set_vips([Vip(vip[0], vip[1], 0)])
    store.set_config(TunnelEndpoint("127.0.0.1", None, config.tunnel.port), RateConfig())
    store.set_route_keys({0: KEY})
    transceiver, port = await peer()
    store.put_backend(Backend(1, 1, "127.0.0.1", port, BackendState.ACTIVE, 1))
    return relay, vip, transceiver


@dataclass
class Loopback:
    relay: TwinRelay
    vip: tuple[str, int]
    transceiver: Peer
    client: Peer
    client_port: int


@contextlib.asynccontextmanager
async def loopback(store: MemoryStore, **options: Any) -> AsyncIterator[Loopback]:
    """:func:`loopback_relay` and a client peer; the relay and both peers are closed afterwards."""
    relay, vip, transceiver = await loopback_relay(store, **options)
    client, cport = await peer()
    try:
        yield Loopback(relay, vip, transceiver, client, cport)
    finally:
        await relay.close()
        for end in (client, transceiver):
            assert end.transport is not None
            end.transport.close()


def socket_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_twin_relay_on_loopback() -> None:
    async def scenario() -> None:
        async with loopback(MemoryStore()) as lb:
            relay, vip = lb.relay, lb.vip
            transceiver, client, cport = lb.transceiver, lb.client, lb.client_port
            assert client.transport is not None and transceiver.transport is not None
            client.transport.sendto(check(T11), vip)
            data, sender = await transceiver.next()
            assert sender == ("127.0.0.1", relay.config.tunnel.port)
            inner = inet.parse_udp(geneve.decapsulate(data)[1])
            assert (inner.src, inner.sport, inner.dst, inner.dport) == ("127.0.0.1", cport, *vip)
            answer = geneve.encapsulate(
                inet.build_udp(*vip, "127.0.0.1", cport, success(("127.0.0.1", cport))), 1
            )
            transceiver.transport.sendto(answer, sender)
            data, sender = await client.next()
            assert sender == vip and stun.is_binding_success(data)
            client.transport.sendto(DTLS, vip)
            assert geneve.decapsulate((await transceiver.next())[0])[1].endswith(DTLS)
            counts = dict(zip(Stat, relay.counters(), strict=True))
            assert [counts[s][0] for s in (Stat.FWD_NEW_FLOW, Stat.FWD_CONFIRM, Stat.FWD_FLOW)] == [1, 1, 1]
            assert sum(p for p, _ in relay.counters()) == 3 and relay.running
        assert not relay.running and relay.vip_addresses() == []

    asyncio.run(scenario())


def test_slow_hook_installs_the_flow_and_the_twin_forwards() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        asked: list[SocketResult] = []

        async def recover(result: SocketResult) -> bool:
            asked.append(result)
            assert result.key is not None
            store.put_flow(result.key, Flow(1, 1, 0, 0, 0))
            return True

        async with loopback(store, on_slow=recover) as lb:
            assert lb.client.transport is not None
            lb.client.transport.sendto(DTLS, lb.vip)
            data, _ = await lb.transceiver.next()
            assert inet.parse_udp(geneve.decapsulate(data)[1]).payload == DTLS
            assert [r.stat for r in asked] == [Stat.SLOW_NO_FLOW]
            assert lb.relay.datapath.counter(Stat.SLOW_NO_FLOW)[0] == 1
            assert lb.relay.datapath.counter(Stat.FWD_FLOW)[0] == 0  # the retry is not counted again

    asyncio.run(scenario())


def test_broken_slow_hook_does_not_stop_the_twin(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def broken(result: SocketResult) -> bool:
            raise RuntimeError("redis exploded")

        async with loopback(MemoryStore(), on_slow=broken) as lb:
            assert lb.client.transport is not None
            lb.client.transport.sendto(DTLS, lb.vip)
            lb.client.transport.sendto(check(T11), lb.vip)
            await lb.transceiver.next()  # the twin still forwards the first check

    asyncio.run(scenario())
    assert "slow-path hook failed" in caplog.text


def test_socket_mode_checks_the_transceivers_geneve_port_and_keeps_pending_flows_to_stun() -> None:
    """Issue 12 in socket mode: §3 r7 with the port the tunnel socket received from, and a
    pending flow carries only STUN each way until the success response."""
    dp = Datapath(make_store())
    assert dp.from_client(*CLIENT, *VIP, check(T11)).stat is Stat.FWD_NEW_FLOW
    assert dp.from_client(*CLIENT, *VIP, DTLS).stat is Stat.DROP_PENDING_NOT_STUN
    wrong_port = dp.from_backend("10.70.0.11", returned(success(CLIENT)), outer_src_port=6082)
    assert wrong_port.stat is Stat.DROP_RETURN_WRONG_BACKEND
    assert (
        dp.from_backend("10.70.0.11", returned(DTLS), outer_src_port=6081).stat is Stat.DROP_PENDING_NOT_STUN
    )
    confirmed = dp.from_backend("10.70.0.11", returned(success(CLIENT)), outer_src_port=6081)
    assert confirmed.stat is Stat.FWD_CONFIRM
    assert dp.from_client(*CLIENT, *VIP, DTLS).stat is Stat.FWD_FLOW
    assert dp.from_backend("10.70.0.11", returned(DTLS), outer_src_port=6081).stat is Stat.FWD_RETURN
