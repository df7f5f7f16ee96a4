"""``icegate token mint|decode|init|rotate``: route tokens and the route keys in Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from controlplane.operator.cli_common import Target, env_of, run_redis, target_options
from icegate import token as tokens
from icegate.cli import Group
from icegate.errors import RelayNotRunning, StoreError, TokenError
from icegate.output import dump_json, json_option
from icegate.schema import RouteKeySet

DEFAULT_GRACE_S = 600.0


@click.group(cls=Group, short_help="mint, decode and rotate route tokens")
def token() -> None:
    """Mint, decode and rotate route tokens."""


def _key_arg(key_hex: str | None) -> bytes | None:
    if key_hex is None:
        return None
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise click.BadParameter("expected 32 hex digits", param_hint="--key-hex")
    return key


@token.command("mint")
@target_options
@click.option("--cluster", type=click.IntRange(0, 0xFFFF), required=True, help="Cluster id to route to.")
@click.option("--index", type=click.IntRange(0, 0xFFFF), required=True, help="Transceiver index in it.")
@click.option("--key-hex", help="Route key (32 hex digits) instead of Redis's current key.")
@click.option("--key-id", type=click.IntRange(0, 15), default=0, show_default=True, help="With --key-hex.")
@json_option
def token_mint(
    target: Target, cluster: int, index: int, key_hex: str | None, key_id: int, as_json: bool
) -> None:
    """Print a fresh ufrag that routes to transceiver CLUSTER:INDEX."""
    key = _key_arg(key_hex)
    if key is None:
        keys = run_redis(target, lambda store: store.route_key_set())
        if keys is None:
            raise click.ClickException("no route keys in Redis: run `icegate token init`")
        key_id, key = keys.current, keys.keys[keys.current]
    ufrag = tokens.mint(key_id, key, cluster, index)
    if as_json:
        click.echo(dump_json({"ufrag": ufrag, "cluster": cluster, "index": index, "key_id": key_id}))
        return
    click.echo(ufrag)


@token.command("decode")
@target_options
@json_option
@click.argument("ufrag")
@click.option("--key-hex", help="Check the MAC with this key (32 hex digits) instead of Redis's keys.")
@click.pass_context
def token_decode(ctx: click.Context, target: Target, as_json: bool, ufrag: str, key_hex: str | None) -> None:
    """Cluster, transceiver, key id and MAC validity of UFRAG (a USERNAME's first part also works).

    The key comes from --key-hex, Redis, or the running relay's route_keys map, in that
    order; without any, the fields still decode and mac_valid is "-" (unchecked).
    Exits 1 when the relays would refuse it: a wrong MAC, or a key id that is expired or
    absent from Redis; 0 when it verifies or no key could be found to check it."""
    ufrag = ufrag.partition(":")[0]
    decoded = tokens.decode(ufrag)
    key = _key_arg(key_hex)
    row: dict[str, Any] = {
        "ufrag": ufrag,
        "version": decoded.version,
        "key_id": decoded.key_id,
        "cluster": decoded.cluster,
        "index": decoded.index,
        "nonce": f"{decoded.nonce:010x}",
        "mac": f"{decoded.mac:016x}",
        "tag": decoded.tag,
    }
    notes: list[str] = []
    if key is not None:
        keys, row["key_state"] = {decoded.key_id: key}, "given"
    else:
        keys, row["key_state"] = _decode_keys(ctx, target, decoded.key_id, notes)
    try:
        tokens.verify(ufrag, keys)
        row["mac_valid"] = True
    except TokenError as exc:
        # no key to check with: the structure decoded, the MAC is unchecked (None)
        row["mac_valid"] = False if exc.reason == "token_mac" else None
        row["error"] = exc.reason
    for note in notes:
        click.echo(f"icegate: {note}", err=True)
    if as_json:
        click.echo(dump_json(row))
    else:
        click.echo("\n".join(f"{k + ':':<11} {'-' if v is None else v}" for k, v in row.items()))
    if row["mac_valid"] is False or row["key_state"] in REFUSED_KEY_STATES:
        ctx.exit(1)


def _decode_keys(
    ctx: click.Context, target: Target, key_id: int, notes: list[str]
) -> tuple[dict[int, bytes], str]:
    """Redis's key set, else the running relay's ``route_keys`` map, else no key."""
    try:
        return _key_state(run_redis(target, lambda store: store.route_key_set()), key_id)
    except StoreError as exc:
        notes.append(f"redis view unavailable: {exc}")
    try:
        in_map = env_of(ctx).open_maps(target).route_keys()
    except RelayNotRunning as exc:
        notes.append(f"map view unavailable: {exc}")
        return {}, "unknown"
    if key_id in in_map:
        return {key_id: in_map[key_id]}, "relay map"
    return {}, "unknown"


# Key states with which relays refuse a token even if its MAC verifies (``token decode`` exits 1).
REFUSED_KEY_STATES = frozenset({"expired", "absent"})


def _key_state(key_set: RouteKeySet | None, key_id: int) -> tuple[dict[int, bytes], str]:
    """The key to check the MAC with, and whether the relays accept that key id now
    (``absent``: Redis answered and has no such key id; ``unknown``: no key set at all)."""
    if key_set is None:
        return {}, "unknown"
    if key_id not in key_set.keys:
        return {}, "absent"
    accepted = key_set.accepted()
    if key_id == key_set.current:
        return {key_id: key_set.keys[key_id]}, "current"
    return {key_id: key_set.keys[key_id]}, "previous" if key_id in accepted else "expired"


def _rotate(grace_s: float) -> Callable[[RouteKeySet | None], RouteKeySet]:
    def change(current: RouteKeySet | None) -> RouteKeySet:
        if current is None:
            return RouteKeySet({0: tokens.new_key()}, 0)
        return current.rotated(tokens.new_key(), grace_s)

    return change


def _key_set_view(keys: RouteKeySet) -> dict[str, Any]:
    """A route key set without its key material."""
    until = keys.previous_until if keys.previous is not None else None
    return {"current": keys.current, "previous": keys.previous, "previous_until": until}


@token.command("init")
@target_options
@json_option
def token_init(target: Target, as_json: bool) -> None:
    """Create the first route key (nothing changes if one exists)."""

    def change(current: RouteKeySet | None) -> RouteKeySet:
        return current if current is not None else RouteKeySet({0: tokens.new_key()}, 0)

    keys = run_redis(target, lambda store: store.update_route_keys(change))
    click.echo(dump_json(_key_set_view(keys)) if as_json else f"route keys: current id {keys.current}")


@token.command("rotate")
@target_options
@click.option("--grace", type=click.FloatRange(min=0), default=DEFAULT_GRACE_S, show_default=True,
              help="Seconds the previous key stays accepted.")  # fmt: skip
@json_option
def token_rotate(target: Target, grace: float, as_json: bool) -> None:
    """Make a new current route key; the old one is accepted for --grace seconds."""
    keys = run_redis(target, lambda store: store.update_route_keys(_rotate(grace)))
    if as_json:
        click.echo(dump_json(_key_set_view(keys)))
    elif keys.previous is None:
        click.echo(f"route keys: created current id {keys.current}")
    else:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(keys.previous_until))
        click.echo(
            f"route keys: current id {keys.current}, previous id {keys.previous} accepted until {until}"
        )
