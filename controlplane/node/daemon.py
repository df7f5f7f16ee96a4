"""``icegate relay run``: configuration, datapath choice, the service loop, clean shutdown.

Configuration flows one way: the ``relay`` section of ``--config`` plus flags ->
:class:`RelayConfig` (a bad value fails here, naming the field) -> constructors.

Start-up order matters for lossless restarts and cold starts:

1. the datapath is prepared (XDP: program loaded, pinned maps reused or created, not
   yet attached; userspace: maps in memory);
2. VIPs, tunnel and rate limits are written (only what differs);
3. Redis: first full sync of backends and route keys (bounded wait; without Redis the
   relay starts degraded and reconciles when Redis appears);
4. ``--preload``: cached flows of this relay's VIPs go into the maps;
5. the datapath starts (XDP: attach, replacing a running program atomically; twin:
   sockets); then flow-cache, sync loops and HTTP.

SIGTERM/SIGINT stop the control plane only: the XDP program stays attached and the
maps stay pinned, so traffic flows on and the next start resumes from the same state.
``icegate relay detach`` removes both.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from controlplane.config import RelayConfig
from controlplane.node import snapshot
from controlplane.node.runners import DatapathHooks, Runner, select_runner
from controlplane.node.service import RelayService, configure_maps
from icegate.config import load
from icegate.logs import setup_logging
from icegate.secrets import pick_secret

log = logging.getLogger("controlplane.node.daemon")

CONNECT_WAIT_S = 2.0  # how long start-up waits for Redis before running degraded


def build_config(config_path: Path | None, flags: dict[str, Any]) -> RelayConfig:
    """YAML section ``relay`` + flags (dotted keys) -> validated config."""
    return load(
        RelayConfig, config_path, "relay", {k: v for k, v in flags.items() if v is not None and v != []}
    )


def _vip_flag(text: str) -> dict[str, Any]:
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    out: dict[str, Any] = {"address": host}
    if port is not None:
        out["port"] = int(port) if port.isdigit() else port
    return out


async def serve(cfg: RelayConfig, runner: Runner, *, preload: bool, stop: asyncio.Event) -> int:
    """Run until ``stop`` is set; returns the exit status."""
    configure_maps(cfg, runner.maps, runner.cpus)

    def twin_state() -> dict[str, Any]:
        return snapshot.state(
            cfg.name, (runner.mode, runner.reason, runner.detail), runner.maps, runner.counters(), cfg.limits
        )

    # The twin has no pinned maps: the operator CLI reads its maps over HTTP.
    state = twin_state if runner.mode == "userspace" else None
    service = RelayService(
        cfg,
        runner.maps,
        runner,
        runner.problem,
        state=state,
        datapath_info=lambda: (runner.mode, runner.reason),
    )
    if await service.connect(CONNECT_WAIT_S) and preload:
        await service.recovery.preload(runner.maps.vips())
    elif preload:
        log.warning("preload skipped reason=redis_unreachable")
    await runner.start(
        DatapathHooks(
            service.recovery.recover_key, service.flow_cache.record, service.flow_cache.record_threadsafe
        )
    )
    await service.start()
    log.info(
        "relay running name=%s mode=%s vips=%s http=%s:%d",
        cfg.name, runner.mode, ",".join(f"{v.address}:{v.port}" for v in cfg.vips), cfg.http.address,
        service.http.port,
    )  # fmt: skip
    status = 0
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        done, _ = await asyncio.wait(
            [stopped, *service.tasks, *runner.tasks()], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done - {stopped}:
            # Background tasks run forever: one that ended is a bug or a lost datapath.
            error = None if task.cancelled() else task.exception()
            log.error("background task ended task=%s error=%r", task.get_name(), error)
            status = 1
    finally:
        stopped.cancel()
        log.info("relay stopping mode=%s detach=no", runner.mode)
        await service.stop()
        await runner.stop()
    return status


async def _main(cfg: RelayConfig, preload: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = select_runner(cfg)
    return await serve(cfg, runner, preload=preload, stop=stop)


@click.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML file.")
@click.option("--name", help="Relay name (pins at <bpffs>/icegate/<name>).")
@click.option("--mode", type=click.Choice(["auto", "xdp", "userspace"]), help="Datapath [auto].")
@click.option("--xdp-mode", type=click.Choice(["auto", "native", "generic"]), help="XDP attach mode [auto].")
@click.option("--interface", "interfaces", multiple=True, help="Device to attach XDP to (repeat).")
@click.option("--vip", "vips", multiple=True, help="VIP as ADDR[:PORT] (repeat; replaces the config's).")
@click.option("--tunnel-address4", help="This relay's Geneve source address (IPv4).")
@click.option("--tunnel-address6", help="This relay's Geneve source address (IPv6).")
@click.option("--cluster", "clusters", multiple=True, type=int, help="Serve only these clusters (repeat).")
@click.option("--redis-url", help="Redis URL (better: ICEGATE_RELAY_RUN_REDIS_URL or --redis-url-file).")
@click.option(
    "--redis-url-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the Redis URL."
)
@click.option("--region", help="Redis region (key prefix).")
@click.option(
    "--listen", metavar="HOST:PORT", help="Address of /metrics, /livez, /readyz (the http section)."
)
@click.option("--http-address", hidden=True, help="Old name: the host of --listen.")
@click.option("--http-port", type=int, hidden=True, help="Old name: the port of --listen.")
@click.option("--bpffs", help="bpffs mount point.")
@click.option("--preload", is_flag=True, help="Load this relay's cached flows from Redis before attaching.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value.")
@click.option("--debug", is_flag=True, help="Debug logging.")
def run(
    config_path: Path | None,
    name: str | None,
    mode: str | None,
    xdp_mode: str | None,
    interfaces: tuple[str, ...],
    vips: tuple[str, ...],
    tunnel_address4: str | None,
    tunnel_address6: str | None,
    clusters: tuple[int, ...],
    redis_url: str | None,
    redis_url_file: Path | None,
    region: str | None,
    listen: str | None,
    http_address: str | None,
    http_port: int | None,
    bpffs: str | None,
    preload: bool,
    log_json: bool,
    debug: bool,
) -> None:
    """Run the relay: datapath, Redis sync, flow cache, slow path, /metrics."""
    setup_logging(log_json, logging.DEBUG if debug else logging.INFO)
    on_command_line = (
        click.get_current_context().get_parameter_source("redis_url") is ParameterSource.COMMANDLINE
    )
    redis_url = pick_secret(
        "relay.redis.url",
        redis_url,
        redis_url_file,
        on_command_line=on_command_line,
        env="ICEGATE_RELAY_RUN_REDIS_URL",
    )
    if listen is not None:  # the same HOST:PORT form as transceiver and agent --listen
        where = _vip_flag(listen)
        http_address, http_port = where["address"], where.get("port", http_port)
    cfg = build_config(
        config_path,
        {
            "name": name,
            "mode": mode,
            "xdp_mode": xdp_mode,
            "interfaces": list(interfaces),
            "vips": [_vip_flag(v) for v in vips],
            "tunnel.address4": tunnel_address4,
            "tunnel.address6": tunnel_address6,
            "clusters": list(clusters),
            "redis.url": redis_url,
            "redis.region": region,
            "http.address": http_address,
            "http.port": http_port,
            "bpffs": bpffs,
        },
    )
    sys.exit(run_loop(_main(cfg, preload)))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop when installed (the twin's hot path is the event loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
