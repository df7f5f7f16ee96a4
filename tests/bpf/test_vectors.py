"""Every shared packet vector (tests/data/packets.json) through the XDP program.

The userspace twin runs the same file (tests/unit/test_datapath.py); both must give the
same counter, action, egress, MACs and output bytes for every step (DATAPATH.md §9),
and exactly one counter must move, by one packet and the frame's length (§7).
"""

from __future__ import annotations

import pytest

from controlplane.datapath.layout import Stat
from labkit.bpf_harness import XdpRelay, vectors
from labkit.support import sort_flows

VECTORS = vectors()
CASES = {c["name"]: c for c in VECTORS["cases"]}


@pytest.mark.parametrize("name", list(CASES))
def test_vector(xdp: XdpRelay, name: str) -> None:
    case = CASES[name]
    xdp.apply({**VECTORS["state"], **case.get("state", {})})
    for i, step in enumerate(case["steps"]):
        frame = bytes.fromhex(step["frame"])
        got = xdp.run(frame, step["ingress"])
        want = {k: step[k] for k in ("stat", "action", "egress", "eth", "output")}
        assert got.step_view() == want, f"{name}, step {i}"
        assert got.moved == [(Stat[step["stat"]], 1, len(frame))], f"{name}, step {i}"
    expect = case.get("expect", {})
    if "flows" in expect:
        assert xdp.flows() == sort_flows(expect["flows"])
    if "pending" in expect:
        assert xdp.pending() == sort_flows(expect["pending"])
