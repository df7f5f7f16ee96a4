"""labkit.loadclient end to end: one process, several real WebRTC sessions through the relay
to both transceivers of a lab, each heard back at its own pitch, and the self-check in the
result. ``ICEGATE_LONG=1`` runs 32 sessions from one process instead of 6."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from labkit.demo import PITCHES, Demo, Options, Progress
from labkit.loadclient import LIMITS, SessionPlan, write_plan
from labkit.support import REPO

SESSIONS = 32 if os.environ.get("ICEGATE_LONG") == "1" else 6
VIP = "192.0.2.10:3478"


def test_one_process_carries_every_session_through_the_relay(lab_name: str, tmp_path: Path) -> None:
    demo = Demo(Options(mode="userspace", lab_name=lab_name), Progress(quiet=True))
    with demo.running():
        txs = demo.lab.transceivers()
        plans = [
            SessionPlan(i + 1, txs[i % len(txs)].signaling_url, PITCHES[i % len(PITCHES)], 1.0)
            for i in range(SESSIONS)
        ]
        plan, out = tmp_path / "plan.json", tmp_path / "result.json"
        write_plan(plan, plans)
        argv = [sys.executable, "-m", "labkit.loadclient", str(plan), "--out", str(out), "--ramp", "0.02"]
        proc = demo.lab.start_process("loadclient", "c1", argv, cwd=REPO)
        pid = proc.pid
        result = wait_for_result(out, demo, 60 + SESSIONS)  # a lab process: lab down ends it on failure
        served = {tx.name: demo.transceiver_counters(tx) for tx in txs}

    assert set(result) == {"sessions", "self_check"}
    sessions = result["sessions"]
    assert sorted(map(int, sessions)) == [p.index for p in plans]
    for p in plans:
        s = sessions[str(p.index)]
        assert s["error"] is None, s
        assert s["remote"] == [VIP] and s["local"][0].startswith("100.64.1.")
        assert s["setup_ms"] > 0 and s["turns"], s
        for turn in s["turns"]:
            assert turn["rtt_ms"] >= 500, turn  # the echo waits for the end of the turn
            assert abs(turn["heard_hz"] - p.hz) < 10, (p, turn)  # its own voice, nobody else's
        assert s["frames_sent"] >= 50 and s["frames_received"] >= 40, s
    # every session on its transceiver, all ended cleanly
    assert sum(c.get("session/completed", 0) for c in served.values()) == SESSIONS, served
    assert all(c.get("in/delivered", 0) > 0 and c.get("in/no_flow", 0) == 0 for c in served.values())

    check = result["self_check"]
    assert check["pid"] == pid and check["sessions"] == SESSIONS
    assert check["frames_sent"] == sum(sessions[str(p.index)]["frames_sent"] for p in plans)
    assert set(check["limits"]) == set(LIMITS) and isinstance(check["bottleneck"], bool)
    assert 0 < check["cpu_share"] <= 1.0
    print(f"\nload client: {json.dumps({k: v for k, v in check.items() if k != 'stalls'})}")


def wait_for_result(out: Path, demo: Demo, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = demo.lab.process("loadclient")
        if record is None or not record.alive:
            break
        time.sleep(0.1)
    assert out.exists(), f"no result:\n{Path(demo.log('loadclient')).read_text()[-3000:]}"
    data: dict[str, Any] = json.loads(out.read_text())
    return data
