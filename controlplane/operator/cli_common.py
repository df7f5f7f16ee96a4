"""What the operator commands share: which relay (:class:`Target`, ``target_options``),
how to reach it (:class:`RelayAccess`: pinned maps, or the twin's state over HTTP, found
by one probe), their side effects (:class:`CliEnv`, which tests replace with a
``MemoryStore``), Redis, and printing (``--json`` or a table, ``views.py``).

Which relay: ``--name`` (or the only relay pinned under ``<bpffs>/icegate/``), or the
``relay`` section of ``--config``; Redis from ``--redis-url``/``--region`` or the same
config.
"""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from controlplane.cluster.redisio import RedisStore
from controlplane.config import ExpiryConfig, HttpConfig, RedisConfig, RelayConfig, RelayLimits
from controlplane.datapath.store import MapStore
from controlplane.kernel import libbpf, loader
from controlplane.kernel.maps import KernelStore
from controlplane.node import snapshot
from controlplane.node.metrics import CounterSource, map_capacity
from controlplane.node.runners import xdp_mode
from controlplane.node.snapshot import SnapshotStore
from icegate.config import load
from icegate.errors import DependencyError, LinkError, ReadOnlyState, RelayNotRunning

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """The relay a command is about."""

    name: str
    bpffs: Path = Path("/sys/fs/bpf")
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: RelayLimits = field(default_factory=RelayLimits)
    http: HttpConfig = field(default_factory=HttpConfig)
    expiry: ExpiryConfig = field(default_factory=ExpiryConfig)  # what counts as a live flow
    # Redis came from --config, --redis-url or --region (not the built-in localhost default)
    redis_given: bool = False

    @property
    def pin_dir(self) -> Path:
        return self.bpffs / "icegate" / self.name


class RelayAccess:
    """How a command reaches the relay ``target`` names, found by one probe: its pinned
    maps (XDP), or, when nothing is pinned, its control plane's ``/v1/state`` (a relay
    running the userspace twin: no pins, perhaps no bpffs). Raises why nothing is pinned
    when no twin answers either."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.twin: SnapshotStore | None = None
        try:
            check_pinned(target)
        except (RelayNotRunning, DependencyError):
            data = snapshot.fetch(target.http)
            if data is None or (target.name and data.get("name") != target.name):
                raise
            self.twin = SnapshotStore(data, lambda: snapshot.fetch(target.http))

    def maps(self) -> MapStore:
        return self.twin if self.twin is not None else KernelStore(self.target.pin_dir)

    def counters(self) -> CounterSource:
        return self.twin if self.twin is not None else KernelStore(self.target.pin_dir)

    def info(self) -> dict[str, Any]:
        if self.twin is not None:
            data = self.twin.data
            why = {"reason": data.get("reason"), "detail": data.get("detail")}
            return {"mode": "userspace", **why, "program": None, "netns": None, "attached": []}
        info = loader.status(self.target.pin_dir)
        return {"mode": xdp_mode(a["mode"] for a in info["attached"]), **info}

    def capacities(self) -> dict[str, int]:
        if self.twin is not None:
            return dict(self.twin.data["capacity"])
        infos = libbpf.pinned_map_infos(self.target.pin_dir)
        sizes = map_capacity(self.target.limits)
        return {name: infos[name].max_entries if name in infos else size for name, size in sizes.items()}

    def detach(self) -> list[str]:
        if self.twin is not None:
            raise ReadOnlyState(
                f"relay {self.target.name!r} runs the userspace twin: nothing is attached or pinned; "
                "stop its process to stop it"
            )
        return loader.detach(self.target.pin_dir)


def relay_access(target: Target) -> RelayAccess:
    """The :class:`RelayAccess` of ``target``, probed once per command (kept in the root
    click context, so a command that reads maps, info and capacities probes once)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return RelayAccess(target)
    found: dict[Target, RelayAccess] = ctx.find_root().meta.setdefault("icegate.relay_access", {})
    if target not in found:
        found[target] = RelayAccess(target)
    return found[target]


def limit_capacities(target: Target) -> dict[str, int]:
    """Map capacities from the configured limits (tests, and relays not running)."""
    return map_capacity(target.limits)


def check_pinned(target: Target) -> None:
    """Clear errors for the ways the maps can be missing: no bpffs, no name, nothing pinned."""
    loader.check_bpffs(target.bpffs)
    if not target.name:
        found = pinned_relays(target.bpffs)
        which = f"relays pinned here: {', '.join(found)}" if found else "no relay is pinned on this host"
        raise RelayNotRunning(f"--name is required ({which})")
    if not target.pin_dir.is_dir():
        raise RelayNotRunning(f"relay {target.name!r} is not running: nothing pinned at {target.pin_dir}")


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


def relay_readiness(target: Target) -> str:
    """:func:`readiness` from the namespace the relay's program was attached in, where its
    ``http`` address is (issue 16: from the host, ``relay status`` said "not running"
    while the relay served in its own namespace)."""
    if target.name and target.pin_dir.is_dir():
        try:
            with loader.attach_namespace(target.pin_dir):
                return readiness(target.http)
        except (OSError, LinkError):
            pass
    return readiness(target.http)


@dataclass
class CliEnv:
    """The CLI's side effects. Tests pass their own through ``CliRunner.invoke(obj=...)``."""

    open_maps: Callable[[Target], MapStore] = lambda t: relay_access(t).maps()
    open_counters: Callable[[Target], CounterSource] = lambda t: relay_access(t).counters()
    relay_info: Callable[[Target], dict[str, Any]] = lambda t: relay_access(t).info()
    capacities: Callable[[Target], dict[str, int]] = lambda t: relay_access(t).capacities()
    detach: Callable[[Target], list[str]] = lambda t: relay_access(t).detach()
    control_plane: Callable[[Target], str] = relay_readiness
    clock_ns: Callable[[], int] = time.monotonic_ns
    sleep: Callable[[float], None] = time.sleep


def env_of(ctx: click.Context) -> CliEnv:
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
            target = Target(cfg.name, cfg.bpffs, cfg.redis, cfg.limits, cfg.http, cfg.expiry)
        redis = target.redis
        if redis_url or region:
            redis = replace(redis, url=redis_url or redis.url, region=region or redis.region)
            redis.validate("--redis-url")
        given = config_path is not None or bool(redis_url or region)
        target = replace(target, bpffs=bpffs or target.bpffs, redis=redis, redis_given=given)
        if name:
            target = replace(target, name=name)
        if not target.name:
            found = pinned_relays(target.bpffs)
            target = replace(target, name=found[0] if len(found) == 1 else "")
        return func(target=target, **kwargs)

    return wrapper


def run_redis(target: Target, work: Callable[[RedisStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisStore(target.redis)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())
