"""The relay's operator commands: ``relay``, ``flows``, ``backends``, ``token``, ``stats``.

They read the pinned maps directly (``KernelStore``), so they work while the daemon is
down, and Redis where the cluster's view is needed (registrations, route keys). Every
listing prints a table, or the same rows as JSON with ``--json`` (``views.py``).

Which relay: ``--name`` (or the only relay pinned under ``<bpffs>/icegate/``), or the
``relay`` section of ``--config``; Redis from ``--redis-url``/``--region`` or the same
config. The side effects sit behind :class:`CliEnv`, which tests replace with a
``MemoryStore``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from controlplane import snapshot, views
from controlplane.config import HttpConfig, RedisConfig, RelayConfig, RelayLimits
from controlplane.metrics import CounterSource, map_capacity, map_fill
from controlplane.modes import xdp_mode
from controlplane.redisio import RedisStore
from controlplane.snapshot import ReadOnlyState, SnapshotStore
from controlplane.store import MapStore
from icegate import token as tokens
from icegate.cli import Group
from icegate.config import load
from icegate.errors import DependencyError, RelayNotRunning, StoreError, TokenError, import_optional
from icegate.schema import RouteKeySet

T = TypeVar("T")
DEFAULT_GRACE_S = 600.0


@dataclass(frozen=True)
class Target:
    """The relay a command is about."""

    name: str
    bpffs: Path = Path("/sys/fs/bpf")
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: RelayLimits = field(default_factory=RelayLimits)
    http: HttpConfig = field(default_factory=HttpConfig)

    @property
    def pin_dir(self) -> Path:
        return self.bpffs / "icegate" / self.name


def _twin(target: Target) -> SnapshotStore | None:
    """The relay's maps from its control plane when it runs the userspace twin (no pins,
    perhaps no bpffs: the host it fell back on); None when its maps are pinned. Raises
    why nothing is pinned when no twin answers either."""
    try:
        check_pinned(target)
        return None
    except (RelayNotRunning, DependencyError):
        data = snapshot.fetch(target.http)
        if data is None or (target.name and data.get("name") != target.name):
            raise
        return SnapshotStore(data, lambda: snapshot.fetch(target.http))


def _kernel_maps(target: Target) -> MapStore:
    twin = _twin(target)
    if twin is not None:
        return twin
    store: MapStore = import_optional("controlplane.kernelstore").KernelStore(target.pin_dir)
    return store


def _kernel_counters(target: Target) -> CounterSource:
    source: CounterSource = _kernel_maps(target)  # type: ignore[assignment]
    return source


def _kernel_info(target: Target) -> dict[str, Any]:
    twin = _twin(target)
    if twin is not None:
        data = twin.data
        why = {"reason": data.get("reason"), "detail": data.get("detail")}
        return {"mode": "userspace", **why, "program": None, "netns": None, "attached": []}
    loader = import_optional("controlplane.loader")
    info: dict[str, Any] = loader.status(target.pin_dir)
    return {"mode": xdp_mode(a["mode"] for a in info["attached"]), **info}


def _kernel_capacities(target: Target) -> dict[str, int]:
    twin = _twin(target)
    if twin is not None:
        return dict(twin.data["capacity"])
    infos = import_optional("controlplane.kernel").pinned_map_infos(target.pin_dir)
    sizes = map_capacity(target.limits)
    return {name: infos[name].max_entries if name in infos else size for name, size in sizes.items()}


def _limit_capacities(target: Target) -> dict[str, int]:
    return map_capacity(target.limits)


def _kernel_detach(target: Target) -> list[str]:
    if _twin(target) is not None:
        raise ReadOnlyState(
            f"relay {target.name!r} runs the userspace twin: nothing is attached or pinned; "
            "stop its process to stop it"
        )
    loader = import_optional("controlplane.loader")
    removed: list[str] = loader.detach(target.pin_dir)
    return removed


def check_pinned(target: Target) -> None:
    """Clear errors for the ways the maps can be missing: no bpffs, no name, nothing pinned."""
    import_optional("controlplane.loader").check_bpffs(target.bpffs)
    if not target.name:
        found = pinned_relays(target.bpffs)
        which = f"relays pinned here: {', '.join(found)}" if found else "no relay is pinned on this host"
        raise RelayNotRunning(f"--name is required ({which})")
    if not target.pin_dir.is_dir():
        raise RelayNotRunning(f"relay {target.name!r} is not running: nothing pinned at {target.pin_dir}")


@dataclass
class CliEnv:
    """The CLI's side effects. Tests pass their own through ``CliRunner.invoke(obj=...)``."""

    open_maps: Callable[[Target], MapStore] = _kernel_maps
    open_counters: Callable[[Target], CounterSource] = _kernel_counters
    relay_info: Callable[[Target], dict[str, Any]] = _kernel_info
    capacities: Callable[[Target], dict[str, int]] = _kernel_capacities
    detach: Callable[[Target], list[str]] = _kernel_detach
    control_plane: Callable[[Target], str] = lambda target: readiness(target.http)
    clock_ns: Callable[[], int] = time.monotonic_ns
    sleep: Callable[[float], None] = time.sleep


