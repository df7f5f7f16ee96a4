"""scripts/setup is idempotent: run again on a machine it prepared (the test command ran it
just before this suite), it installs nothing, links nothing, rebuilds no venv and says
nothing."""

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
    build = Path("/lib/modules") / release / "build"
    state[str(build)] = os.path.realpath(build) if build.exists() else "absent"
    return state


def test_a_second_setup_run_changes_nothing() -> None:
    before = watched()
    proc = subprocess.run(["bash", "scripts/setup"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # every change it makes is logged as "setup: ..."
    assert watched() == before
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    assert sum(1 for line in mounts if line.split()[1:3] == ["/sys/fs/bpf", "bpf"]) == 1  # not mounted twice
