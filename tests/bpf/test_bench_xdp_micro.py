"""bench/xdp_micro.py still runs: every path takes the branch it is named after and the
results come out in their shape. Tiny counts, and no bound on the numbers: speed is
measured by the benchmark, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench import xdp_micro
from labkit.bpf_harness import XdpRelay

PATHS = [
    ("flow hit, forward (DTLS, confirmed flow)", "FWD_FLOW", "1-shot"),
    ("return, decapsulate (RTP, confirmed flow)", "FWD_RETURN", "1-shot"),
    ("drop: not WebRTC", "DROP_NOT_WEBRTC", "1-shot"),
    ("first STUN (token check, new pending flow)", "FWD_NEW_FLOW", "1-shot"),
    ("drop: not WebRTC", "DROP_NOT_WEBRTC", "repeat=5"),
    ("drop: forged token (SipHash)", "DROP_TOKEN_MAC", "repeat=5"),
    ("baseline: 2-instruction program", "-", "1-shot"),
]


def test_xdp_micro_reports_every_path(xdp: XdpRelay, tmp_path: Path) -> None:
    timings = xdp_micro.measure(xdp, runs=5)
    assert [(t.path, t.stat, t.method) for t in timings] == PATHS
    assert all(isinstance(t.ns, float) for t in timings)

    json_path, md_path = xdp_micro.write_results(timings, 5, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["benchmark"] == "xdp_micro" and data["runs"] == 5
    assert {"kernel", "cpu", "cpus", "commit", "time"} <= set(data["environment"])
    assert [(t["path"], t["stat"], t["method"]) for t in data["timings"]] == PATHS
    rows = [line for line in md_path.read_text().splitlines() if line.startswith("|")]
    assert rows[0] == "| path | counter | ns/packet | method |"
    assert len(rows) == 2 + len(PATHS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xdp_micro.json", "xdp_micro.md"]