def _env(ctx: click.Context) -> CliEnv:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliEnv) else CliEnv()


def pinned_relays(bpffs: Path) -> list[str]:
    root = bpffs / "icegate"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--config/--name/--bpffs/--redis-url/--region -> ``target`` keyword argument.

    The name may stay empty (commands that only use Redis do not need one); opening the
    maps then fails naming the relays that are pinned.
    """

    @click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML file."
    )
    @click.option("--name", help="Relay name (default: the only relay pinned on this host).")
    @click.option("--bpffs", type=click.Path(path_type=Path), help="bpffs mount point [/sys/fs/bpf].")
    @click.option("--redis-url", help="Redis URL [redis://127.0.0.1:6379/0].")
    @click.option("--region", help="Redis region (key prefix) [default].")
    @functools.wraps(func)
    def wrapper(
        config_path: Path | None,
        name: str | None,
        bpffs: Path | None,
        redis_url: str | None,
        region: str | None,
        **kwargs: Any,
    ) -> Any:
        target = Target(name or "")
        if config_path is not None:
            cfg = load(RelayConfig, config_path, "relay")
            target = Target(cfg.name, cfg.bpffs, cfg.redis, cfg.limits, cfg.http)
        redis = target.redis
        if redis_url or region:
            redis = replace(redis, url=redis_url or redis.url, region=region or redis.region)
            redis.validate("--redis-url")
        target = replace(target, bpffs=bpffs or target.bpffs, redis=redis)
        if name:
            target = replace(target, name=name)
        if not target.name:
            found = pinned_relays(target.bpffs)
            target = replace(target, name=found[0] if len(found) == 1 else "")
        return func(target=target, **kwargs)

    return wrapper


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def run_redis(target: Target, work: Callable[[RedisStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisStore(target.redis)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def emit(rows: Any, as_json: bool, columns: dict[str, Any] | None = None, empty: str = "") -> None:
    if as_json:
        click.echo(views.dump_json(rows))
    elif columns is not None:
        click.echo(views.table(rows, columns) if rows else empty)
    else:
        click.echo(rows)


# ---------------------------------------------------------------- relay
class RelayGroup(Group):
    """``relay run`` lives in daemon.py, imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "run"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "run":
            from controlplane.daemon import run

            return run
        return super().get_command(ctx, cmd_name)


@click.group(cls=RelayGroup)
def relay() -> None:
    """Run, inspect and detach the relay."""


def readiness(http: HttpConfig, timeout_s: float = 0.5) -> str:
    """The daemon's /readyz, as one line: ``ready``, the problems, or ``not running``."""
    host = f"[{http.address}]" if ":" in http.address else http.address
    try:
        with urllib.request.urlopen(f"http://{host}:{http.port}/readyz", timeout=timeout_s) as reply:
            return str(reply.read().decode().strip())
    except urllib.error.HTTPError as exc:
        return "; ".join(exc.read().decode().split("\n")).strip("; ")
    except (urllib.error.URLError, OSError):
        return "not running"


@relay.command("status")
@target_options
@json_option
@click.pass_context
def relay_status(ctx: click.Context, target: Target, as_json: bool) -> None:
    """Program, attach points, map fill levels and degraded state."""
    env = _env(ctx)
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
    if as_json:
        click.echo(views.dump_json(status))
        return
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


def _pairs(item: dict[str, Any]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in item.items())


@relay.command("detach")
@target_options
@json_option
@click.pass_context
def relay_detach(ctx: click.Context, target: Target, as_json: bool) -> None:
    """Detach the XDP program and remove the pinned maps (flows are lost)."""
    removed = _env(ctx).detach(target)
    if as_json:
        click.echo(views.dump_json({"relay": target.name, "removed": removed}))
        return
    click.echo(f"relay {target.name} detached; removed: {', '.join(removed) if removed else 'nothing'}")


# ---------------------------------------------------------------- flows
@click.group(cls=Group)
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
    env = _env(ctx)
    maps = env.open_maps(target)
    items = maps.pending() if pending else maps.flows()
    state = "pending" if pending else "confirmed"
    rows = views.flow_rows(
        items, state, maps.vips(), env.clock_ns(), backend=wanted, client=_client_arg(client)
    )
    emit(rows, as_json, views.FLOW_COLUMNS, empty=f"no {state} flows")


