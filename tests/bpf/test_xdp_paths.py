"""What the shared vectors do not show: the token vectors through the C decoder, ring
buffer events, the flow counters, header fields and checksums checked by an independent
parser, and the loader's handling of pinned maps."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.datapath import layout
from controlplane.datapath.layout import FlowEventKind
from controlplane.datapath.store import Flow
from controlplane.kernel.libbpf import possible_cpus
from controlplane.kernel.loader import Loader, status
from controlplane.kernel.maps import KernelStore
from icegate import geneve, inet, stun
from icegate.errors import BpfError, RelayNotRunning
from icegate.inet import addr16
from labkit import packets as pb
from labkit.bpf_harness import DATA, TEST_LIMITS, XdpRelay, relay_config, vectors

VECTORS = vectors()
STATE = VECTORS["state"]
CASES = {c["name"]: c for c in VECTORS["cases"]}
TOKENS = json.loads((DATA / "token_vectors.json").read_text())


def run_case(xdp: XdpRelay, name: str) -> None:
    case = CASES[name]
    xdp.apply({**STATE, **case.get("state", {})})
    for step in case["steps"]:
        assert xdp.run(bytes.fromhex(step["frame"]), step["ingress"]).stat == step["stat"]


# ---- the token vectors, through the C decoder (bpf/token.h) ----
def token_state() -> dict[str, Any]:
    backends = [
        {
            "cluster": c["cluster"],
            "index": c["index"],
            "address": "10.70.0.11",
            "port": 6081,
            "state": "active",
            "generation": 1,
        }
        for c in TOKENS["cases"]
        if c["ok"]
    ]
    return {**STATE, "route_keys": TOKENS["keys"], "backends": backends}


@pytest.mark.parametrize("case", TOKENS["cases"], ids=[c["name"] for c in TOKENS["cases"]])
def test_token_vector(xdp: XdpRelay, case: dict[str, Any]) -> None:
    xdp.apply(token_state())
    frame = pb.from_client(pb.client_packet(pb.C1, pb.VIP4, pb.check(case["ufrag"])))
    got = xdp.run(frame)
    key = (addr16(pb.C1[0]), pb.C1[1], pb.VIP4[2])
    if case["ok"]:
        assert got.stat == "FWD_NEW_FLOW"
        pending = xdp.store.get_pending(key)
        assert pending is not None
        assert (pending.cluster, pending.index, pending.token_tag) == (
            case["cluster"],
            case["index"],
            case["tag"],
        )
    else:
        assert got.stat == f"DROP_{case['reason'].upper()}"
        assert xdp.store.get_pending(key) is None


# ---- events (DATAPATH.md §8) ----
@pytest.fixture(scope="module")
def events(xdp: XdpRelay) -> Iterator[list[layout.FlowEventRecord]]:
    received: list[layout.FlowEventRecord] = []
    xdp.loader.open_events(received.append)
    yield received


def drain(xdp: XdpRelay, received: list[layout.FlowEventRecord]) -> list[layout.FlowEventRecord]:
    xdp.loader.consume_events()
    found = list(received)
    received.clear()
    return found


def test_confirmation_emits_created(xdp: XdpRelay, events: list[layout.FlowEventRecord]) -> None:
    drain(xdp, events)
    run_case(xdp, "a STUN success response from the owner confirms the flow")
    got = drain(xdp, events)
    assert [e.kind for e in got] == [FlowEventKind.CREATED]
    e = got[0]
    assert (e.key.client_host, e.key.client_host_port, e.key.vip_index) == (*pb.C1, 0)
    assert (e.backend.cluster, e.backend.index, e.token_tag) == (1, 1, pb.tag(pb.T11))
    assert e.ts_ns > 0


def test_reroute_of_confirmed_flow_emits_rerouted(
    xdp: XdpRelay, events: list[layout.FlowEventRecord]
) -> None:
    drain(xdp, events)
    run_case(xdp, "ICE restart to another transceiver moves a confirmed flow once it answers")
    got = drain(xdp, events)
    assert [e.kind for e in got] == [FlowEventKind.REROUTED]
    flow = xdp.store.get_flow(
        (addr16(got[0].key.client_host), got[0].key.client_host_port, got[0].key.vip_index)
    )
    assert flow is not None
    assert (got[0].backend.cluster, got[0].backend.index, got[0].token_tag) == (
        flow.cluster,
        flow.index,
        flow.token_tag,
    )


def test_pending_flows_emit_nothing(xdp: XdpRelay, events: list[layout.FlowEventRecord]) -> None:
    drain(xdp, events)
    run_case(xdp, "ICE restart re-routes a pending flow")
    run_case(xdp, "a spoofed check with another session's token does not move a live flow")
    assert drain(xdp, events) == []


# ---- flow counters and timestamps (§2.1 r4, §3 r10) ----
def test_flow_counts_inner_ip_bytes(xdp: XdpRelay) -> None:
    xdp.apply(STATE)
    packets = [
        pb.client_packet(pb.C1, pb.VIP4, pb.check(pb.T11)),
        pb.client_packet(pb.C1, pb.VIP4, pb.check(pb.T11)),
    ]
    for packet in packets:
        assert xdp.run(pb.from_client(packet, pad_to=200)).stat.startswith("FWD_")
    key = (addr16(pb.C1[0]), pb.C1[1], 0)
    pending = xdp.store.get_pending(key)
    assert pending is not None
    assert (pending.packets_in, pending.bytes_in) == (2, sum(len(p) for p in packets))
    assert 0 < pending.created_ns <= pending.last_seen_ns
    reply = pb.reply(pb.VIP4, pb.C1, pb.check(username=b"cLnT:" + pb.T11.encode()))
    assert xdp.run(pb.returned(pb.B11, reply), "private").stat == "FWD_RETURN_PENDING"
    assert xdp.run(pb.returned(pb.B11, pb.reply(pb.VIP4, pb.C1, pb.success(pb.C1))), "private").stat == (
        "FWD_CONFIRM"
    )
    flow = xdp.store.get_flow(key)
    assert flow is not None and xdp.store.get_pending(key) is None
    assert (flow.packets_in, flow.packets_out) == (2, 2)
    assert flow.bytes_out == len(reply) + len(pb.reply(pb.VIP4, pb.C1, pb.success(pb.C1)))


# ---- output headers, parsed independently of the expected bytes ----
def outer(output: str) -> tuple[inet.UdpPacket, bytes]:
    raw = bytes.fromhex(output)
    return inet.parse_udp(raw), raw


@pytest.mark.parametrize("backend", [pb.B11, pb.B15], ids=["ipv4 outer", "ipv6 outer"])
@pytest.mark.parametrize("inner_check", ["valid", "zero", "wrong"])
def test_encapsulation_headers_and_checksums(xdp: XdpRelay, backend: pb.B, inner_check: str) -> None:
    """Every outer field of §2.2, and an outer checksum that verifies whatever the inner one is."""
    xdp.apply(STATE)
    packet = bytearray(pb.client_packet(pb.C1, pb.VIP4, pb.check(pb.tok(backend))))
    if inner_check != "valid":
        packet[26:28] = b"\x00\x00" if inner_check == "zero" else bytes([packet[26] ^ 0x55, packet[27]])
    got = xdp.run(pb.from_client(bytes(packet)))
    assert got.stat == "FWD_NEW_FLOW" and got.output is not None
    parsed, raw = outer(got.output)
    header, inner = geneve.decapsulate(parsed.payload)
    assert inner == bytes(packet)  # byte for byte, TTL and checksum untouched
    assert (parsed.dst, parsed.dport, parsed.ttl) == (backend.address, backend.port, 64)
    assert parsed.sport == geneve.entropy_port(addr16(pb.C1[0]), pb.C1[1], pb.VIP4[1])
    assert (header.vni, header.protocol, header.options, header.oam, header.critical) == (
        backend.index,
        geneve.PROTO_IPV4,
        b"",
        False,
        False,
    )
    if ":" in backend.address:
        assert parsed.src == pb.TUNNEL6
        assert raw[0] >> 4 == 6 and raw[1] == 0 and raw[2:4] == b"\x00\x00"  # traffic class, flow label
        segment = raw[40:]
        assert inet.udp_checksum(raw[8:24], raw[24:40], segment) == 0xFFFF  # verifies (sums to zero)
    else:
        assert parsed.src == pb.TUNNEL4
        assert inet.checksum(raw[:20]) == 0
        ident, frag = struct.unpack("!HH", raw[4:8])
        assert (raw[1], ident, frag) == (0, 0, inet.IPV4_FLAG_DF)
        assert raw[26:28] == b"\x00\x00"  # UDP checksum 0 over IPv4 (RFC 8926 §3.3)


def test_return_output_is_the_inner_packet(xdp: XdpRelay) -> None:
    xdp.apply({**STATE, "flows": [pb.flow(pb.C1, pb.VIP4, pb.B11)]})
    inner = pb.reply(pb.VIP4, pb.C1, pb.RTP)
    got = xdp.run(pb.returned(pb.B11, inner) + bytes(20), "private")  # Ethernet padding is dropped
    assert got.stat == "FWD_RETURN" and got.output == inner.hex()
    assert got.eth == {"src": pb.PUB_MAC, "dst": pb.GW_MAC}
    parsed = inet.parse_udp(inner)
    assert stun.is_stun(parsed.payload) is False and (parsed.src, parsed.sport) == pb.VIP4[:2]


# ---- the loader and pinned maps ----
@pytest.fixture
def scratch_config() -> Iterator[Any]:
    config = relay_config(f"test-pins-{os.getpid()}", STATE)
    try:
        yield config
    finally:
        Loader(config).unpin()


def test_reload_reuses_pinned_maps(scratch_config: Any) -> None:
    """A control-plane restart: a new load over the same pins keeps the flows."""
    first = Loader(scratch_config)
    first.load()
    key = (addr16(pb.C1[0]), pb.C1[1], 0)
    flow = pb.flow(pb.C1, pb.VIP4, pb.B11)
    first.store().put_flow(key, layout_flow(flow))
    first_id = status(scratch_config.pin_dir)["program"]["id"]
    first.close()

    second = Loader(scratch_config)
    second.load()
    try:
        assert second.store().get_flow(key) == layout_flow(flow)
        assert status(scratch_config.pin_dir)["program"]["id"] != first_id  # the new program is pinned
    finally:
        second.close()


def test_mismatched_pins_are_refused(scratch_config: Any) -> None:
    loader = Loader(scratch_config)
    loader.load()
    loader.close()
    bigger = relay_config(scratch_config.name, STATE, dataclasses.replace(TEST_LIMITS, max_flows=8192))
    with pytest.raises(
        BpfError, match=r"map flows: pinned max_entries is 4096, the configuration wants 8192"
    ):
        Loader(bigger).load()


def test_no_pins_is_relay_not_running(tmp_path: Path) -> None:
    with pytest.raises(
        RelayNotRunning, match=rf"relay 'ghost' is not running: nothing pinned at {tmp_path}/ghost"
    ):
        KernelStore(tmp_path / "ghost")
    with pytest.raises(RelayNotRunning, match="ghost"):
        status(tmp_path / "ghost")


def test_per_cpu_counters_are_summed(xdp: XdpRelay) -> None:
    """The counters map holds one slot per possible CPU; KernelStore sums them."""
    xdp.apply(STATE)
    counters = xdp.store.maps["counters"]
    stat = layout.Stat.PASS_NOT_IP
    before = xdp.store.counters()[stat]
    values = counters.lookup_percpu(counters.key_type(stat))
    assert values is not None and len(values) == possible_cpus()
    bumped = [layout.Counter(v.packets + 1, v.bytes + 10) for v in values]
    counters.update(counters.key_type(stat), bumped)
    assert xdp.store.counters()[stat] == (before[0] + len(values), before[1] + 10 * len(values))
    assert ctypes.sizeof(layout.Counter) == 16


def test_put_flows_batch_reads_back(xdp: XdpRelay) -> None:
    """put_flows packs keys and values itself (layout.FLOW_KEY/FLOW_VALUE): every field
    comes back through the ctypes structs, and malformed batches are refused."""
    xdp.apply(STATE)
    items = [
        (
            (addr16(f"100.64.7.{i + 1}"), 40000 + i, i % 2),
            Flow(1, 1 + i % 2, i, 10 + i, 20 + i, i, 2 * i, 3, 4),
        )
        for i in range(100)
    ]
    items.append(
        ((addr16("2001:db8:7::1"), 65535, 1), Flow(65535, 65535, 2**32 - 1, 2**64 - 1, 0, 1, 2, 3, 4))
    )
    assert xdp.store.put_flows(items) == len(items)
    assert sorted(xdp.store.flows()) == sorted(items, key=lambda kv: kv[0])
    assert xdp.store.put_flows([]) == 0
    flows = xdp.store.maps["flows"]
    with pytest.raises(ValueError, match="not whole 20-byte keys and 56-byte values"):
        flows.update_batch_raw(bytes(40), bytes(56))
    with pytest.raises(BpfError, match="per-CPU"):
        xdp.store.maps["counters"].update_batch_raw(bytes(4), bytes(16))
    xdp.apply(STATE)


def layout_flow(flow: dict[str, Any]) -> Flow:
    return Flow(flow["cluster"], flow["index"], flow["token_tag"], 1, 1)
