"""Random and mutated frames through the XDP program and the userspace twin.

Seeds are the frames of the shared vectors (valid STUN, DTLS, RTP, Geneve returns) with
their case's state; hypothesis flips, overwrites, cuts, inserts and deletes bytes. For
every frame:

- the XDP program and ``Datapath.process_frame`` agree on counter, action, egress,
  MACs and output bytes (the same maps, the same FIB: the §9 topology);
- whatever is forwarded is well formed, judged by the icegate codecs (never by the
  program's own parser): a client packet reaches a transceiver only inside a correct
  Geneve tunnel with WebRTC in it, and no malformed STUN is ever forwarded;
- exactly one counter moves, by one packet and the frame's length.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from controlplane.datapath.layout import Stat
from icegate import geneve, inet, stun
from icegate.errors import WireError
from icegate.rfc7983 import WEBRTC_KINDS, classify
from labkit.bpf_harness import XdpRelay, twin_for, twin_view, vectors

VECTORS = vectors()
STATE = VECTORS["state"]
SEEDS = [
    ({**STATE, **case.get("state", {})}, step["ingress"], bytes.fromhex(step["frame"]))
    for case in VECTORS["cases"]
    for step in case["steps"]
]
FORWARDED_SEEDS = [
    s
    for s, step in zip(SEEDS, (st for c in VECTORS["cases"] for st in c["steps"]), strict=True)
    if step["stat"].startswith("FWD_")
]
VIPS = {(v["address"], v["port"]) for v in STATE["vips"]}
MAX_FRAME = 3000  # BPF_PROG_TEST_RUN takes a frame of up to a page minus head- and tailroom
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_well_formed(stat: str, output: bytes) -> None:
    """An independent judge of what left the relay."""
    packet = inet.parse_udp(output)
    if stat in ("FWD_RETURN", "FWD_RETURN_PENDING", "FWD_CONFIRM"):
        assert (packet.src, packet.sport) in VIPS  # no open reflector
        assert packet.payload and classify(packet.payload[0]) in WEBRTC_KINDS
        if stat == "FWD_CONFIRM":
            assert stun.is_binding_success(packet.payload)
        return
    _, inner = geneve.decapsulate(packet.payload)
    client = inet.parse_udp(inner)
    assert (client.dst, client.dport) in VIPS
    assert client.payload and classify(client.payload[0]) in WEBRTC_KINDS
    if stun.is_stun(client.payload):
        ufrag = stun.first_check_ufrag(client.payload)  # raises StunReject on anything malformed
        assert ufrag is None or len(ufrag) == 24


def check(xdp: XdpRelay, state: dict[str, Any], ingress: str, frame: bytes) -> None:
    assume(14 <= len(frame) <= MAX_FRAME)
    xdp.apply(state)
    got = xdp.run(frame, ingress)
    event(got.stat)  # --hypothesis-show-statistics: which verdicts the examples reached
    want = twin_view(twin_for(state).process_frame(frame, ingress))
    assert got.step_view() == want
    assert got.moved == [(Stat[got.stat], 1, len(frame))]
    if got.output is not None:
        try:
            assert_well_formed(got.stat, bytes.fromhex(got.output))
        except (WireError, stun.StunReject) as exc:
            raise AssertionError(f"{got.stat} forwarded a malformed packet: {exc}") from exc


def mutate(draw: st.DrawFn, data: bytes, keep: int = 0) -> bytes:
    """Flip, overwrite, cut, insert or delete a few bytes (not before ``keep``)."""
    buf = bytearray(data)
    ops = st.tuples(st.sampled_from("ffffsssxid"), st.integers(0, 4095), st.integers(0, 255))
    for op, where, value in draw(st.lists(ops, min_size=1, max_size=4)):
        at = keep + where % (len(buf) - keep + 1)
        if op == "f" and at < len(buf):
            buf[at] ^= 1 << (value % 8)
        elif op == "s" and at < len(buf):
            buf[at] = value
        elif op == "x":
            del buf[at:]
        elif op == "i":
            buf[at:at] = bytes([value])
        elif op == "d" and at < len(buf):
            del buf[at]
    return bytes(buf)


@st.composite
def mutated(
    draw: st.DrawFn, seeds: list[tuple[dict[str, Any], str, bytes]]
) -> tuple[dict[str, Any], str, bytes]:
    """A seed frame with a few bytes changed anywhere after the Ethernet addresses."""
    state, ingress, frame = draw(st.sampled_from(seeds))
    return state, ingress, mutate(draw, frame, keep=12)


def rebuilt(packet: inet.UdpPacket, payload: bytes) -> bytes:
    return inet.build_udp(packet.src, packet.sport, packet.dst, packet.dport, payload, ttl=packet.ttl)


@st.composite
def payload_mutated(
    draw: st.DrawFn, seeds: list[tuple[dict[str, Any], str, bytes]]
) -> tuple[dict[str, Any], str, bytes]:
    """A seed whose UDP payload (or, for a Geneve return, the inner packet's payload) is
    mutated, with every length and checksum recomputed, so the change reaches the rules
    past the IP and UDP headers."""
    state, ingress, frame = draw(st.sampled_from(seeds))
    packet = inet.parse_udp(frame[14:])
    if ingress == "private" and draw(st.booleans()):
        header, inner = geneve.decapsulate(packet.payload)
        inner_packet = inet.parse_udp(inner)
        payload = bytes(header) + rebuilt(inner_packet, mutate(draw, inner_packet.payload))
    else:
        payload = mutate(draw, packet.payload)
    return state, ingress, frame[:14] + rebuilt(packet, payload)


def parses(seed: tuple[dict[str, Any], str, bytes]) -> bool:
    _, ingress, frame = seed
    try:
        packet = inet.parse_udp(frame[14:])
        if ingress == "private":
            inet.parse_udp(geneve.decapsulate(packet.payload)[1])
    except WireError:
        return False
    return frame[12:14] in (b"\x08\x00", b"\x86\xdd")


PARSING_SEEDS = [s for s in FORWARDED_SEEDS if parses(s)]


@SETTINGS
@given(mutated(FORWARDED_SEEDS))
def test_mutated_forwarded_frames(xdp: XdpRelay, case: tuple[dict[str, Any], str, bytes]) -> None:
    check(xdp, *case)


@SETTINGS
@given(mutated(SEEDS))
def test_mutated_frames(xdp: XdpRelay, case: tuple[dict[str, Any], str, bytes]) -> None:
    check(xdp, *case)


@SETTINGS
@given(payload_mutated(PARSING_SEEDS))
def test_mutated_payloads(xdp: XdpRelay, case: tuple[dict[str, Any], str, bytes]) -> None:
    check(xdp, *case)


ADDRESSES = ["100.64.1.2", "10.70.0.11", "10.70.0.12", "192.0.2.10", "192.0.2.20", "10.70.0.1"]
ADDRESSES6 = ["2001:db8:100::5", "fd00:70::21", "2001:db8:1::10", "fd00:70::1"]


@st.composite
def udp_frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """Well-formed IP/UDP between the vectors' addresses and ports, random WebRTC-ish payload."""
    pool = draw(st.sampled_from([ADDRESSES, ADDRESSES6]))
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    ports = st.sampled_from([3478, 3479, 6081, 7000, 40000, 40001])
    first = draw(st.sampled_from([0, 1, 22, 23, 128, 144, 255]))
    payload = bytes([first]) + draw(st.binary(max_size=120))
    packet = inet.build_udp(src, draw(ports), dst, draw(ports), payload)
    ethertype = b"\x86\xdd" if ":" in src else b"\x08\x00"
    return draw(st.sampled_from(["public", "private"])), bytes.fromhex(
        "020000000001020000000002"
    ) + ethertype + packet


@SETTINGS
@given(udp_frames())
def test_random_udp_frames(xdp: XdpRelay, case: tuple[str, bytes]) -> None:
    check(xdp, STATE, *case)


@SETTINGS
@given(st.binary(min_size=14, max_size=200))
def test_random_bytes(xdp: XdpRelay, frame: bytes) -> None:
    check(xdp, STATE, "public", frame)
