"""``icegate bench``: the benchmarks in ``bench/`` of a source checkout, by name.

The benchmarks are not part of the installed package (they build labs, load programs
and write ``bench/results/``); this command finds the checkout the package runs from and
runs ``python -m bench.<name>`` there, passing the remaining arguments through.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from icegate.errors import DependencyError

CHECKOUT = Path(__file__).resolve().parents[1]
HELPERS = {"__init__", "report", "plain_answerer", "b5_direct"}  # modules of bench/ that are not benchmarks
# `icegate bench all`: DESIGN §9's benchmarks that exist, then the plots; each with the
# arguments of its smoke form for `--quick` (which writes to a temporary folder, so the
# committed results stay those of the last full run).
ALL = (
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
    "plots",
)
FULL_ARGS = {"profile_xdp": ["--busy"]}  # the full run's options beyond a benchmark's defaults
QUICK_ARGS = {
    "xdp_micro": ["--runs", "2000"],
    "sessions": ["--mode", "xdp", "--sessions", "4", "--seconds", "2", "--rounds", "1"],
    "plots": [],
}


def benchmarks(root: Path = CHECKOUT) -> dict[str, str]:
    """name -> first line of the module's docstring, for every benchmark in ``root/bench``."""
    folder = root / "bench"
    if not folder.is_dir():
        raise DependencyError(
            f"no bench/ beside the installed package ({root}): benchmarks run from a source checkout"
        )
    found = {}
    for path in sorted(folder.glob("*.py")):
        if path.stem in HELPERS:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.split("\n", 1)[0]
    return found


@click.command(
    short_help="run a benchmark of bench/ (source checkout)",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--json", "as_json", is_flag=True, help="With no NAME: the list as JSON.")
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(as_json: bool, name: str | None, args: tuple[str, ...]) -> None:
    """Run benchmark NAME (xdp_micro, b1_cpu, ...; `all` runs DESIGN §9's set) with ARGS, or list them.

    Each writes bench/results/NAME.md and .json; `icegate bench NAME --help` shows its options.
    """
    found = benchmarks()
    if name is None:
        if as_json:
            click.echo(json.dumps([{"name": n, "what": what} for n, what in found.items()], indent=1))
        else:
            width = max(map(len, found))
            for n, what in found.items():
                click.echo(f"{n:<{width}}  {what}")
        return
    if name == "all":
        sys.exit(run_all(found, args))
    module = name.replace("-", "_")
    if module not in found:
        raise click.BadParameter(f"{name!r}: not one of {', '.join(found)}", param_hint="NAME")
    code = subprocess.call([sys.executable, "-m", f"bench.{module}", *args], cwd=CHECKOUT)
    sys.exit(code)


def run_all(found: dict[str, str], args: tuple[str, ...]) -> int:
    """Every benchmark of ALL in turn; ``--quick`` for the smoke form, ``--out DIR`` for
    where the results go. Returns the number of benchmarks that failed."""
    quick = "--quick" in args
    out = None
    if "--out" in args:
        out = args[args.index("--out") + 1]
    elif quick:
        out = tempfile.mkdtemp(prefix="icegate-bench-quick-")
    failed = []
    for module in ALL:
        if module not in found:
            raise DependencyError(f"bench/{module}.py is missing from {CHECKOUT}")
        argv = [sys.executable, "-m", f"bench.{module}"]
        if module == "plots":
            if out is not None:
                argv += ["--results", out, "--out", str(Path(out) / "img")]
        else:
            argv += QUICK_ARGS.get(module, ["--quick"]) if quick else FULL_ARGS.get(module, [])
            argv += ["--out", out] if out is not None else []
        click.echo(f"== {module}: {' '.join(argv[1:])}", err=True)
        if subprocess.call(argv, cwd=CHECKOUT) != 0:
            failed.append(module)
    click.echo(f"results in {out or 'bench/results'}; failed: {', '.join(failed) or 'none'}", err=True)
    return len(failed)
