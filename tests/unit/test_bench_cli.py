"""``icegate bench``: lists the benchmarks of the checkout and runs one by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labkit.support import REPO

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]


def icegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ICEGATE, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_lists_the_benchmarks() -> None:
    listing = json.loads(icegate("bench", "--json").stdout)
    names = [b["name"] for b in listing]
    assert names == sorted(names) and {
        "flow_restore",
        "geo_decision",
        "sessions",
        "twin_micro",
        "xdp_micro",
    } <= set(names)
    assert {"fleet_node_loss", "fleet_sim", "agent_latency", "vad"} <= set(names)
    assert {
        "b1_cpu",
        "b2_latency",
        "b3_first_packets",
        "b7_flow_table",
        "b10_floods",
        "b5_voice",
        "profile_xdp",
        "plots",
    } <= set(names)
    assert all(b["what"] for b in listing)
    rows = {line.split()[0]: line for line in icegate("bench").stdout.splitlines()}
    assert "Nanoseconds per packet" in rows["xdp_micro"] and len(rows) == len(names)


def test_runs_one_by_name_and_passes_its_arguments(tmp_path: Path) -> None:
    done = icegate("bench", "twin-micro", "--no-sockets", "--seconds", "0.05", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "twin_micro.json").read_text())
    assert results["benchmark"] == "twin_micro" and results["results"]["first_stun_us"] > 0
    assert "| first STUN" in done.stdout
    usage = icegate("bench", "twin_micro", "--help")
    assert usage.returncode == 0 and "--no-sockets" in usage.stdout  # the benchmark's own help


def test_an_unknown_name_lists_the_known_ones() -> None:
    refused = icegate("bench", "nosuch")
    assert (
        refused.returncode == 2
        and "not one of agent_latency, b10_floods, b1_cpu, b2_latency, b3_first_packets" in refused.stderr
        and "fleet_node_loss, fleet_sim, flow_restore, " in refused.stderr
    )
