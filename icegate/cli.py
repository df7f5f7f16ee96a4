"""The ``icegate`` console script.

The root knows no command: every component registers its own in the
``icegate.commands`` entry-point group of its distribution (``pyproject.toml``), name ->
``module:attribute`` of a click command or group. Commands are imported on first use,
so that ``icegate flows ls`` does not pay for importing aiortc, and the root imports
nothing above :mod:`icegate` (the product's components and the ``labkit`` tooling plug
in from above). Listings take ``--json``; errors from the :mod:`icegate.errors` tree
print as one line and exit 1.
"""

from __future__ import annotations

import importlib
import logging
import sys
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from icegate import __version__
from icegate.errors import IcegateError

ENTRY_POINT_GROUP = "icegate.commands"


@cache
def commands() -> dict[str, EntryPoint]:
    """command name -> its entry point, for every installed distribution that offers one."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class Group(click.Group):
    """Errors of the icegate tree print as one line and exit 1, also when a component's
    group is invoked directly (tests, ``python -m``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IcegateError as exc:
            click.echo(f"icegate: {exc}", err=True)
            ctx.exit(1)


class LazyGroup(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(commands())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = commands().get(cmd_name)
        if entry is None:
            return None
        module_name, attr = entry.module, entry.attr
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise click.ClickException(f"'{cmd_name}' is not available in this build ({exc})") from exc
            raise
        command = getattr(module, attr)
        if not isinstance(command, click.Command):  # pragma: no cover - a programming error
            raise TypeError(f"{entry.value} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except click.ClickException as exc:  # a component this build lacks
                rows.append((name, f"(unavailable: {exc.message})"))
                continue
            if command is not None:
                rows.append((name, command.get_short_help_str(formatter.width)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="icegate")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """icegate: an edge relay for WebRTC voice AI."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    cli()
