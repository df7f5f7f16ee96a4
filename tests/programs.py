"""The inventory of external programs (``scripts/programs.txt``) and the two ways the
tests hold the code to it: a static scan of the sources for the programs they run, and a
record of every program the test session actually executes (an audit hook that
``tests/conftest.py`` installs)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
INVENTORY = REPO / "scripts" / "programs.txt"
SCANNED = ("icegate", "controlplane", "transceiver", "geo", "labkit", "tests", "bench")

# Calls whose list-literal argument is an argv: subprocess and asyncio, and our wrappers
# that prefix or spawn one (netns.command/run/spawn, Lab.command/run, Processes.start).
EXEC_CALLS = frozenset(
    {
        "run",
        "Popen",
        "call",
        "check_call",
        "check_output",
        "create_subprocess_exec",
        "command",
        "spawn",
        "start",
    }
)
PROGRAM = re.compile(r"^[a-z][a-z0-9_.+-]*$")


def inventory() -> dict[str, tuple[str, str]]:
    """program -> (packages, role) for every program row (``lib:``/``python:`` rows skipped)."""
    programs: dict[str, tuple[str, str]] = {}
    for line in INVENTORY.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        need, packages, role = fields[:3]
        if ":" in need:
            continue
        for name in need.split("|"):
            programs[name] = (packages, role)
    return programs


def _argv_head(node: ast.AST) -> str | None:
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and PROGRAM.match(first.value):
            return first.value
    return None


def scan_file(path: Path) -> Iterator[tuple[str, int]]:
    """(program, line) for each argv literal that a call runs, each ``shutil.which("x")``,
    and each list a function named ``command``/``*_argv`` returns."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in EXEC_CALLS:
                for arg in node.args:
                    head = _argv_head(arg.value if isinstance(arg, ast.Starred) else arg)
                    if head:
                        yield head, node.lineno
            elif name == "which":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        yield arg.value, node.lineno
        elif isinstance(node, ast.FunctionDef) and (node.name == "command" or node.name.endswith("_argv")):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return) and sub.value is not None:
                    head = _argv_head(sub.value)
                    if head:
                        yield head, sub.lineno


def scan(roots: Iterable[str] = SCANNED) -> dict[str, list[str]]:
    """program -> the places (``path:line``) in the sources that run it."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for program, line in scan_file(path):
                found.setdefault(program, []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def executed_program(argv: Any) -> str | None:
    """The external program an argv runs (through ``nsenter ... --`` too), or None for
    this project's own Python entry points."""
    if isinstance(argv, str | bytes):
        argv = shlex.split(os.fsdecode(argv))
    parts = [os.fsdecode(a) for a in argv]
    if parts and os.path.basename(parts[0]) == "nsenter" and "--" in parts:
        inner = parts[parts.index("--") + 1 :]
        return executed_program(inner) if inner else "nsenter"
    if not parts:
        return None
    program = parts[0]
    if os.path.isabs(program) and (
        program.startswith(str(REPO)) or program.startswith(sys.prefix) or program.startswith("/tmp")
    ):
        return None  # the venv's python and console script, scripts of ours, test-made fakes
    base = os.path.basename(program)
    return None if base.startswith("python") or base == sys.executable else base
