"""``icegate geo serve``: the front door (DESIGN §7).

``POST /v1/sessions``
    ``307 Temporary Redirect`` to ``<cluster signaling URL>/v1/sessions`` (a WHIP client
    re-POSTs its offer there: RFC 9110 §15.4.8 keeps the method and body), with the
    decision in ``Icegate-Decision``; ``503`` + ``Retry-After`` when no cluster can take it.
``GET /v1/route?lat=&lon=`` | ``?ip=`` | (nothing: this request's own location)
    The decision and why, as JSON (``503`` with the same JSON when nothing is healthy).
``/metrics``, ``/livez`` (the process answers), ``/readyz`` (at least one region's Redis answers).

Metrics: ``icegate_geo_decisions_total{region,reason,source}``,
``icegate_geo_failovers_total{from_cluster,to_cluster}``, ``icegate_geo_unavailable_total``,
``icegate_geo_headers_ignored_total{why}``, ``icegate_geo_decision_seconds`` (histogram),
``icegate_geo_cluster_live_transceivers{cluster}``, ``icegate_geo_cluster_sessions{cluster}``,
``icegate_geo_region_up{region}``, ``icegate_geo_probe_ok{relay}``,
``icegate_geo_probe_setup_seconds{relay,vip}``, ``icegate_geo_probe_loss_ratio{relay,vip}``.

Browsers call the front door cross-origin: ``geo.cors_origins`` (default ``*``) answers the
preflight of ``POST /v1/sessions`` and exposes ``Location``, ``Icegate-Decision`` and
``Retry-After`` (the Fetch standard's CORS protocol; the redirect target, the transceiver's
signaling, has CORS of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from geo.config import GeoConfig
from geo.decide import Decision, HealthView, Unavailable, decide
from geo.health import FleetHealth
from geo.locate import Location, Locator, MaxMind, parse_coordinate
from geo.probe import ProbeResult, probe_cluster, relay_verdicts
from icegate.catalog import Catalog
from icegate.observe import http_responses, register_process

logger = logging.getLogger(__name__)

DECISION_HEADER = "Icegate-Decision"
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def make_locator(config: GeoConfig) -> Locator:
    """The locator of ``config``; a missing or corrupt MaxMind database fails here, at start."""
    mmdb = MaxMind(config.mmdb) if config.mmdb is not None else None
    d = config.default
    return Locator(Location(d.lat, d.lon, "default", d.country), config.proxy_networks(), mmdb)


class _FleetCollector(Collector):
    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self.door.health.view()
        live = GaugeMetricFamily(
            "icegate_geo_cluster_live_transceivers",
            "Live active transceivers per cluster",
            labels=["cluster"],
        )
        sessions = GaugeMetricFamily(
            "icegate_geo_cluster_sessions", "Live sessions per cluster (registrations)", labels=["cluster"]
        )
        for name, state in sorted(view.clusters.items()):
            live.add_metric([name], state.live)
            sessions.add_metric([name], state.sessions)
        up = GaugeMetricFamily(
            "icegate_geo_region_up", "1 when the region's Redis answers", labels=["region"]
        )
        for name, region in sorted(self.door.health.regions.items()):
            up.add_metric([name], 1.0 if region.reachable else 0.0)
        ok = GaugeMetricFamily(
            "icegate_geo_probe_ok", "1 when the relay's last probe passed", labels=["relay"]
        )
        setup = GaugeMetricFamily(
            "icegate_geo_probe_setup_seconds",
            "Set-up time of the last probe per VIP",
            labels=["relay", "vip"],
        )
        loss = GaugeMetricFamily(
            "icegate_geo_probe_loss_ratio", "Packet loss of the last probe per VIP", labels=["relay", "vip"]
        )
        for name, passed in sorted(self.door.health.probes.ok.items()):
            ok.add_metric([name], 1.0 if passed else 0.0)
        for r in self.door.last_probes:
            if r.setup_ms is not None:
                setup.add_metric([r.relay, r.vip], r.setup_ms / 1000)
            if r.loss_pct is not None:
                loss.add_metric([r.relay, r.vip], r.loss_pct / 100)
        yield from (live, sessions, up, ok, setup, loss)


class FrontDoor:
    def __init__(self, config: GeoConfig, catalog: Catalog, locator: Locator | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.locator = locator or make_locator(config)
        self.health = FleetHealth(catalog, config.health_interval_s)
        self.last_probes: list[ProbeResult] = []
        self.registry = CollectorRegistry()
        register_process(self.registry, "geo")
        self.decisions = Counter(
            "icegate_geo_decisions_total",
            "Decisions by region, reason and location source",
            ["region", "reason", "source"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "icegate_geo_failovers_total",
            "Decisions that skipped a nearer cluster",
            ["from_cluster", "to_cluster"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "icegate_geo_unavailable_total",
            "Requests answered 503: no cluster healthy",
            registry=self.registry,
        )
        self.headers_ignored = Counter(
            "icegate_geo_headers_ignored_total",
            "Cloudflare headers not believed (untrusted sender, malformed)",
            ["why"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "icegate_geo_decision_seconds",
            "Time to locate and decide",
            buckets=(25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3),
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(self))
        self._probe_task: asyncio.Task[None] | None = None

    # ---- the decision ------------------------------------------------------------------
    def route(
        self,
        headers: Any,
        peer: str | None,
        *,
        explicit: tuple[float, float] | None = None,
        address: str | None = None,
        country: str | None = None,
        view: HealthView | None = None,
    ) -> Decision | Unavailable:
        """Locate and decide; ``view`` replaces the live health (``geo resolve --no-health``, benchmarks)."""
        started = time.perf_counter()
        before = (self.locator.untrusted_headers, self.locator.bad_headers)
        where, notes = self.locator.locate(headers, peer, explicit=explicit, address=address, country=country)
        result = decide(
            self.catalog,
            view or self.health.view(),
            where,
            tie_ms=self.config.tie_ms,
            notes=notes,
            retry_after_s=self.config.retry_after_s,
        )
        self.latency.observe(time.perf_counter() - started)
        if self.locator.untrusted_headers > before[0]:
            self.headers_ignored.labels("untrusted").inc()
        if self.locator.bad_headers > before[1]:
            self.headers_ignored.labels("malformed").inc()
        if isinstance(result, Unavailable):
            self.unavailable.inc()
        else:
            self.decisions.labels(result.region, result.reason, where.source).inc()
            if result.reason == "failover":
                nearest = next(iter(result.skipped))["cluster"]
                self.failovers.labels(nearest, result.cluster.name).inc()
        return result

    # ---- HTTP --------------------------------------------------------------------------
    async def post_session(self, request: web.Request) -> web.Response:
        result = self.route(request.headers, request.remote)
        if isinstance(result, Unavailable):
            return _unavailable(result)
        location = result.cluster.signaling_url.rstrip("/") + "/v1/sessions"
        logger.info("steer %s -> %s", request.remote, result.header())
        return web.Response(
            status=307,
            headers={"Location": location, DECISION_HEADER: result.header(), "Cache-Control": "no-store"},
        )

    async def get_route(self, request: web.Request) -> web.Response:
        query = request.query
        explicit = None
        if "lat" in query or "lon" in query:
            lat = parse_coordinate(query.get("lat"), 90.0)
            lon = parse_coordinate(query.get("lon"), 180.0)
            if lat is None or lon is None:
                return _json({"error": "lat must be -90..90 and lon -180..180"}, 400)
            explicit = (lat, lon)
        try:
            result = self.route(request.headers, request.remote, explicit=explicit, address=query.get("ip"))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        if isinstance(result, Unavailable):
            response = _json(result.to_json(), 503)
            response.headers["Retry-After"] = str(result.retry_after_s)
            return response
        response = _json(result.to_json(), 200)
        response.headers[DECISION_HEADER] = result.header()
        return response

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def livez(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        ready, regions = self.health.ready()
        return _json({"ready": ready, "regions": dict(regions)}, 200 if ready else 503)

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is not None and ("*" in self.config.cors_origins or origin in self.config.cors_origins)

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight of ``POST /v1/sessions`` (the middleware adds the origin headers)."""
        if not self._origin_allowed(request):
            return web.Response(status=403, text="origin not allowed\n")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization",
                "Access-Control-Max-Age": "600",
            },
        )

    @web.middleware
    async def cors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if self._origin_allowed(request):
            wildcard = "*" in self.config.cors_origins
            response.headers["Access-Control-Allow-Origin"] = "*" if wildcard else request.headers["Origin"]
            response.headers["Access-Control-Expose-Headers"] = f"Location, {DECISION_HEADER}, Retry-After"
            if not wildcard:
                response.headers["Vary"] = "Origin"
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.cors] if self.config.cors_origins else [])
        app.middlewares.append(http_responses(self.registry, "icegate_geo"))
        app.router.add_route("OPTIONS", "/v1/sessions", self.preflight)
        app.router.add_post("/v1/sessions", self.post_session)
        app.router.add_get("/v1/route", self.get_route)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        return app

    # ---- probes ------------------------------------------------------------------------
    async def probe_all(self) -> list[ProbeResult]:
        results: list[ProbeResult] = []
        for cluster in self.catalog.clusters:
            results += await probe_cluster(self.catalog, cluster.name, timeout=self.config.probe_timeout_s)
        for relay, ok in relay_verdicts(results).items():
            self.health.probes.record(relay, ok)
        self.last_probes = results
        return results

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a probe bug must not stop steering
                logger.exception("probe round failed")
            await asyncio.sleep(self.config.probe_interval_s)

    async def start(self) -> None:
        await self.health.start()
        if self.config.probe_interval_s > 0:
            self._probe_task = asyncio.create_task(self._probe_loop())

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.health.stop()


def _json(data: Any, status: int) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=1) + "\n", status=status, content_type="application/json"
    )


def _unavailable(result: Unavailable) -> web.Response:
    response = _json(result.to_json(), 503)
    response.headers["Retry-After"] = str(result.retry_after_s)
    return response


async def serve(config: GeoConfig, catalog: Catalog, stop: asyncio.Event) -> None:
    """Run the front door until ``stop`` is set."""
    door = FrontDoor(config, catalog)
    await door.start()
    runner = web.AppRunner(door.app(), access_log=None)
    await runner.setup()
    # "*": every address of both families (asyncio binds "::" IPv6-only).
    host = None if config.listen_host == "*" else config.listen_host
    site = web.TCPSite(runner, host, config.listen_port)
    await site.start()
    logger.info("front door on %s:%d", config.listen_host, config.listen_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await door.stop()
