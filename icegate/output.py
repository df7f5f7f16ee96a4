"""How every icegate command prints what it lists: ``-o table|wide|json`` (``--json`` is
``-o json``) and ``--no-headers``, kubectl's conventions, for the relay's, the transceiver's
and the geo commands alike."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

Row = Mapping[str, Any]


OUTPUT_KEY = "icegate.output"


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-o table|wide|json`` (``--json`` is ``-o json``) and ``--no-headers`` -> the
    ``as_json`` keyword argument; :func:`emit` reads the rest (kubectl's conventions)."""

    @click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "wide", "json"]),
        default="table",
        show_default=True,
        help="Output format: a table, a table with every column, or JSON.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
    @click.option("--no-headers", is_flag=True, help="Print tables without their header line.")
    @functools.wraps(func)
    def wrapper(output: str, as_json: bool, no_headers: bool, **kwargs: Any) -> Any:
        output = "json" if as_json else output
        click.get_current_context().meta[OUTPUT_KEY] = (output, no_headers)
        return func(as_json=output == "json", **kwargs)

    return wrapper


def emit(
    rows: Any,
    as_json: bool,
    columns: dict[str, Any] | None = None,
    empty: str = "",
    wide: dict[str, Any] | None = None,
) -> None:
    """Print ``rows`` as ``-o`` asks: JSON, a table (``wide``: plus the ``wide`` columns)."""
    ctx = click.get_current_context(silent=True)
    output, no_headers = ctx.meta.get(OUTPUT_KEY, ("table", False)) if ctx else ("table", False)
    if as_json:
        click.echo(dump_json(rows))
    elif columns is not None:
        if output == "wide" and wide:
            columns = {**columns, **wide}
        if rows:
            click.echo(table(rows, columns, headers=not no_headers))
        elif empty and not no_headers:
            click.echo(empty)
    else:
        click.echo(rows)


def table(rows: Sequence[Row], columns: Mapping[str, Any], headers: bool = True) -> str:
    """A left-aligned text table (numbers right-aligned); ``-`` for missing values;
    without its header line when ``headers`` is false (``--no-headers``)."""
    cells = [[_cell(get(r)) for get in columns.values()] for r in rows]
    numeric = [all(_is_number(c) for c in col) and bool(col) for col in zip(*cells, strict=False)] or [
        False
    ] * len(columns)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(columns)]
    lines = []
    for line in [list(columns), *cells] if headers else cells:
        parts = [
            value.rjust(width) if is_num else value.ljust(width)
            for value, width, is_num in zip(line, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _is_number(text: str) -> bool:
    return text == "-" or text.replace(".", "", 1).isdigit()


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
