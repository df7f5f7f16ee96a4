"""bench/sessions.py still runs: its lab comes up, both answerers carry sessions, the results
come out in their shape and the lab leaves nothing behind. Tiny counts (one relay mode, two
sessions, a 2 s window, one set-up round), and no bound on any number: speed is measured
by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from icegate import netns
from labkit.lab.core import BPFFS, RUN_DIR
from labkit.support import REPO

ANSWERERS = ["icegate", "plain"]
SETUP_KEYS = {"median_ms", "p90_ms", "rounds", "samples_ms"}
LOAD_KEYS = {
    "sessions", "window_s", "cpu_share", "core_pct", "core_pct_per_session", "sessions_per_core",
    "frames_per_s_min", "frames_per_s_median", "sessions_with_audio_back", "saturated", "relay_core_pct",
    "client", "real_time",
}  # fmt: skip
CLIENT_KEYS = {"sessions", "cpu_share", "waited_for_cpu_share", "loop_lag_ms_p99", "frames_late_share",
               "frames_sent", "frames_late", "over_limits", "bottleneck"}  # fmt: skip


def test_sessions_bench_runs_and_writes_its_results(lab_name: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.sessions", "--mode", "userspace", "--sessions", "2",
            "--seconds", "2", "--rounds", "1", "--out", str(tmp_path), "--lab-name", lab_name]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert netns.names(f"{lab_name}-") == []
    assert list((BPFFS / "icegate").glob(f"{lab_name}-*")) == []
    assert not (RUN_DIR / lab_name).exists()
    assert f"lab {lab_name} down in" in proc.stderr

    data = json.loads((tmp_path / "sessions.json").read_text())
    assert data["benchmark"] == "sessions"
    assert {"kernel", "cpu", "cpus", "commit", "time"} <= set(data["environment"])
    assert (data["sessions"], data["seconds"], data["rounds"]) == (2, 2.0, 1)
    assert [m["mode"] for m in data["modes"]] == ["userspace"]
    mode = data["modes"][0]
    assert mode["datapath"] == "userspace"
    assert set(mode["setup"]) == {*ANSWERERS, "ratio"} and set(mode["load"]) == {*ANSWERERS, "ratio"}
    for name in ANSWERERS:
        assert set(mode["setup"][name]) == SETUP_KEYS
        assert len(mode["setup"][name]["samples_ms"]) == mode["setup"][name]["rounds"] == 1
        assert set(mode["load"][name]) == LOAD_KEYS
        assert mode["load"][name]["sessions"] == 2
        # the load client's self-check over the same window (labkit.loadclient)
        client = mode["load"][name]["client"]
        assert set(client) >= CLIENT_KEYS and client["sessions"] == 2 and client["frames_sent"] > 0
    assert mode["load"]["icegate"]["relay_core_pct"] is not None
    assert mode["load"]["plain"]["relay_core_pct"] is None

    tables = [line for line in (tmp_path / "sessions.md").read_text().splitlines() if line.startswith("|")]
    assert tables[0].startswith("| relay mode | answerer | median ms |")
    assert len(tables) == 2 * (2 + len(ANSWERERS))  # two tables: header, rule, one row per answerer
    assert proc.stdout.splitlines()[-1] == tables[-1]  # the table is printed too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.json", "sessions.md"]
