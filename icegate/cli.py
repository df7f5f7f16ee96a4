"""The ``icegate`` console script.

Each component owns its commands in its own module; this file only maps command
names to them, imported on first use so that ``icegate flows ls`` does not pay for
importing aiortc. Listings take ``--json``; errors from the :mod:`icegate.errors`
tree print as one line and exit 1.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from icegate import __version__
from icegate.errors import IcegateError

# command name -> "module:attribute" of a click command or group
COMMANDS = {
    "relay": ("controlplane.cli:relay", "run, inspect and detach the relay"),
    "flows": ("controlplane.cli:flows", "list, show and flush relay flows"),
    "backends": ("controlplane.cli:backends", "list and drain transceivers"),
    "token": ("controlplane.cli:token", "mint, decode and rotate route tokens"),
    "stats": ("controlplane.cli:stats", "live relay counters with rates"),
    "transceiver": ("transceiver.cli:transceiver", "run a WebRTC transceiver"),
    "agent": ("transceiver.cli:agent", "run a voice agent (echo, tone)"),
    "lab": ("icegate.lab:lab", "build and tear down the network-namespace lab"),
    "demo": ("icegate.demo:demo", "voice sessions through the relay in the lab"),
    "bench": ("icegate.bench_cli:bench", "run a benchmark of bench/ (source checkout)"),
}


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
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, _, attr = entry[0].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise click.ClickException(f"'{cmd_name}' is not available in this build ({exc})") from exc
            raise
        command = getattr(module, attr)
        if not isinstance(command, click.Command):  # pragma: no cover - a programming error
            raise TypeError(f"{entry[0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


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
