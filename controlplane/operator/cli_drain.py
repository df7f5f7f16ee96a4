"""``icegate relay drain|undrain``: take this node out of the fleet gracefully, or cancel that
(:mod:`controlplane.node.drain`).

It asks the running control plane (``POST /v1/drain`` on its HTTP endpoint, loopback by
default: run it on the node, as a Kubernetes ``preStop`` hook does) to fail readiness and
refuse new flows, then with ``--wait`` polls until no flow has carried a packet for
``--idle`` seconds. Exit status: 0 drained (or, without ``--wait``, drain started), 1 still
live flows at ``--timeout``, 2 the control plane does not answer. ``undrain`` is
``DELETE /v1/drain``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

import click

from controlplane.config import HttpConfig
from controlplane.node.http import drain_path
from controlplane.operator.cli_common import Target, target_options
from controlplane.operator.cli_relay import relay
from icegate.errors import RelayNotRunning
from icegate.output import dump_json, json_option


def call(http: HttpConfig, method: str, idle_s: float, timeout: float = 3.0) -> dict[str, Any]:
    url = f"http://{http.address}:{http.port}{drain_path}?idle_s={idle_s:g}"
    request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            data = json.loads(reply.read())
    except (OSError, ValueError) as exc:
        raise RelayNotRunning(f"the relay's control plane does not answer at {url}: {exc}") from exc
    if not isinstance(data, dict):
        raise RelayNotRunning(f"{url} answered {data!r}")
    return data


def unreachable(exc: RelayNotRunning, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(dump_json({"error": str(exc)}))
    else:
        click.echo(f"error: {exc}", err=True)
    raise SystemExit(2) from None


@relay.command("drain")
@target_options
@click.option("--wait", is_flag=True, help="Wait until no flow carries packets (or --timeout).")
@click.option("--idle", "idle_s", type=float, default=5.0, show_default=True,
              help="A flow is live if it carried a packet in the last S seconds.")  # fmt: skip
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Give up waiting after S seconds."
)
@click.option("--interval", type=float, default=0.5, show_default=True, help="Poll every S seconds.")
@json_option
def relay_drain(
    target: Target, wait: bool, idle_s: float, timeout: float, interval: float, as_json: bool
) -> None:
    """Fail readiness, refuse new flows, and (with --wait) say when the node is empty."""
    if not 0 < idle_s <= 3600:
        raise click.BadParameter("expected 0 < S <= 3600", param_hint="--idle")
    try:
        report = call(target.http, "POST", idle_s)
        started = time.monotonic()
        while wait and not report.get("empty") and time.monotonic() - started < timeout:
            if not as_json:
                click.echo(f"draining: {report['live']} live flows of {report['flows']}", err=True)
            time.sleep(interval)
            report = call(target.http, "GET", idle_s)
    except RelayNotRunning as exc:
        unreachable(exc, as_json)
    done = bool(report.get("empty"))
    if as_json:
        click.echo(dump_json(report))
    elif done:
        click.echo(f"drained: no live flows (idle {idle_s:g} s); {report['removed']} idle flows removed")
    else:
        click.echo(f"draining: {report['live']} live flows of {report['flows']} remain")
    raise SystemExit(0 if done or not wait else 1)


@relay.command("undrain")
@target_options
@json_option
def relay_undrain(target: Target, as_json: bool) -> None:
    """Cancel a drain: readiness back, the held backends active again, new flows taken."""
    try:
        report = call(target.http, "DELETE", 5.0)
    except RelayNotRunning as exc:
        unreachable(exc, as_json)
    if as_json:
        click.echo(dump_json(report))
    else:
        click.echo(f"ready for new flows: drain cancelled; {report['flows']} flows in the map")
