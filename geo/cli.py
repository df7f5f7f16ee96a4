"""``icegate geo resolve|serve`` and ``icegate probe`` (registered in ``icegate.commands``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from geo.config import GeoConfig
from icegate.catalog import Catalog, load_catalog
from icegate.config import load
from icegate.logs import setup_logging
from icegate.output import emit, json_option

F = Callable[..., Any]


def _files(func: F) -> F:
    func = click.option(
        "--catalog",
        "catalog_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Catalog YAML (section `catalog`); default: geo.catalog, else the --config file.",
    )(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML, section `geo`.",
    )(func)


def _load(
    config_file: Path | None, catalog_file: Path | None, overrides: dict[str, Any] | None = None
) -> tuple[GeoConfig, Catalog]:
    config = load(GeoConfig, config_file, "geo", overrides or {})
    path = catalog_file or config.catalog or config_file
    if path is None:
        raise click.UsageError("no catalog: pass --catalog FILE (or --config with a `catalog` section)")
    return config, load_catalog(path)


@click.group(short_help="geo steering: resolve a decision, serve the front door")
def geo() -> None:
    """Steer clients to the nearest healthy transceiver cluster and its relays (docs/GEO.md)."""


@geo.command()
@_files
@click.option("--lat", type=float, help="An explicit client latitude.")
@click.option("--lon", type=float, help="An explicit client longitude.")
@click.option("--ip", "address", help="Locate this address in the MaxMind database.")
@click.option("--country", help="The client's country (selects the RTT matrix row).")
@click.option("--mmdb", type=click.Path(dir_okay=False, path_type=Path), help="MaxMind database.")
@click.option("--no-health", is_flag=True, help="Assume every cluster healthy (do not read Redis).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def resolve(
    config_file: Path | None,
    catalog_file: Path | None,
    lat: float | None,
    lon: float | None,
    address: str | None,
    country: str | None,
    mmdb: Path | None,
    no_health: bool,
    as_json: bool,
) -> None:
    """Print the decision for a client, and why (reads every region's Redis once)."""
    from geo.decide import ClusterHealth, Decision, HealthView, Unavailable
    from geo.frontdoor import FrontDoor, make_locator

    config, catalog = _load(config_file, catalog_file, {"mmdb": str(mmdb) if mmdb else None})
    if (lat is None) != (lon is None):
        raise click.UsageError("--lat and --lon go together")
    door = FrontDoor(config, catalog, make_locator(config))

    async def run() -> Decision | Unavailable:
        view = None
        if no_health:
            view = HealthView({c.name: ClusterHealth(live=1) for c in catalog.clusters})
        else:
            for region in door.health.regions.values():
                await region.refresh()
        try:
            explicit = (lat, lon) if lat is not None and lon is not None else None
            return door.route({}, None, explicit=explicit, address=address, country=country, view=view)
        finally:
            for region in door.health.regions.values():
                await region.stop()

    try:
        result = asyncio.run(run())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    data = result.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif isinstance(result, Unavailable):
        click.echo(f"no cluster available (503, Retry-After {result.retry_after_s}s)")
    else:
        where = result.location
        click.echo(
            f"client at {where.lat:.2f},{where.lon:.2f} ({where.source}"
            f"{', ' + where.country if where.country else ''})"
        )
        click.echo(
            f"-> region {result.region}, cluster {result.cluster.name} ({result.reason}; "
            f"{result.cost_ms:.1f} ms by {result.cost_source}, {result.distance_km:.0f} km)"
        )
        for choice in result.relays:
            r = choice.relay
            vips = ", ".join(r.vips)
            click.echo(f"   {choice.role:7} relay {r.name} (priority {r.priority}): {vips} port {r.port}")
    if not as_json:
        for skipped in data["skipped"]:
            click.echo(f"   skipped {skipped['cluster']} ({skipped['region']}): {skipped['why']}")
        for note in data["notes"]:
            click.echo(f"   note: {note}")
    if isinstance(result, Unavailable):
        raise SystemExit(1)


@geo.command()
@_files
@click.option("--listen", metavar="HOST:PORT", help="Listen address (default 127.0.0.1:8443).")
@click.option("--mmdb", type=click.Path(dir_okay=False, path_type=Path), help="MaxMind database.")
@click.option(
    "--trusted-proxy", "trusted", multiple=True, metavar="CIDR", help="Believe cf-* headers from here."
)
@click.option("--probe-interval", type=float, help="Seconds between probe rounds (0: none).")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value.")
def serve(
    config_file: Path | None,
    catalog_file: Path | None,
    listen: str | None,
    mmdb: Path | None,
    trusted: tuple[str, ...],
    probe_interval: float | None,
    log_json: bool,
) -> None:
    """The front door: POST /v1/sessions -> 307 to the chosen cluster; GET /v1/route explains."""
    import logging

    from geo.frontdoor import make_locator
    from geo.frontdoor import serve as run_front_door

    overrides: dict[str, Any] = {"mmdb": str(mmdb) if mmdb else None, "probe_interval_s": probe_interval}
    if trusted:
        overrides["trusted_proxies"] = list(trusted)
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise click.BadParameter(f"{listen!r}: expected HOST:PORT")
        overrides.update({"listen_host": host.strip("[]"), "listen_port": int(port)})
    config, catalog = _load(config_file, catalog_file, overrides)
    make_locator(config)  # a missing or corrupt MaxMind database fails before anything listens
    setup_logging(log_json, logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_front_door(config, catalog, stop)

    asyncio.run(main())


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


PROBE_COLUMNS: dict[str, Any] = {
    "CLUSTER": lambda r: r["cluster"],
    "RELAY": lambda r: r["relay"],
    "VIP": lambda r: r["vip"],
    "OK": lambda r: "yes" if r["ok"] else "NO",
    "SETUP_MS": lambda r: _ms(r["setup_ms"]),
    "LOSS": lambda r: None if r["loss_pct"] is None else f"{r['loss_pct']:.1f}%",
    "ERROR": lambda r: r["error"],
}
PROBE_WIDE: dict[str, Any] = {
    "SENT": lambda r: r["packets_sent"],
    "RECV": lambda r: r["packets_received"],
    "LOST": lambda r: r["packets_lost"],
}


@click.command(short_help="a real synthetic session through each relay of a cluster")
@_files
@click.option("--cluster", "clusters", multiple=True, help="Cluster to probe (repeatable; default: all).")
@click.option(
    "--family", type=click.Choice(["4", "6", "any"]), default="any", show_default=True, help="VIPs to probe."
)
@click.option("--signaling-url", help="Override the cluster's signaling URL (one cluster only).")
@click.option("--talk", type=float, default=0.6, show_default=True, help="Seconds of audio each way.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds for set-up (per VIP).")
@json_option
def probe(
    config_file: Path | None,
    catalog_file: Path | None,
    clusters: tuple[str, ...],
    family: str,
    signaling_url: str | None,
    talk: float,
    timeout: float,
    as_json: bool,
) -> None:
    """Offer, ICE, DTLS and audio both ways through every relay VIP of the cluster(s); set-up and loss."""
    from geo.probe import probe_cluster

    _, catalog = _load(config_file, catalog_file)
    names = list(clusters) or [c.name for c in catalog.clusters]
    for name in names:
        try:
            catalog.cluster(name)
        except KeyError:
            raise click.BadParameter(f"unknown cluster {name!r}", param_hint="--cluster") from None
    if signaling_url and len(names) != 1:
        raise click.UsageError("--signaling-url needs exactly one --cluster")

    async def run() -> list[Any]:
        out = []
        for name in names:
            out += await probe_cluster(
                catalog, name, family=family, talk_s=talk, timeout=timeout, signaling_url=signaling_url
            )
        return out

    results = asyncio.run(run())
    emit([r.to_json() for r in results], as_json, PROBE_COLUMNS, "no relay to probe", PROBE_WIDE)
    if not all(r.ok for r in results):
        raise SystemExit(1)
