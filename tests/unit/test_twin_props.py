"""Properties of the Python datapath under random and mutated input (hypothesis).

- Whatever frame comes in, a FORWARD verdict only ever sends well-formed content: a
  Geneve packet from our tunnel address to a registered backend whose inner packet is a
  well-formed WebRTC datagram to one of our VIPs; or, on return, a well-formed WebRTC
  datagram from one of our VIPs to a client that has a flow.
- Nothing raises: ``process_frame``, ``from_client`` and ``from_backend`` take any bytes.
- Socket mode (what the twin runs) and frame mode (what the vectors and the XDP
  comparison run) give the same verdict, the same flow-map change and the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane.datapath.engine import Action, Datapath, FrameResult, SocketResult
from controlplane.datapath.layout import Stat, Verdict
from controlplane.datapath.store import MemoryStore
from icegate import geneve, inet, stun
from icegate.rfc7983 import WEBRTC_KINDS, classify
from labkit import packets as pb
from labkit.nexthop import StaticNextHop
from labkit.support import load_vector_state

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "packets.json").read_text())
FRAMES = sorted(
    {
        (bytes.fromhex(step["frame"]), step["ingress"])
        for case in VECTORS["cases"]
        for step in case["steps"]
        if step["stat"].startswith(("FWD_", "SLOW_")) or random.Random(len(step["frame"])).random() < 0.1
    }
)
STATE = {**VECTORS["state"], "flows": [], "pending": []}
CONFIRMED = next(c for c in VECTORS["cases"] if c["name"] == "all 256 first bytes on a flow")["state"][
    "flows"
]
PENDING = [
    {"client": "2001:db8:100::5", "port": 40000, "vip_index": 1, "cluster": 1, "index": 1, "token_tag": 0}
]
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TO_BACKEND = {Stat.FWD_FLOW, Stat.FWD_PENDING, Stat.FWD_NEW_FLOW, Stat.FWD_REROUTE, Stat.FWD_MOVE_PENDING}


def fresh() -> tuple[Datapath, MemoryStore]:
    store = MemoryStore()
    load_vector_state(store, {**STATE, "flows": CONFIRMED, "pending": PENDING})
    return Datapath(store, StaticNextHop(VECTORS["topology"])), store


def vips(store: MemoryStore) -> set[tuple[str, int]]:
    return {(v.address, v.port) for v in store.vips()}


def assert_webrtc(payload: bytes) -> None:
    assert payload and classify(payload[0]) in WEBRTC_KINDS


def assert_well_formed(result: FrameResult, store: MemoryStore) -> None:
    if result.stat.verdict is not Verdict.FORWARD:
        assert result.output is None and result.action in (Action.PASS, Action.DROP)
        return
    assert result.output is not None and result.action in (Action.TX, Action.REDIRECT)
    outer = inet.parse_udp(result.output)
    if result.stat in TO_BACKEND:
        if outer.version == 4:
            assert inet.checksum(result.output[:20]) == 0
        tunnel = store.tunnel()
        assert outer.src in (tunnel.address4, tunnel.address6)
        assert (outer.dst, outer.dport) in {(b.address, b.port) for b in store.backends()}
        header, inner_bytes = geneve.decapsulate(outer.payload)
        inner = inet.parse_udp(inner_bytes)
        assert header.protocol == (geneve.PROTO_IPV4 if inner.version == 4 else geneve.PROTO_IPV6)
        assert (inner.dst, inner.dport) in vips(store)
        assert_webrtc(inner.payload)
        if inner.payload[0] <= 3 and stun.message_type(inner.payload) == stun.BINDING_REQUEST:
            stun.first_check_ufrag(inner.payload)
    else:  # the inner packet itself, to a client with a flow
        assert (outer.src, outer.sport) in vips(store)
        assert_webrtc(outer.payload)
        clients = {(inet.from_addr16(k[0]), k[1]) for k, _ in [*store.flows(), *store.pending()]}
        assert (outer.dst, outer.dport) in clients


KEY_FRAMES = [
    (bytes.fromhex(step["frame"]), step["ingress"])
    for case in VECTORS["cases"]
    if case["name"] in ("IPv6 client on the IPv6 VIP", "IPv6 transceiver")
    for step in case["steps"]
]


def mutate(frame: bytes, rnd: random.Random, edits: int) -> bytes:
    """Overwrite ``edits`` bytes, most of them in the headers (the first 130 bytes)."""
    data = bytearray(frame)
    for _ in range(edits):
        end = len(data) if rnd.random() < 0.3 else min(len(data), 130)
        data[rnd.randrange(end)] = rnd.choice((0, 0xFF, rnd.randrange(256), data[rnd.randrange(end)] ^ 1))
    return bytes(data)


@pytest.mark.parametrize("index", range(len(KEY_FRAMES)))
def test_every_single_byte_change_of_a_session_frame(index: int) -> None:
    """Exhaustive over positions: each byte of a forwarded frame set to 4 other values."""
    frame, ingress = KEY_FRAMES[index]
    for position in range(len(frame)):
        for value in {0x00, 0xFF, frame[position] ^ 0x01, frame[position] ^ 0x80} - {frame[position]}:
            datapath, store = fresh()
            mutated = frame[:position] + bytes([value]) + frame[position + 1 :]
            assert_well_formed(datapath.process_frame(mutated, ingress), store)


@SETTINGS
@given(
    st.sampled_from(FRAMES),
    st.randoms(use_true_random=False),
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(0, 2000)),
    st.binary(max_size=8),
)
def test_mutated_frames_never_forward_malformed_content(
    picked: tuple[bytes, str], rnd: random.Random, edits: int, cut: int | None, tail: bytes
) -> None:
    frame, ingress = picked
    data = mutate(frame, rnd, edits)
    mutated = (data[:cut] if cut is not None else data) + tail
    datapath, store = fresh()
    assert_well_formed(datapath.process_frame(frame, ingress), store)
    assert_well_formed(datapath.process_frame(mutated, ingress), store)
    assert sum(p for p, _ in datapath.counters) == 2


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["public", "private"]))
def test_random_frames_never_raise(frame: bytes, ingress: str) -> None:
    datapath, store = fresh()
    assert_well_formed(datapath.process_frame(frame, ingress), store)


hosts = st.one_of(
    st.sampled_from(
        ["100.64.1.2", "10.70.0.11", "fd00:70::21", "192.0.2.10", "2001:db8:1::10", "::", "fe80::1%lo"]
    ),
    st.text(max_size=20),
)


@SETTINGS
@given(
    hosts,
    st.integers(0, 65535),
    hosts,
    st.integers(0, 65535),
    st.binary(max_size=200),
    hosts,
    st.binary(max_size=200),
)
def test_socket_mode_never_raises(
    client: str, cport: int, vip: str, vport: int, payload: bytes, sender: str, datagram: bytes
) -> None:
    datapath, _ = fresh()
    for result in (
        datapath.from_client(client, cport, vip, vport, payload),
        datapath.from_backend(sender, datagram),
    ):
        if result.data is not None:
            assert result.addr is not None and result.stat.verdict is Verdict.FORWARD
    assert sum(p for p, _ in datapath.counters) == 2


@SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 4), st.one_of(st.none(), st.integers(0, 200)))
def test_mutated_geneve_returns_only_forward_to_flows(
    rnd: random.Random, edits: int, cut: int | None
) -> None:
    datapath, _ = fresh()
    inner = inet.build_udp("192.0.2.10", 3478, "100.64.1.2", 40000, bytes([23]) + bytes(40))
    data = mutate(geneve.encapsulate(inner, 1), rnd, edits)
    result = datapath.from_backend("10.70.0.11", data[:cut] if cut is not None else data)
    if result.data is not None:
        assert result.addr == ("100.64.1.2", 40000)
        assert_webrtc(result.data)


def test_fixture_frames_cover_every_forward_stat() -> None:
    stats: set[Any] = set()
    for frame, ingress in FRAMES:
        datapath, _ = fresh()
        stats.add(datapath.process_frame(frame, ingress).stat)
    assert {Stat.FWD_FLOW, Stat.FWD_NEW_FLOW, Stat.FWD_RETURN, Stat.FWD_CONFIRM} <= stats


# ---- socket mode agrees with frame mode --------------------------------------------------
# The twin runs on sockets (from_client/from_backend); the shared vectors and the XDP
# comparison run frames (process_frame). The same datagram must get the same verdict and
# the same bytes out both ways, so what is proven for frames holds for the sockets.

NEXT_HOP_ONLY = {
    Stat.SLOW_NO_NEIGH,
    Stat.DROP_FIB,
    Stat.DROP_FRAG_NEEDED,
}  # sockets leave routing to the kernel
CLIENTS4 = [pb.C1, pb.C2, ("100.64.7.7", 5004)]
CLIENTS6 = [pb.C6, ("2001:db8:100::9", 5004)]
GOOD = [pb.B11, pb.B12, pb.B13, pb.B14, pb.B15, pb.B21]
payloads = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda b, k: pb.check(pb.tok(b, k)), st.sampled_from(GOOD), st.sampled_from([0, 1])),
    st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0, 255), st.binary(max_size=60)),
    st.sampled_from([pb.check(pb.T_FORGED), pb.check(pb.T_UNKNOWN_KEY), pb.DTLS, pb.RTP]),
)


def flow_view(store: MemoryStore) -> list[tuple[Any, ...]]:
    """What a packet changes in the flow maps, without timestamps."""
    return sorted(
        (state, key, f.cluster, f.index, f.token_tag, f.packets_in, f.packets_out)
        for state, items in (("flow", store.flows()), ("pending", store.pending()))
        for key, f in items
    )


def assert_alike(
    fr: FrameResult, sr: SocketResult, frame_store: MemoryStore, socket_store: MemoryStore
) -> None:
    """Same verdict, same flow-map change; forwarded, the socket sends the frame's UDP
    payload to the frame's UDP destination."""
    event(fr.stat.name)
    if fr.stat in NEXT_HOP_ONLY:
        return
    assert fr.stat == sr.stat
    assert flow_view(frame_store) == flow_view(socket_store)
    if fr.output is None:
        assert sr.data is None
        return
    udp = inet.parse_udp(fr.output)
    assert sr.addr == (udp.dst, udp.dport) and sr.data == udp.payload