@flows.command("show")
@target_options
@json_option
@click.argument("client")
@click.pass_context
def flows_show(ctx: click.Context, target: Target, as_json: bool, client: str) -> None:
    """Every flow (confirmed and pending) of CLIENT[:PORT]."""
    env = _env(ctx)
    maps = env.open_maps(target)
    wanted, now, vips = _client_arg(client), env.clock_ns(), maps.vips()
    rows = views.flow_rows(maps.flows(), "confirmed", vips, now, client=wanted)
    rows += views.flow_rows(maps.pending(), "pending", vips, now, client=wanted)
    if not rows:
        raise click.ClickException(f"no flow for {client}")
    if as_json:
        click.echo(views.dump_json(rows))
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
    maps = _env(ctx).open_maps(target)
    if not yes:
        click.confirm(f"Delete every flow of relay {target.name}?", abort=True)
    flushed = maps.flush_flows()
    click.echo(
        views.dump_json({"relay": target.name, "flushed": flushed}) if as_json else f"flushed {flushed} flows"
    )


# ---------------------------------------------------------------- backends
@click.group(cls=Group)
def backends() -> None:
    """List and drain transceivers."""


@backends.command("ls")
@target_options
@json_option
@click.pass_context
def backends_ls(ctx: click.Context, target: Target, as_json: bool) -> None:
    """The backends map beside the Redis registrations (either may be unavailable)."""
    env = _env(ctx)
    in_map, per_backend, notes = None, Counter[tuple[int, int]](), []
    try:
        maps = env.open_maps(target)
        in_map = maps.backends()
        per_backend.update((f.cluster, f.index) for _, f in maps.flows())
    except RelayNotRunning as exc:
        notes.append(f"map view unavailable: {exc}")
    try:
        registered = run_redis(target, lambda store: store.registrations())
    except StoreError as exc:
        registered = None
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
        click.echo(views.dump_json({"backend": f"{cluster}:{index}", "state": state}))
        return
    click.echo(f"transceiver {cluster}:{index} {state}")


# ---------------------------------------------------------------- token
@click.group(cls=Group)
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
@click.option("--cluster", type=click.IntRange(0, 0xFFFF), required=True)
@click.option("--index", type=click.IntRange(0, 0xFFFF), required=True)
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
        click.echo(views.dump_json({"ufrag": ufrag, "cluster": cluster, "index": index, "key_id": key_id}))
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
    order; without any, the fields still decode and mac_valid is "-" (unchecked)."""
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
        click.echo(views.dump_json(row))
    else:
        click.echo("\n".join(f"{k + ':':<11} {'-' if v is None else v}" for k, v in row.items()))


def _decode_keys(
    ctx: click.Context, target: Target, key_id: int, notes: list[str]
) -> tuple[dict[int, bytes], str]:
    """Redis's key set, else the running relay's ``route_keys`` map, else no key."""
    try:
        return _key_state(run_redis(target, lambda store: store.route_key_set()), key_id)
    except StoreError as exc:
        notes.append(f"redis view unavailable: {exc}")
    try:
        in_map = _env(ctx).open_maps(target).route_keys()
    except RelayNotRunning as exc:
        notes.append(f"map view unavailable: {exc}")
        return {}, "unknown"
    if key_id in in_map:
        return {key_id: in_map[key_id]}, "relay map"
    return {}, "unknown"


def _key_state(key_set: RouteKeySet | None, key_id: int) -> tuple[dict[int, bytes], str]:
    """The key to check the MAC with, and whether the relays accept that key id now."""
    if key_set is None or key_id not in key_set.keys:
        return {}, "unknown"
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
    click.echo(views.dump_json(_key_set_view(keys)) if as_json else f"route keys: current id {keys.current}")


@token.command("rotate")
@target_options
@click.option("--grace", type=click.FloatRange(min=0), default=DEFAULT_GRACE_S, show_default=True,
              help="Seconds the previous key stays accepted.")  # fmt: skip
@json_option
def token_rotate(target: Target, grace: float, as_json: bool) -> None:
    """Make a new current route key; the old one is accepted for --grace seconds."""
    keys = run_redis(target, lambda store: store.update_route_keys(_rotate(grace)))
    if as_json:
        click.echo(views.dump_json(_key_set_view(keys)))
    elif keys.previous is None:
        click.echo(f"route keys: created current id {keys.current}")
    else:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(keys.previous_until))
        click.echo(
            f"route keys: current id {keys.current}, previous id {keys.previous} accepted until {until}"
        )


# ---------------------------------------------------------------- stats
@click.command(cls=click.Command)
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
    env = _env(ctx)
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
    click.echo(views.table(rows, views.STAT_COLUMNS) if rows else "no packets counted")
