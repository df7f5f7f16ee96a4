"""``icegate transceiver run`` and ``icegate agent run`` (mapped in :mod:`icegate.cli`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from icegate.cli import Renamed
from icegate.config import load
from icegate.logs import setup_logging
from transceiver.config import VIP_PORT, TransceiverConfig

logger = logging.getLogger("transceiver.cli")


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a default port) a bare host."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise click.BadParameter(f"{text!r}: expected host:port")
        return host, default_port
    if not port_text.isdigit():
        raise click.BadParameter(f"{text!r}: the port must be a number")
    return host, int(port_text)


def _loop_policy(use_uvloop: bool | None) -> None:
    if use_uvloop is False:
        return
    try:
        import uvloop
    except ImportError:
        if use_uvloop:
            raise click.ClickException(
                "--uvloop: uvloop is not installed (pip install icegate[fast])"
            ) from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def log_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--debug", is_flag=True, help="Debug logging (aiortc and aioice included).")(func)
    return click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value.")(func)


def _logging(as_json: bool, debug: bool) -> None:
    """``event key=value`` lines at INFO; aiortc and aioice (a line per ICE check) only with --debug."""
    setup_logging(as_json, logging.DEBUG if debug else logging.INFO)
    if not debug:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(short_help="run a WebRTC transceiver")
def transceiver() -> None:
    """A WebRTC transceiver: aiortc sessions behind one Geneve UDP socket."""


@transceiver.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file, section `transceiver` (docs/CONFIG.md).",
)
@click.option("--cluster", type=int, help="The cluster id minted into every ufrag.")
@click.option("--index", type=int, help="This transceiver's index in its cluster (the Geneve VNI).")
@click.option(
    "--vip",
    "--relay",
    "relays",
    cls=Renamed,
    multiple=True,
    metavar="VIP[:PORT]",
    help="A relay VIP; repeat for a backup (first = primary). Replaces the file's relays.",
)
@click.option("--relay-tunnel-port", type=int, default=None, help="The relays' Geneve port (default 6081).")
@click.option("--tunnel", "tunnel", metavar="ADDR[:PORT]", help="Bind the Geneve socket here.")
@click.option("--tunnel-advertise", metavar="ADDR", help="The tunnel address relays send to.")
@click.option("--listen", metavar="HOST:PORT", help="Signaling HTTP listen address.")
@click.option("--agent-url", metavar="ws://HOST:PORT/", help="The voice agent (icegate agent run).")
@click.option("--redis-url", help="Redis URL (registration, heartbeat, route keys).")
@click.option("--region", help="Redis region (key prefix), as the relays'.")
@click.option("--route-key", metavar="HEX", help="A fixed route key (32 hex digits) when there is no Redis.")
@click.option("--auth-token", help="Require 'Authorization: Bearer TOKEN' on /v1.")
@click.option("--connect-timeout", type=float, help="Reap sessions not connected after this many seconds.")
@click.option("--drain-deadline", type=float, help="Seconds a drain waits for live sessions.")
@click.option("--uvloop/--no-uvloop", "use_uvloop", default=None, help="Default: use uvloop when installed.")
@log_options
def run(
    config_file: Path | None,
    cluster: int | None,
    index: int | None,
    relays: tuple[str, ...],
    relay_tunnel_port: int | None,
    tunnel: str | None,
    tunnel_advertise: str | None,
    listen: str | None,
    agent_url: str | None,
    redis_url: str | None,
    region: str | None,
    route_key: str | None,
    auth_token: str | None,
    connect_timeout: float | None,
    drain_deadline: float | None,
    use_uvloop: bool | None,
    log_json: bool,
    debug: bool,
) -> None:
    """Serve sessions until SIGTERM/SIGINT (or a drain set in Redis) has drained them."""
    from transceiver import service

    overrides: dict[str, Any] = {
        "cluster": cluster,
        "index": index,
        "tunnel_advertise": tunnel_advertise,
        "agent_url": agent_url,
        "redis_url": redis_url,
        "region": region,
        "route_key": route_key,
        "auth_token": auth_token,
        "connect_timeout_s": connect_timeout,
        "drain_deadline_s": drain_deadline,
    }
    if relays:
        entries = []
        for rank, spec in enumerate(relays):
            host, port = split_hostport(spec, VIP_PORT)
            entry: dict[str, Any] = {"address": host, "port": port, "priority": len(relays) - rank}
            if relay_tunnel_port is not None:
                entry["tunnel_port"] = relay_tunnel_port
            entries.append(entry)
        overrides["relays"] = entries
    if tunnel is not None:
        host, port = split_hostport(tunnel, 6081)
        overrides.update({"tunnel_bind": host, "tunnel_port": port})
    if listen is not None:
        host, port = split_hostport(listen)
        overrides.update({"signaling_host": host, "signaling_port": port})
    config = load(TransceiverConfig, config_file, "transceiver", overrides)
    _logging(log_json, debug)
    _loop_policy(use_uvloop)
    asyncio.run(service.run(config))


@click.group(short_help="run a voice agent (echo, tone)")
def agent() -> None:
    """Built-in voice agents for the transceiver's agent protocol."""


@agent.command("run")
@click.option(
    "--kind", type=click.Choice(["echo", "tone"]), required=True, help="Echo the user, or answer with a tone."
)
@click.option(
    "--listen",
    default="127.0.0.1:8090",
    show_default=True,
    metavar="HOST:PORT",
    help="WebSocket (GET /) and /metrics address.",
)
@click.option("--tone-hz", type=float, default=440.0, show_default=True, help="The tone agent's pitch.")
@click.option("--tone-ms", type=int, default=300, show_default=True, help="The tone agent's answer length.")
@log_options
def agent_run(kind: str, listen: str, tone_hz: float, tone_ms: int, log_json: bool, debug: bool) -> None:
    """Serve one kind of agent on ws://HOST:PORT/ until SIGTERM/SIGINT."""
    from transceiver import agents

    host, port = split_hostport(listen)
    _logging(log_json, debug)

    async def main() -> None:
        runner = await agents.serve(
            "echo" if kind == "echo" else "tone", host, port, tone_hz=tone_hz, tone_ms=tone_ms
        )
        logger.info("agent listening kind=%s url=ws://%s:%d/", kind, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    asyncio.run(main())