@SETTINGS
@given(st.booleans(), st.data(), payloads)
def test_a_client_datagram_is_handled_alike_as_socket_and_frame(v6: bool, data: Any, payload: bytes) -> None:
    client = data.draw(st.sampled_from(CLIENTS6 if v6 else CLIENTS4))
    vip = pb.VIP6 if v6 else data.draw(st.sampled_from([pb.VIP4, pb.VIP_ALT]))
    by_frame, frame_store = fresh()
    by_socket, socket_store = fresh()
    frame = pb.from_client(inet.build_udp(client[0], client[1], vip[0], vip[1], payload))
    fr = by_frame.process_frame(frame, "public")
    sr = by_socket.from_client(client[0], client[1], vip[0], vip[1], payload)
    assert_alike(fr, sr, frame_store, socket_store)  # the Geneve payload to the backend


@SETTINGS
@given(
    st.sampled_from([b.address for b in pb.BACKENDS] + ["10.70.0.77"]),
    st.sampled_from([(pb.VIP4, pb.C1), (pb.VIP4, pb.C2), (pb.VIP6, pb.C6), (pb.VIP_ALT, pb.C1)]),
    st.integers(0, 7),
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([pb.DTLS, pb.RTP, pb.success(pb.C1), pb.success(pb.C6)]),
        st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0, 255), st.binary(max_size=60)),
    ),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_a_geneve_return_is_handled_alike_as_socket_and_frame(
    sender: str,
    ends: tuple[tuple[str, int, int], tuple[str, int]],
    vni: int,
    payload: bytes,
    rnd: random.Random,
    edits: int,
) -> None:
    vip, client = ends
    datagram = mutate(geneve.encapsulate(pb.reply(vip, client, payload), vni), rnd, edits)
    by_frame, frame_store = fresh()
    by_socket, socket_store = fresh()
    fr = by_frame.process_frame(pb.from_backend(sender, datagram), "private")
    sr = by_socket.from_backend(sender, datagram)
    assert_alike(fr, sr, frame_store, socket_store)  # the client's datagram
