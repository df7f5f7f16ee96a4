"""``icegate demo`` end to end: the real command, in a lab of its own, with XDP and with the twin.

The demo runs as a subprocess exactly as a user runs it (``icegate demo --json``); the
test parses its summary and checks that every number is plausible, that the relay's
counters carried the sessions, and that nothing is left behind afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from icegate import netns
from labkit.lab import Lab
from labkit.lab.core import BPFFS, RUN_DIR
from labkit.support import REPO

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]
SESSIONS = 2
DURATION_S = 1.0  # one turn each
VIP = "192.0.2.10:3478"
CLIENT_NETS = {"c1": "100.64.1.", "c2": "100.64.2."}


def run_demo(lab_name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    argv = [*ICEGATE, "demo", "--lab-name", lab_name, "--sessions", str(SESSIONS),
            "--duration", str(DURATION_S), "--json", *args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO)
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        summary = {}
    return proc.returncode, summary, proc.stderr


def assert_nothing_left(lab_name: str) -> None:
    assert netns.names(f"{lab_name}-") == []
    assert list((BPFFS / "icegate").glob(f"{lab_name}-*")) == []
    assert not (RUN_DIR / lab_name).exists()


@pytest.mark.parametrize("mode", ["xdp", "userspace"])
def test_demo_carries_every_session_through_the_relay(lab_name: str, mode: str) -> None:
    code, summary, progress = run_demo(lab_name, "--mode", mode)
    assert code == 0, f"exit {code}\n{progress[-4000:]}\n{json.dumps(summary, indent=1)[-4000:]}"
    assert_nothing_left(lab_name)
    print(f"\n{progress}")  # shown with -s: the progress lines, for the record

    assert summary["ok"] is True
    if mode == "xdp":
        assert summary["datapath"] in ("xdp-native", "xdp-generic")
    else:
        assert (summary["datapath"], summary["datapath_reason"]) == ("userspace", "requested")
    assert "relay ready: " in progress and "down in" in progress

    sessions = summary["sessions"]
    assert [s["index"] for s in sessions] == [1, 2]
    # spread: both client hosts and both transceivers
    assert {s["client"] for s in sessions} == {"c1", "c2"}
    assert {s["transceiver"] for s in sessions} == {"tx1", "tx2"}
    fast_total = 0
    for s in sessions:
        assert s["ok"] and s["problems"] == [] and s["error"] is None, s
        assert s["client_address"].startswith(CLIENT_NETS[s["client"]])
        assert s["remote"] == [VIP]  # the answer offered the relay's VIP and nothing else
        assert s["setup_ms"] > 0  # how long set-up takes is measured in bench/sessions, not here
        assert len(s["turns"]) >= 1
        for turn in s["turns"]:
            # causality, not speed: the echo cannot start before the end-of-turn silence
            # (500 ms) has passed; how long it takes is measured in bench/, not here
            assert turn["rtt_ms"] >= 500, turn
            assert abs(turn["heard_hz"] - s["tone_hz"]) < 10, turn
            assert turn["answer_ms"] >= 400  # most of the 600 ms utterance came back
        # 20 ms frames in real time for the whole session, both ways
        seconds = len(s["turns"]) * 1.0
        assert s["frames_sent"] >= 50 * seconds and s["frames_received"] >= 40 * seconds, s
        assert s["events"][:5] == [
            "speech_started",
            "speech_stopped",
            "end_of_turn",
            "response_started",
            "response_done",
        ]
        assert s["relay_flow_cached"] is True
        assert s["rtp"].get("down_packets_lost", 0) <= 2
        # the relay's flow, read as an operator would (pinned maps, or the twin over HTTP)
        flow = s["relay_flow"]
        assert flow is not None
        assert f"{flow['client']}:{flow['client_port']}" == s["client_address"]
        assert flow["backend"] == f"1:{s['transceiver'].removeprefix('tx')}"
        # RTP both ways at 50 packets/s, plus DTLS, SCTP and consent checks
        assert flow["packets_in"] >= 40 * seconds and flow["packets_out"] >= 40 * seconds, flow
        assert s["fast_path_packets"] == flow["packets_in"] + flow["packets_out"]
        fast_total += s["fast_path_packets"]

    relay = summary["relay"]
    assert relay["fast_path_packets"] > 0
    assert relay["fast_path_packets"] >= fast_total
    assert relay["slow_path_packets"] == 0  # permanent neighbours, live maps: nothing for the slow path
    assert relay["dropped_packets"] == 0
    counters = relay["counters"]
    assert counters["forward/new_flow"] >= SESSIONS and counters["forward/confirm"] >= SESSIONS
    assert counters["forward/flow"] > 0 and counters["forward/return"] > 0
    assert summary["timings"]["total_s"] > 0


def test_demo_refuses_to_touch_an_existing_lab(lab_name: str) -> None:
    """A lab of the same name is left alone: the demo fails at once and removes nothing."""
    lab = Lab.load(lab_name)
    lab.up()
    code, summary, progress = run_demo(lab_name)
    assert code == 1 and summary == {}
    assert "already exists" in progress
    assert lab.exists() and len(netns.names(f"{lab_name}-")) == len(lab.topology.hosts)
    lab.down()
    assert_nothing_left(lab_name)


def test_keep_leaves_the_lab_for_poking_around(lab_name: str) -> None:
    code, summary, progress = run_demo(lab_name, "--mode", "userspace", "--agent", "tone", "--keep")
    assert code == 0, progress[-3000:]
    assert all(abs(t["heard_hz"] - 440.0) < 10 for s in summary["sessions"] for t in s["turns"])
    lab = Lab.load(lab_name)
    status = lab.status()
    assert status["state"] == "up"
    running = {p["name"] for p in status["processes"] if p["alive"]}
    assert {"relay", "tx1", "tx2", "agent-tx1", "agent-tx2", "redis"} <= running
    pids = [p["pid"] for p in status["processes"] if p["alive"]]
    namespaces = {netns.identity(netns.path(name)) for name in netns.names(f"{lab_name}-")}
    proc = subprocess.run([*ICEGATE, "lab", "down", "--name", lab_name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(lab_name)
    assert [pid for pid in pids if running_pid(pid)] == []
    assert processes_in(namespaces) == []  # nothing outlived its namespace's name


def running_pid(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status is collected by init, which in some
    sandboxes never does)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def processes_in(namespaces: set[tuple[int, int]]) -> list[int]:
    """Pids whose network namespace is one of ``namespaces``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if netns.identity(str(entry / "ns" / "net")) in namespaces and running_pid(int(entry.name)):
                    found.append(int(entry.name))
    return found
