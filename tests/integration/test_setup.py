"""scripts/setup is idempotent: run again on a machine it prepared, it installs nothing,
links nothing, rebuilds no venv and says nothing. The test prepares the machine itself
with a first run, so it holds whatever ran before it (or did not)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from labkit.support import REPO

ROOT = Path(REPO)


def watched() -> dict[str, float | str]:
    """What a second run must not touch: the venv's stamp and python, the headers link."""
    release = os.uname().release
    paths = [ROOT / ".venv" / ".icegate-installed", ROOT / ".venv" / "bin" / "python"]
    state: dict[str, float | str] = {str(p): p.stat().st_mtime for p in paths}
    build = Path("/lib/modules") / release / "build"  # absent before the first run on a fresh host
    state[str(build)] = os.path.realpath(build) if build.exists() else "absent"
    return state


def setup() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/setup", "--for", "test"], cwd=REPO, capture_output=True, text=True, timeout=900
    )


def test_a_second_setup_run_changes_nothing() -> None:
    first = setup()
    assert first.returncode == 0, first.stderr
    before = watched()
    proc = setup()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # every change it makes is logged as "setup: ..."
    assert watched() == before
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    assert sum(1 for line in mounts if line.split()[1:3] == ["/sys/fs/bpf", "bpf"]) == 1  # not mounted twice
