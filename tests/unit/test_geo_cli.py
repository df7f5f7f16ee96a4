"""``icegate geo resolve|serve`` and ``icegate probe`` as a user runs them (the console script)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from labkit.support import free_port
from tests.unit.test_geo_locate import build_mmdb

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "docs" / "geo-catalog.yaml"
ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]


def icegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ICEGATE, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_resolve_explains_a_decision() -> None:
    done = icegate(
        "geo", "resolve", "--catalog", str(WORLD), "--lat", "-36.85", "--lon", "174.76", "--no-health"
    )
    assert done.returncode == 0, done.stderr
    assert "-> region ap, cluster syd1 (nearest" in done.stdout
    assert "primary relay syd-r1" in done.stdout and "backup  relay sin-r1" in done.stdout


def test_resolve_json_with_the_rtt_row_of_a_country() -> None:
    args = ["--catalog", str(WORLD), "--lat", "19.07", "--lon", "72.88", "--no-health", "--json"]
    by_distance = json.loads(icegate("geo", "resolve", *args).stdout)
    by_rtt = json.loads(icegate("geo", "resolve", *args, "--country", "IN").stdout)
    assert by_rtt["cluster"] == "sin1" and by_rtt["cost_source"] == "rtt" and by_rtt["cost_ms"] == 38.0
    assert by_distance["cost_source"] == "distance"


def test_resolve_an_address_in_a_database(tmp_path: Path) -> None:
    mmdb = build_mmdb(tmp_path / "city.mmdb")
    done = icegate("geo", "resolve", "--catalog", str(WORLD), "--mmdb", str(mmdb), "--ip", "2001:db8:5::1",
                   "--no-health", "--json")  # fmt: skip
    data = json.loads(done.stdout)
    assert data["location"]["source"] == "mmdb" and data["cluster"] == "sin1"


def test_resolve_without_live_health_is_unavailable(tmp_path: Path) -> None:
    # Every region's Redis refuses (nothing listens there) -> the 503's reasons, exit 1.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    catalog = tmp_path / "c.yaml"
    catalog.write_text(re.sub(r"redis://[^\"]+", dead, WORLD.read_text()))
    done = icegate("geo", "resolve", "--catalog", str(catalog), "--lat", "1", "--lon", "1", "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["reason"] == "unavailable" and {s["why"] for s in data["skipped"]} == {"region_unreachable"}


def test_serve_fails_at_start_on_a_missing_database(tmp_path: Path) -> None:
    done = icegate("geo", "serve", "--catalog", str(WORLD), "--mmdb", str(tmp_path / "nope.mmdb"))
    assert done.returncode == 1
    assert "icegate: geo.mmdb: no MaxMind database at" in done.stderr


def test_serve_fails_at_start_on_a_bad_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(WORLD.read_text().replace("serves: [fra1, ams1]", "serves: [fra9]"))
    done = icegate("geo", "serve", "--config", str(bad))
    assert done.returncode == 1
    assert "catalog.relays[0] (fra-r1).serves[0]: unknown cluster 'fra9'" in done.stderr


def test_probe_refuses_an_unknown_cluster() -> None:
    done = icegate("probe", "--catalog", str(WORLD), "--cluster", "nowhere")
    assert done.returncode == 2 and "unknown cluster 'nowhere'" in done.stderr


def test_probe_prints_a_table_json_or_wide_and_fails_on_a_dead_cluster() -> None:
    # Signaling on a closed loopback port: every VIP fails before any ICE packet leaves.
    dead = [
        "--catalog",
        str(WORLD),
        "--cluster",
        "fra1",
        "--signaling-url",
        f"http://127.0.0.1:{free_port()}/whip",
    ]
    table = icegate("probe", *dead, "--timeout", "2")
    assert table.returncode == 1, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["CLUSTER", "RELAY", "VIP", "OK", "SETUP_MS", "LOSS", "ERROR"]
    assert len(rows) == 4 and all(row.split()[3] == "NO" for row in rows)
    wide = icegate("probe", *dead, "--timeout", "2", "-o", "wide", "--no-headers")
    assert wide.returncode == 1 and "CLUSTER" not in wide.stdout
    assert [line.split()[-3:] for line in wide.stdout.splitlines()] == [["0", "0", "0"]] * 4
    as_json = json.loads(icegate("probe", *dead, "--timeout", "2", "--json").stdout)
    assert {r["relay"] for r in as_json} == {"fra-r1", "ams-r1"} and not any(r["ok"] for r in as_json)
    assert all("Cannot connect" in r["error"] for r in as_json)
