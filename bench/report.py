"""Where benchmark results go: ``bench/results/<name>.json`` (numbers and the machine
they were measured on) and ``bench/results/<name>.md`` (the table that is printed)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def git(*args: str) -> str:
    """``git ARGS`` in the checkout; "" when git or the repository is missing."""
    try:
        return subprocess.run(
            ["git", *args], cwd=Path(__file__).parents[1], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return ""


def environment() -> dict[str, Any]:
    """What a number depends on: kernel, CPU, cores, Python, commit, time."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = git("rev-parse", "--short", "HEAD").strip()
    # Code that differs from the commit (results and plots aside) makes the figures its own.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!docs/img")
    if commit and changed.strip():
        commit += "+changes"
    return {
        "kernel": platform.release(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(name: str, data: dict[str, Any], table: str, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``data`` plus the environment) and ``<name>.md``; each file is
    replaced in one rename, so a crashed run leaves the previous result intact."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    paths = (out_dir / f"{name}.json", out_dir / f"{name}.md")
    texts = (
        json.dumps({"benchmark": name, "environment": env, **data}, indent=1) + "\n",
        f"# {name}\n\n{env['time']}, kernel {env['kernel']}, {env['cpus']} CPUs ({env['cpu']}), "
        f"commit {env['commit'] or '?'}\n\n{table}",
    )
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
