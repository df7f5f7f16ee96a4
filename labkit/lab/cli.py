"""``icegate lab up|down|status``: the click side of :class:`labkit.lab.Lab`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from labkit.lab.config import load_lab_config
from labkit.lab.core import Lab

F = Callable[..., Any]


def _common(func: F) -> F:
    func = click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML file; its `lab` section overrides the defaults.",
    )(func)
    func = click.option("--name", help="Lab name, the prefix of every namespace (default: icg).")(func)
    return func


def _progress() -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.2f}s] {message}", err=True)

    return say


@click.group(short_help="build and tear down the network-namespace lab")
def lab() -> None:
    """Build, inspect and tear down the network-namespace lab (docs/LAB.md)."""


@lab.command()
@_common
@click.option("--latency-ms", type=float, help="One-way delay on client links (needs netem).")
@click.option("--relays", type=int, help="Relay nodes behind the VIPs through ECMP (default 1).")
@click.option(
    "--ecmp",
    type=click.Choice(["threshold", "resilient"]),
    help="With --relays > 1: hash-threshold multipath or a resilient nexthop group.",
)
@click.option("--json", "as_json", is_flag=True, help="Print `lab status --json` when done.")
def up(
    name: str | None,
    config_file: Path | None,
    latency_ms: float | None,
    relays: int | None,
    ecmp: str | None,
    as_json: bool,
) -> None:
    """Create the namespaces, links, addresses and routes, and start Redis."""
    config = load_lab_config(
        config_file, {"name": name, "client_latency_ms": latency_ms, "relays": relays, "ecmp": ecmp}
    )
    the_lab = Lab(config)
    the_lab.up(progress=None if as_json else _progress())
    if as_json:
        click.echo(json.dumps(the_lab.status(), indent=2))
    else:
        click.echo(f"lab {config.name} is up: `icegate lab status --name {config.name}` shows it")


@lab.command()
@_common
@click.option("--keep-logs", is_flag=True, help="Keep process logs in /run/icegate/lab/<name>/.")
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds before SIGKILL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def down(name: str | None, config_file: Path | None, keep_logs: bool, timeout: float, as_json: bool) -> None:
    """End the lab's processes and remove its namespaces and pins (a missing lab is fine)."""
    the_lab = Lab.load(name, config_path=config_file)
    gone = the_lab.down(progress=None if as_json else _progress(), timeout=timeout, keep_logs=keep_logs)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": gone.name,
                    "processes": gone.processes,
                    "strays": gone.strays,
                    "namespaces": gone.namespaces,
                    "pins": gone.pins,
                    "seconds": gone.seconds,
                },
                indent=2,
            )
        )
    elif gone.nothing:
        click.echo(f"lab {gone.name}: nothing to remove")
    else:
        click.echo(f"lab {gone.name} is down ({gone.seconds:.2f}s)")


@lab.command()
@_common
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(name: str | None, config_file: Path | None, as_json: bool) -> None:
    """Hosts, interfaces, addresses, routes, XDP, processes, Redis and netem."""
    info = Lab.load(name, config_path=config_file).status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(render(info))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render(info: dict[str, Any]) -> str:
    """The human form of ``Lab.status()``."""
    lines = [
        f"lab {info['name']}: {info['state']}  (namespaces {info['prefix']}*, state {info['state_dir']})"
    ]
    if info["state"] == "down":
        return lines[0]
    rows = [["HOST", "ROLE", "IF", "ADDRESSES", "MAC", "MTU", "PEER", "XDP", "TXCSUM/GRO"]]
    routes = [["HOST", "ROUTE"]]
    for host, entry in info["hosts"].items():
        if not entry["exists"]:
            rows.append([host, entry["role"], "-", f"(missing: {entry['namespace']})", "", "", "", "", ""])
            continue
        for iface in entry["interfaces"]:
            xdp = iface["xdp"]
            offl = iface["offloads"]
            rows.append(
                [
                    host,
                    entry["role"],
                    iface["name"] + (f"@{iface['master']}" if iface["master"] else ""),
                    ",".join(iface["addresses"]) or "-",
                    str(iface["mac"]),
                    str(iface["mtu"]),
                    iface["peer"] or "-",
                    f"{xdp['mode']}:{xdp['prog_id']}" if xdp else "-",
                    f"{'on' if offl['tx_checksum'] else 'off'}/{'on' if offl['gro'] else 'off'}"
                    if offl
                    else "-",
                ]
            )
        for r in entry["routes"]:
            via = f" via {r['gateway']}" if r["gateway"] else ""
            routes.append([host, f"{r['dst']}{via} dev {r['dev']}"])
    lines += ["", *_table(rows), "", *_table(routes), ""]
    vips = ", ".join(f"{v['address']}:{v['port']}" for v in info["vips"])
    relay = info["relay"]
    lines.append(f"relay {relay['name']}: VIPs {vips}, tunnel {relay['tunnel']}, pins {relay['pin_dir']}")
    lines.append(f"  {'pinned' if relay['pinned'] else 'nothing pinned'}")
    fleet = info.get("fleet")
    if fleet:
        routed = ", ".join(str(k) for k in fleet["routed"]) or "none"
        lines.append(
            f"fleet: {len(fleet['nodes'])} relay nodes, ECMP {fleet['ecmp']} (L4 hash), routed: {routed}"
        )
        for n in fleet["nodes"]:
            lines.append(
                f"  node {n['node']} {n['name']}: public {n['public']} (router {n['router_if']}), "
                f"tunnel {n['tunnel']}{'' if n['exists'] else ' (gone)'}"
            )
    redis = info["redis"]
    lines.append(
        f"redis {redis['url']} in {redis['namespace']}: {'PONG' if redis['reachable'] else 'unreachable'}"
    )
    for tx in info["transceivers"]:
        lines.append(
            f"transceiver {tx['name']}: cluster {tx['cluster']} index {tx['index']}, "
            f"tunnel {tx['address']}:{tx['tunnel_port']}, signaling {tx['signaling_url']}"
        )
    netem = info["netem"]
    if netem.get("available"):
        added = (
            f"{netem['requested_ms']} ms each way on client links" if netem["applied"] else "no added latency"
        )
        lines.append(f"netem: available; {added}")
    else:
        skipped = (
            f"requested {netem['requested_ms']} ms not applied"
            if netem["requested_ms"]
            else "no added latency"
        )
        lines.append(f"netem: unavailable ({netem.get('reason', 'unknown')}); {skipped}")
    if info["processes"]:
        procs = [["PROCESS", "NAMESPACE", "PID", "STATE", "LOG"]]
        for p in info["processes"]:
            procs.append(
                [p["name"], p["namespace"], str(p["pid"]), "alive" if p["alive"] else "dead", p["log"]]
            )
        lines += ["", *_table(procs)]
    lines += [f"note: {note}" for note in info["notes"]]
    if info["unexpected_namespaces"]:
        lines.append(f"unexpected namespaces: {', '.join(info['unexpected_namespaces'])}")
    return "\n".join(lines)
