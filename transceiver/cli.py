"""``icegate transceiver run`` and ``icegate agent run`` (mapped in :mod:`icegate.cli`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from icegate.cli import Renamed, output_option
from icegate.config import load
from icegate.logs import setup_logging
from icegate.secrets import pick_secret
from transceiver.config import VIP_PORT, TransceiverConfig

if TYPE_CHECKING:
    from aiohttp import web

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
@click.option(
    "--redis-url",
    help="Redis URL (registration, heartbeat, route keys); better: ICEGATE_TRANSCEIVER_RUN_REDIS_URL "
    "or --redis-url-file.",
)
@click.option(
    "--redis-url-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the Redis URL."
)
@click.option("--region", help="Redis region (key prefix), as the relays'.")
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet catalog: the answer's relays are its two best for this region and cluster.",
)
@click.option(
    "--route-key",
    metavar="HEX",
    help="A fixed route key (32 hex digits) when there is no Redis; better: "
    "ICEGATE_TRANSCEIVER_RUN_ROUTE_KEY or --route-key-file.",
)
@click.option(
    "--route-key-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the route key."
)
@click.option(
    "--auth-token",
    help="Require 'Authorization: Bearer TOKEN' on /v1; better: ICEGATE_TRANSCEIVER_RUN_AUTH_TOKEN or "
    "--auth-token-file.",
)
@click.option(
    "--auth-token-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the token."
)
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
    redis_url_file: Path | None,
    region: str | None,
    catalog: Path | None,
    route_key: str | None,
    route_key_file: Path | None,
    auth_token: str | None,
    auth_token_file: Path | None,
    connect_timeout: float | None,
    drain_deadline: float | None,
    use_uvloop: bool | None,
    log_json: bool,
    debug: bool,
) -> None:
    """Serve sessions until SIGTERM/SIGINT (or a drain set in Redis) has drained them."""
    from transceiver import service

    _logging(log_json, debug)
    redis_url = _secret("redis_url", redis_url, redis_url_file)
    route_key = _secret("route_key", route_key, route_key_file)
    auth_token = _secret("auth_token", auth_token, auth_token_file)
    overrides: dict[str, Any] = {
        "cluster": cluster,
        "index": index,
        "tunnel_advertise": tunnel_advertise,
        "agent_url": agent_url,
        "redis_url": redis_url,
        "region": region,
        "catalog": str(catalog) if catalog else None,
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
    _loop_policy(use_uvloop)
    asyncio.run(service.run(config))


def _secret(name: str, value: str | None, path: Path | None) -> str | None:
    """A secret option, its file or its environment variable (icegate.secrets; the variable
    is the CLI's automatic ``ICEGATE_TRANSCEIVER_RUN_<OPTION>``)."""
    source = click.get_current_context().get_parameter_source(name)
    env = f"ICEGATE_TRANSCEIVER_RUN_{name.upper()}"
    return pick_secret(
        f"transceiver.{name}", value, path, on_command_line=source is ParameterSource.COMMANDLINE, env=env
    )


@click.group(short_help="run a voice agent (echo, tone, speech, or your own)")
def agent() -> None:
    """Voice agents for the transceiver's agent protocol (docs/AGENT_PROTOCOL.md)."""


@agent.command("run")
@click.option(
    "--kind",
    type=click.Choice(["echo", "tone", "speech"]),
    help="A built-in agent: echo the user, answer with a tone, or listen and speak (offline).",
)
@click.option("--app", "app_spec", metavar="MODULE:CLASS", help="Serve your own Agent subclass instead.")
@click.option(
    "--pipecat",
    "pipecat_spec",
    metavar="MODULE:FUNCTION",
    help="Serve a Pipecat bot, async FUNCTION(transport), instead (docs/PIPECAT.md).",
)
@click.option(
    "--input-rate", type=int, default=16000, show_default=True, help="--pipecat: the caller's voice."
)
@click.option("--output-rate", type=int, default=24000, show_default=True, help="--pipecat: the bot's voice.")
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
def agent_run(
    kind: str | None,
    app_spec: str | None,
    pipecat_spec: str | None,
    input_rate: int,
    output_rate: int,
    listen: str,
    tone_hz: float,
    tone_ms: int,
    log_json: bool,
    debug: bool,
) -> None:
    """Serve an agent on ws://HOST:PORT/ until SIGTERM/SIGINT (one instance per session)."""
    from transceiver.agent import builtin, sdk

    if pipecat_spec is not None:
        if kind is not None or app_spec is not None:
            raise click.UsageError("--pipecat serves a Pipecat bot: give it without --kind and --app")
    elif (kind is None) == (app_spec is None):
        raise click.UsageError("give exactly one of --kind and --app")
    factory: type[sdk.Agent] | None = None
    if pipecat_spec is not None:
        _pipecat_logs(debug)  # before Pipecat is imported: it logs on import
        start = _pipecat_server(pipecat_spec, input_rate, output_rate)
    elif app_spec is not None:
        try:
            factory = sdk.load_app(app_spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--app") from None
    elif kind == "echo":
        factory = builtin.EchoAgent
    elif kind == "tone":
        factory = builtin.tone_agent(tone_hz, tone_ms)
    else:
        from transceiver.agent import speech

        factory = speech.SpeechAgent
    host, port = split_hostport(listen)
    _logging(log_json, debug)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # before warm_up: a stop while loading is clean
            loop.add_signal_handler(signum, stop.set)
        runner = await sdk.serve(factory, host, port) if factory is not None else await start(host, port)
        logger.info("agent listening kind=%s url=ws://%s:%d/", kind or app_spec or pipecat_spec, host, port)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    asyncio.run(main())


def _pipecat_logs(debug: bool) -> None:
    """Pipecat logs with loguru (DEBUG to stderr unless told otherwise): its lines go to the
    ``logging`` module instead, as ``pipecat.*`` loggers, so ``--log-json`` formats them too."""
    try:
        from loguru import logger as loguru_logger
    except ImportError as exc:
        raise click.UsageError(f"--pipecat needs Pipecat: pip install 'icegate[pipecat]' ({exc})") from None

    def sink(message: Any) -> None:
        record = message.record
        logging.getLogger(record["name"] or "pipecat").log(record["level"].no, "%s", record["message"])

    loguru_logger.remove()
    loguru_logger.add(sink, level="DEBUG" if debug else "INFO", format="{message}")


def _pipecat_server(
    spec: str, input_rate: int, output_rate: int
) -> Callable[[str, int], Awaitable[web.AppRunner]]:
    """``--pipecat``: the bot and its rates, checked before anything listens."""
    try:
        from transceiver.agent import pipecat_transport
    except ImportError as exc:
        raise click.UsageError(f"--pipecat needs Pipecat: pip install 'icegate[pipecat]' ({exc})") from None
    try:
        bot = pipecat_transport.load_bot(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--pipecat") from None
    try:
        params = pipecat_transport.IcegateParams(input_rate=input_rate, output_rate=output_rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-rate/--output-rate") from None

    async def start(host: str, port: int) -> web.AppRunner:
        return await pipecat_transport.serve(bot, host, port, params)

    return start


@agent.command("check")
@click.argument("url")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the answer."
)
@output_option
def agent_check(url: str, timeout: float, as_json: bool) -> None:
    """Put the agent at URL (ws://...) through one call as the transceiver would; exit 1 on a problem."""
    import json

    from transceiver.agent.check import check

    report = asyncio.run(check(url, timeout=timeout))
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        neg = report.get("negotiated") or {}
        click.echo(f"agent {url}: {'ok' if report['ok'] else 'PROBLEMS'}")
        click.echo(f"  negotiated: in {neg.get('input')}, out {neg.get('output')}")
        click.echo(f"  events: {' '.join(report.get('events', []))}")
        click.echo(f"  end_of_turn -> first frame: {report.get('first_frame_ms')} ms; "
                   f"response {report.get('response_ms')} ms of audio")  # fmt: skip
        for problem in report["problems"]:
            click.echo(f"  problem: {problem}")
    raise SystemExit(0 if report["ok"] else 1)
