"""`icegate bench all --quick`: every benchmark of DESIGN §9 that exists runs in its smoke
form, in the lab of namespaces, with its real peers (coturn, the C forwarder, the twin),
and writes its results and plots. No figure is asserted (speed belongs in bench/): this
checks that the benchmarks run, that each measured what it names, and that the
generator's self-check and the loss are recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.support import REPO

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]


@pytest.mark.timeout(600)
def test_bench_all_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [*ICEGATE, "bench", "all", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(results) >= {
        "xdp_micro",
        "profile_xdp",
        "perf_xdp",
        "b1_cpu",
        "b2_latency",
        "b3_first_packets",
        "b7_flow_table",
        "b10_floods",
        "b5_voice",
        "sessions",
    }
    for name, data in results.items():
        assert data["benchmark"] == name and data["environment"]["kernel"], name
        assert (tmp_path / f"{name}.md").read_text().count("|") > 4, name
    b1 = results["b1_cpu"]
    peers = {r["peer"] for r in b1["rows"]}
    assert peers == {"xdp", "twin (asyncio)", "twin (uvloop)", "coturn", "C forwarder", "direct"}
    for row in b1["rows"]:
        assert row["sent"] > 0 and "gen_kept_up" in row and row["loss"] is not None, row
    assert all(r["xdp_runs"] > 0 for r in b1["rows"] if r["peer"] == "xdp")  # bpf_stats counted
    profile = results["profile_xdp"]  # every path timed what it names (first STUN: new flows)
    assert {r["path"] for r in profile["rows"]} == {"flow hit", "return", "first STUN", "drop"}
    assert all(r["path_checked"] and r["runs"] > 0 for r in profile["rows"]), profile["rows"]
    # perf's samples are the program's, charged to functions, and their sum and the kernel's
    # own accounting describe the same work: two measurements within a factor of four
    [perf] = results["perf_xdp"]["rows"]
    assert perf["runs"] > 0 and perf["samples_program"] >= 20, perf
    assert "the program's own instructions" in perf["functions_ns_per_pkt"], perf
    assert 0.25 < perf["ns_per_pkt_sampled"] / perf["ns_per_pkt_bpf_stats"] < 4, perf
    [mode] = results["sessions"]["modes"]  # B6: real sessions through the XDP relay, measured
    assert mode["mode"] == "xdp" and mode["load"]["icegate"]["sessions_with_audio_back"] == 4, mode
    b3 = results["b3_first_packets"]
    assert {r["peer"] for r in b3["rows"]} == {"xdp", "twin (uvloop)"}
    assert all("misrouted" in r and "lost" in r for r in b3["rows"])
    b7 = results["b7_flow_table"]
    assert [r["size"] for r in b7["rows"]] == [16, 10_000] and all(
        r["bytes_per_flow"] > 0 for r in b7["rows"]
    )
    b10 = results["b10_floods"]
    assert {r["flood"] for r in b10["rows"]} == {"junk", "forged token"}
    assert all("flows_before" in r and "flows_after" in r for r in b10["rows"])
    b5 = results["b5_voice"]  # Chromium and aiortc, through the relay and direct
    for client in ("chromium", "aiortc"):
        for target in ("relay", "direct"):
            assert b5["mouth_to_ear"][client][target]["n"] > 0, (client, target)
    assert b5["turn"]["chromium"]["relay"]["turn_ms"]["n"] == 2
    assert b5["turn"]["chromium"]["relay"]["barge_audio_stop_ms"]["n"] == 1
    assert b5["turn"]["aiortc_prefetch4"]["turn_ms"]["n"] == 2
    for png in ("b1_cpu.png", "b2_latency.png", "profile_xdp.png", "b5_voice.png"):
        assert (tmp_path / "img" / png).stat().st_size > 1000, png
