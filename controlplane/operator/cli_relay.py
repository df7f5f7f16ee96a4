"""``icegate relay run|status|detach``; ``run`` lives in :mod:`controlplane.node.daemon`,
imported only when asked for."""

from __future__ import annotations

from typing import Any

import click

from controlplane.node.metrics import map_fill
from controlplane.operator.cli_common import Target, env_of, target_options
from icegate.cli import Group
from icegate.output import dump_json, json_option


class RelayGroup(Group):
    """``relay run`` lives in daemon.py, imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "run"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "run":
            from controlplane.node.daemon import run

            return run
        return super().get_command(ctx, cmd_name)


@click.group(cls=RelayGroup, short_help="run, inspect and detach the relay")
def relay() -> None:
    """Run, inspect and detach the relay."""


@relay.command("status")
@target_options
@json_option
@click.pass_context
def relay_status(ctx: click.Context, target: Target, as_json: bool) -> None:
    """Program, attach points, map fill levels and degraded state.

    Exits 1 when the relay is unhealthy: its program attached nowhere, or its control
    plane not ready (degraded, or unreachable from the relay's namespace)."""
    env = env_of(ctx)
    info = env.relay_info(target)
    maps = env.open_maps(target)
    fill = map_fill(maps)
    capacity = env.capacities(target)
    status = {
        "name": target.name,
        "pin_dir": str(target.pin_dir),
        **info,
        "maps": {name: {"entries": n, "capacity": capacity[name]} for name, n in fill.items()},
        "control_plane": env.control_plane(target),
    }
    status["healthy"] = status["control_plane"] == "ready" and status.get("mode") != "detached"
    if as_json:
        click.echo(dump_json(status))
        ctx.exit(0 if status["healthy"] else 1)
    for key, value in status.items():
        if key == "maps":
            click.echo("maps:")
            for name, m in value.items():
                pct = 100.0 * m["entries"] / m["capacity"] if m["capacity"] else 0.0
                click.echo(f"  {name:<11} {m['entries']:>8} / {m['capacity']:<8} ({pct:.1f}%)")
        elif isinstance(value, list):
            click.echo(f"{key}:" if value else f"{key}: -")
            for item in value:
                click.echo(f"  {_pairs(item) if isinstance(item, dict) else item}")
        elif isinstance(value, dict):
            click.echo(f"{key}: {_pairs(value)}")
        else:
            click.echo(f"{key}: {'-' if value is None else value}")
    ctx.exit(0 if status["healthy"] else 1)


def _pairs(item: dict[str, Any]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in item.items())


@relay.command("detach")
@target_options
@json_option
@click.pass_context
def relay_detach(ctx: click.Context, target: Target, as_json: bool) -> None:
    """Detach the XDP program and remove the pinned maps (flows are lost)."""
    removed = env_of(ctx).detach(target)
    if as_json:
        click.echo(dump_json({"relay": target.name, "removed": removed}))
        return
    click.echo(f"relay {target.name} detached; removed: {', '.join(removed) if removed else 'nothing'}")
