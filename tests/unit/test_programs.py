"""Every program the code, the tests and the benchmarks run is in scripts/programs.txt,
so that scripts/setup installs it on a fresh machine (issue: `ping` was missing)."""

from __future__ import annotations

from pathlib import Path

from tests import programs


def test_every_program_run_is_in_the_inventory() -> None:
    known = programs.inventory()
    found = programs.scan()
    assert {"ip", "nsenter", "sysctl", "redis-server", "ping"} <= set(found)  # the scan sees them
    missing = {program: places for program, places in found.items() if program not in known}
    assert missing == {}, f"add these to scripts/programs.txt: {missing}"


def test_the_scan_finds_each_way_of_running_a_program(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import shutil, subprocess, asyncio\n"
        "subprocess.run(['alpha', '-x'])\n"
        "netns.run(ns, ['beta', 'arg'])\n"
        "shutil.which('gamma')\n"
        "asyncio.create_subprocess_exec(*['delta'])\n"
        "def command(name, argv):\n    return ['epsilon', '--', *argv]\n"
        "def thing_argv():\n    return ('zeta', '-v')\n"
        "labels = ['not', 'a', 'program']\n"
    )
    assert sorted(program for program, _ in programs.scan_file(source)) == [
        "alpha",
        "beta",
        "delta",
        "epsilon",
        "gamma",
        "zeta",
    ]


def test_nsenter_is_unwrapped_and_our_own_entry_points_skipped() -> None:
    assert programs.executed_program(["nsenter", "--net=/run/netns/x", "--", "ping", "-c1", "h"]) == "ping"
    assert programs.executed_program("ip -j link") == "ip"
    assert programs.executed_program([str(programs.REPO / "scripts" / "setup")]) is None


def test_inventory_rows_are_well_formed() -> None:
    roles = {role for _, role in programs.inventory().values()}
    assert roles <= {"demo", "test"}
    for line in programs.INVENTORY.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert len(line.split()) >= 3, line
