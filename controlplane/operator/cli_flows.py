"""``icegate flows ls|show|flush``: the flows and pending flows of the relay's maps."""

from __future__ import annotations

import click

from controlplane.operator import views
from controlplane.operator.cli_common import Target, env_of, target_options
from icegate.cli import Group
from icegate.output import dump_json, emit, json_option


@click.group(cls=Group, short_help="list, show and flush relay flows")
def flows() -> None:
    """List, show and flush relay flows (reads the pinned maps)."""


def _client_arg(value: str | None) -> tuple[str, int | None] | None:
    if value is None:
        return None
    try:
        return views.parse_client(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@flows.command("ls")
@target_options
@json_option
@click.option("--backend", help="Only flows to this transceiver, CLUSTER:INDEX.")
@click.option("--client", help="Only this client: ip, ip:port or [ipv6]:port.")
@click.option("--pending", is_flag=True, help="Pending flows (not yet confirmed) instead of confirmed ones.")
@click.pass_context
def flows_ls(
    ctx: click.Context, target: Target, as_json: bool, backend: str | None, client: str | None, pending: bool
) -> None:
    """Flows in the map, sorted by client."""
    try:
        wanted = views.parse_backend(backend) if backend else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    env = env_of(ctx)
    maps = env.open_maps(target)
    items = maps.pending() if pending else maps.flows()
    state = "pending" if pending else "confirmed"
    rows = views.flow_rows(
        items, state, maps.vips(), env.clock_ns(), backend=wanted, client=_client_arg(client)
    )
    emit(rows, as_json, views.FLOW_COLUMNS, empty=f"no {state} flows", wide=views.FLOW_WIDE)


@flows.command("show")
@target_options
@json_option
@click.argument("client")
@click.pass_context
def flows_show(ctx: click.Context, target: Target, as_json: bool, client: str) -> None:
    """Every flow (confirmed and pending) of CLIENT[:PORT]."""
    env = env_of(ctx)
    maps = env.open_maps(target)
    wanted, now, vips = _client_arg(client), env.clock_ns(), maps.vips()
    rows = views.flow_rows(maps.flows(), "confirmed", vips, now, client=wanted)
    rows += views.flow_rows(maps.pending(), "pending", vips, now, client=wanted)
    if not rows:
        raise click.ClickException(f"no flow for {client}")
    if as_json:
        click.echo(dump_json(rows))
        return
    for i, row in enumerate(rows):
        if i:
            click.echo()
        for key, value in row.items():
            click.echo(f"{key + ':':<13} {value}")


@flows.command("flush")
@target_options
@json_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def flows_flush(ctx: click.Context, target: Target, as_json: bool, yes: bool) -> None:
    """Delete every flow (live sessions recover from Redis or their next consent check)."""
    maps = env_of(ctx).open_maps(target)
    if not yes:
        click.confirm(f"Delete every flow of relay {target.name}?", abort=True)
    flushed = maps.flush_flows()
    click.echo(
        dump_json({"relay": target.name, "flushed": flushed}) if as_json else f"flushed {flushed} flows"
    )
