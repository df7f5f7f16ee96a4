"""The relay's HTTP endpoint (aiohttp): ``/metrics``, ``/livez``, ``/readyz``.

``/livez`` answers 200 while the event loop runs (no dependency checks: a liveness
probe that fails on a Redis outage would restart a relay that is forwarding fine).
``/readyz`` answers 200 only when nothing is degraded; otherwise 503, and the body
names each problem, one per line (``redis: ...``, ``datapath: ...``).
``/v1/state`` (the userspace twin only) serves its in-process maps as JSON for the
operator CLI (:mod:`controlplane.node.snapshot`); route keys never leave the process.
``/v1/drain`` (``POST`` starts a drain, ``DELETE`` ends it, ``GET`` reports; :mod:`controlplane.node.drain`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

snapshot_path = "/v1/state"

Problems = Callable[[], list[str]]
State = Callable[[], dict[str, Any]]
DrainHandler = Callable[[str, float], dict[str, Any]]  # (HTTP method, idle seconds) -> report
drain_path = "/v1/drain"


def make_app(
    registry: CollectorRegistry,
    problems: Problems,
    state: State | None = None,
    drain: DrainHandler | None = None,
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        found = problems()
        if found:
            return web.Response(status=503, text="".join(f"{p}\n" for p in found))
        return web.Response(text="ready\n")

    async def state_json(request: web.Request) -> web.Response:
        assert state is not None
        return web.json_response(state())

    async def drain_json(request: web.Request) -> web.Response:
        assert drain is not None
        try:
            idle_s = float(request.query.get("idle_s", "5"))
        except ValueError:
            return web.Response(status=400, text="idle_s: expected seconds\n")
        if not 0 < idle_s <= 3600:
            return web.Response(status=400, text="idle_s: expected 0 < seconds <= 3600\n")
        return web.json_response(drain(request.method, idle_s))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    if state is not None:
        app.router.add_get(snapshot_path, state_json)
    if drain is not None:  # the endpoint listens on loopback by default (HttpConfig.address)
        app.router.add_get(drain_path, drain_json)
        app.router.add_post(drain_path, drain_json)
        app.router.add_delete(drain_path, drain_json)
    return app


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and self._runner.addresses:  # tests ask for any free port
            self.port = int(self._runner.addresses[0][1])
        log.info("http listening address=%s port=%d", self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
