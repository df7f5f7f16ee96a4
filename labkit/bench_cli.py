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
from pathlib import Path

import click

from icegate.errors import DependencyError

CHECKOUT = Path(__file__).resolve().parents[1]
HELPERS = {"__init__", "report", "plain_answerer"}  # modules of bench/ that are not benchmarks


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
    """Run benchmark NAME (xdp_micro, twin_micro, flow_restore, sessions) with ARGS, or list them.

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
    module = name.replace("-", "_")
    if module not in found:
        raise click.BadParameter(f"{name!r}: not one of {', '.join(found)}", param_hint="NAME")
    code = subprocess.call([sys.executable, "-m", f"bench.{module}", *args], cwd=CHECKOUT)
    sys.exit(code)
