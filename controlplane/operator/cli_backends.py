"""``icegate backends ls|drain``: the backends map beside the Redis registrations."""

from __future__ import annotations

import time
from collections import Counter

import click

from controlplane.operator import views
from controlplane.operator.cli_common import Target, env_of, run_redis, target_options
from icegate.cli import Group
from icegate.errors import RelayNotRunning, StoreError
from icegate.output import dump_json, emit, json_option

clock_ns = time.monotonic_ns  # CLOCK_MONOTONIC, the flows' last_seen_ns clock (bpf_ktime_get_ns)


@click.group(cls=Group, short_help="list and drain transceivers")
def backends() -> None:
    """List and drain transceivers."""


@backends.command("ls")
@target_options
@json_option
@click.pass_context
def backends_ls(ctx: click.Context, target: Target, as_json: bool) -> None:
    """The backends map beside the Redis registrations (either may be unavailable)."""
    env = env_of(ctx)
    in_map, per_backend, notes = None, Counter[tuple[int, int]](), []
    try:
        maps = env.open_maps(target)
        in_map = maps.backends()
        # Live flows only: one idle past the expiry timeout is a call that ended (the relay's
        # sweep removes it within expiry.interval_s; counted out here even if none runs).
        horizon = clock_ns() - int(target.expiry.idle_s * 1e9)
        per_backend.update((f.cluster, f.index) for _, f in maps.flows() if f.last_seen_ns >= horizon)
    except RelayNotRunning as exc:
        notes.append(f"map view unavailable: {exc}")
    registered = None
    if not target.redis_given:
        # issue 16: never query a Redis nobody named (it silently tried localhost)
        notes.append("redis view skipped: give --config or --redis-url/--region")
    else:
        try:
            registered = run_redis(target, lambda store: store.registrations())
        except StoreError as exc:
            notes.append(f"redis view unavailable: {exc}")
    if in_map is None and registered is None:
        raise StoreError("; ".join(notes))
    rows = views.backend_rows(in_map, registered, per_backend, int(time.time() * 1000))
    for note in notes:
        click.echo(f"icegate: {note}", err=True)
    emit(rows, as_json, views.BACKEND_COLUMNS, empty="no backends")


@backends.command("drain")
@target_options
@json_option
@click.argument("backend")
def backends_drain(target: Target, as_json: bool, backend: str) -> None:
    """Ask transceiver CLUSTER:INDEX to drain (via its registration in Redis).

    The transceiver sees ``state = draining`` at its next heartbeat: it stops minting
    tokens, keeps its sessions and exits when they end. Relays refuse new flows to it.
    """
    try:
        cluster, index = views.parse_backend(backend)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="BACKEND") from None
    state = "draining"
    if not run_redis(target, lambda store: store.set_transceiver_state(cluster, index, state)):
        raise click.ClickException(
            f"transceiver {cluster}:{index} is not registered in region {target.redis.region}"
        )
    if as_json:
        click.echo(dump_json({"backend": f"{cluster}:{index}", "state": state}))
        return
    click.echo(f"transceiver {cluster}:{index} {state}")
