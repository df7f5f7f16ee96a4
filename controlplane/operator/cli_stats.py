"""``icegate stats``: live datapath counters with rates, like top."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import click

from controlplane.operator import views
from controlplane.operator.cli_common import Target, env_of, target_options
from icegate.output import emit, json_option


@click.command(cls=click.Command, short_help="live relay counters with rates")
@target_options
@json_option
@click.option("--interval", type=click.FloatRange(min=0.05), help="Refresh every S seconds, with rates.")
@click.option(
    "--count", type=click.IntRange(min=1), help="Stop after N samples [1, or forever with --interval]."
)
@click.pass_context
def stats(
    ctx: click.Context, target: Target, as_json: bool, interval: float | None, count: int | None
) -> None:
    """Live datapath counters (non-zero rows, busiest first), like top."""
    env = env_of(ctx)
    source = env.open_counters(target)
    samples = count if count is not None else (1 if interval is None else 0)
    previous: Sequence[tuple[int, int]] | None = None
    taken = 0
    while True:
        totals = list(source.counters())
        rows = views.stat_rows(totals, previous, interval or 0.0)
        taken += 1
        _print_stats(rows, as_json, interval, taken)
        if samples and taken >= samples:
            return
        previous = totals
        env.sleep(interval or 0.0)


def _print_stats(rows: list[views.Row], as_json: bool, interval: float | None, sample: int) -> None:
    if as_json:
        click.echo(json.dumps({"sample": sample, "time": time.time(), "interval_s": interval, "stats": rows}))
        return
    if sample > 1:
        click.echo()
    emit(rows, False, views.STAT_COLUMNS, empty="no packets counted", wide=views.STAT_WIDE)
