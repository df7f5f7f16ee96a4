"""Every shared packet vector (tests/data/packets.json) through ``Datapath.process_frame``.

The XDP program runs the same file in tests/bpf/; both must give the same counter,
action, egress, MACs and output bytes for every step (docs/DATAPATH.md §9).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.datapath.engine import Datapath
from controlplane.datapath.layout import FlowEventKind, Stat
from controlplane.datapath.store import FlowEvent, MemoryStore
from icegate.inet import from_addr16
from labkit.nexthop import StaticNextHop, mac_bytes
from labkit.support import flow_rows, load_vector_state, sort_flows

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "packets.json").read_text())
CASES = {c["name"]: c for c in VECTORS["cases"]}


def make_datapath(
    case: dict[str, Any], events: list[FlowEvent] | None = None
) -> tuple[Datapath, MemoryStore]:
    store = MemoryStore()
    load_vector_state(store, {**VECTORS["state"], **case.get("state", {})})
    on_event = events.append if events is not None else None
    state = {**VECTORS["state"], **case.get("state", {})}
    return Datapath(
        store, StaticNextHop(VECTORS["topology"]), on_event=on_event, roles=state.get("roles")
    ), store


@pytest.mark.parametrize("name", list(CASES))
def test_vector(name: str) -> None:
    case = CASES[name]
    datapath, store = make_datapath(case)
    for i, step in enumerate(case["steps"]):
        frame = bytes.fromhex(step["frame"])
        before = [list(c) for c in datapath.counters]
        result = datapath.process_frame(frame, step["ingress"])
        where = f"{name}, step {i}"
        assert result.stat.name == step["stat"], where
        assert result.action == step["action"], where
        assert result.egress == step["egress"], where
        if step["eth"] is None:
            assert (result.eth_src, result.eth_dst) == (None, None), where
        else:
            assert (result.eth_src, result.eth_dst) == (
                mac_bytes(step["eth"]["src"]),
                mac_bytes(step["eth"]["dst"]),
            ), where
        assert (result.output.hex() if result.output is not None else None) == step["output"], where
        # exactly one counter moved, by one packet and the frame's length (§7)
        moved = [
            (s, c[0] - b[0], c[1] - b[1])
            for s, (c, b) in enumerate(zip(datapath.counters, before, strict=True))
            if c != b
        ]
        assert moved == [(Stat[step["stat"]], 1, len(frame))], where
    expect = case.get("expect", {})
    if "flows" in expect:
        assert flow_rows(store.flows()) == sort_flows(expect["flows"])
    if "pending" in expect:
        assert flow_rows(store.pending()) == sort_flows(expect["pending"])


def test_vectors_cover_the_issue_table() -> None:
    seen = {step["stat"] for case in VECTORS["cases"] for step in case["steps"]}
    # Every counter but DROP_INTERNAL (a failed map update or adjust_head) is reachable from a frame.
    assert seen == {s.name for s in Stat} - {"DROP_INTERNAL"}
    actions = {step["action"] for case in VECTORS["cases"] for step in case["steps"]}
    assert actions == {"tx", "redirect", "pass", "drop"}


def test_events_on_confirmation_and_reroute() -> None:
    events: list[FlowEvent] = []
    datapath, _ = make_datapath(CASES["a STUN success response from the owner confirms the flow"], events)
    for step in CASES["a STUN success response from the owner confirms the flow"]["steps"]:
        datapath.process_frame(bytes.fromhex(step["frame"]), step["ingress"])
    assert [e.kind for e in events] == [FlowEventKind.CREATED]
    assert (from_addr16(events[0].key[0]), events[0].key[1], events[0].cluster, events[0].index) == (
        "100.64.1.2",
        40000,
        1,
        1,
    )

    events.clear()
    datapath, _ = make_datapath(
        CASES["ICE restart to another transceiver moves a confirmed flow once it answers"], events
    )
    for step in CASES["ICE restart to another transceiver moves a confirmed flow once it answers"]["steps"]:
        datapath.process_frame(bytes.fromhex(step["frame"]), step["ingress"])
    assert [(e.kind, e.index) for e in events] == [(FlowEventKind.REROUTED, 2)]

    events.clear()  # pending flows emit nothing, re-routed or not (§8)
    datapath, _ = make_datapath(CASES["ICE restart re-routes a pending flow"], events)
    for step in CASES["ICE restart re-routes a pending flow"]["steps"]:
        datapath.process_frame(bytes.fromhex(step["frame"]), step["ingress"])
    assert events == []


def test_flow_counters_and_timestamps() -> None:
    clock = iter(range(1000, 10**6, 1000))
    case = CASES["a STUN success response from the owner confirms the flow"]
    store = MemoryStore()
    load_vector_state(store, {**VECTORS["state"], **case.get("state", {})})
    datapath = Datapath(store, StaticNextHop(VECTORS["topology"]), clock=lambda: next(clock))
    sizes = {"public": 0, "private": 0}
    for step in case["steps"]:
        frame = bytes.fromhex(step["frame"])
        datapath.process_frame(frame, step["ingress"])
        sizes[step["ingress"]] += (
            len(bytes.fromhex(step["output"])) if step["ingress"] == "private" else len(frame) - 14
        )
    ((_, flow),) = list(store.flows())
    assert (flow.created_ns, flow.last_seen_ns) == (1000, 7000)
    assert (flow.packets_in, flow.packets_out) == (3, 4)
    assert (flow.bytes_in, flow.bytes_out) == (sizes["public"], sizes["private"])


def test_short_frames_pass_as_not_ip() -> None:
    """Shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses these, so no vector has one."""
    datapath, _ = make_datapath({})
    for n in range(14):
        assert datapath.process_frame(bytes(n), "public").stat is Stat.PASS_NOT_IP
    assert datapath.counter(Stat.PASS_NOT_IP) == (14, sum(range(14)))
