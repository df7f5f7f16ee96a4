"""A non-editable install (the wheel ``pip install .`` builds) carries everything the
loader compiles: ``icegate.bpf`` resolves to real files, every ``#include "..."`` of the
program resolves inside that directory, and the console script is declared."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from labkit.support import REPO

INCLUDE_RE = re.compile(r'^#include "([^"]+)"', re.MULTILINE)


def test_wheel_ships_the_bpf_sources(tmp_path: Path) -> None:
    # Build from a copy without build/ and *.egg-info: setuptools would reuse their file lists.
    tree = tmp_path / "tree"
    junk = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "results")
    shutil.copytree(REPO, tree, ignore=junk)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, tree],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("icegate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "icegate = icegate.cli:main" in zf.read(entry_points).decode()
        zf.extractall(tmp_path / "site")

    # Import from the unpacked wheel alone, from a directory that is not the checkout.
    probe = (
        "import icegate.bpf as b, controlplane.kernel.loader, transceiver.mux, json; "
        "d = b.source_dir(); print(json.dumps([str(d), sorted(p.name for p in d.iterdir())]))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {probe}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    directory, files = json.loads(out)
    source = Path(directory)
    assert source.is_relative_to(tmp_path / "site"), directory
    expected = {p.name for p in Path(REPO, "bpf").iterdir() if p.suffix in (".c", ".h")}
    assert expected <= set(files)
    for name in expected:
        for included in INCLUDE_RE.findall((source / name).read_text()):
            assert (source / included).is_file(), f"{name} includes {included}, not shipped"
