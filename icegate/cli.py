"""The ``icegate`` console script.

The root knows no command: every component registers its own in the
``icegate.commands`` entry-point group of its distribution (``pyproject.toml``), name ->
``module:attribute`` of a click command or group. Commands are imported on first use,
so that ``icegate flows ls`` does not pay for importing aiortc, and the root imports
nothing above :mod:`icegate` (the product's components and the ``labkit`` tooling plug
in from above). Listings take ``-o table|wide|json``; errors from the :mod:`icegate.errors`
tree and click's own print as one line on stderr, ``icegate: <what>``, and exit 1 (usage
errors 2). Options also come from ``ICEGATE_*`` variables (:data:`ENV_PREFIX`). Shell
completion: ``eval "$(_ICEGATE_COMPLETE=bash_source icegate)"`` (``zsh_source``,
``fish_source``; docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
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


class Renamed(click.Option):
    """An option whose first name is the current one; the other names are old ones that
    keep working but are not shown in ``--help`` (one flag name per concept, issue 16)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        names = self.opts
        self.opts = names[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names


def output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-o text|json`` (``--json`` is ``-o json``) -> the ``as_json`` keyword argument."""

    @click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
    @functools.wraps(func)
    def wrapper(output: str, as_json: bool, **kwargs: Any) -> Any:
        return func(as_json=as_json or output == "json", **kwargs)

    return wrapper


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


ENV_PREFIX = "ICEGATE"
"""Every option can come from the environment: ``ICEGATE_<COMMAND>_<SUBCOMMAND>_<OPTION>``,
e.g. ``ICEGATE_RELAY_RUN_CONFIG`` or ``ICEGATE_TRANSCEIVER_RUN_AUTH_TOKEN`` (secrets need
not be in argv, where ``ps`` shows them); an option given on the command line wins."""


def main(argv: list[str] | None = None) -> None:
    """The console script. One error style for every failure, on stderr: ``icegate:
    <what>``, exit 1 (2 for a usage error, with the command to ask for help)."""
    try:
        code = cli.main(argv, prog_name="icegate", auto_envvar_prefix=ENV_PREFIX, standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"icegate: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"icegate: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("icegate: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
