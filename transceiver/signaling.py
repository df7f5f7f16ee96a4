"""WHIP-shaped signaling (RFC 9725) and the health/metrics endpoints, on aiohttp.

=======  =====================  =============================================================
POST     /v1/sessions           ``application/sdp`` offer -> 201, ``Location``, SDP answer
GET      /v1/sessions           JSON list of live sessions
GET      /v1/sessions/{id}      JSON of one session (404 if unknown)
DELETE   /v1/sessions/{id}      end it -> 204 (404 if unknown)
GET      /metrics               Prometheus exposition
GET      /livez                 200 while the process runs (no dependency checks)
GET      /readyz                200 ready or degraded (Redis down, still serving), 503 not ready
=======  =====================  =============================================================

Errors are JSON ``{"error": reason}``: 400 malformed offer, 401 missing/wrong bearer
token (when ``auth_token`` is set; ``/v1`` only), 404, 413 offer larger than
``max_offer_bytes``, 415 not ``application/sdp``, 422 an offer without audio or nothing to
negotiate, 503 draining or at capacity (with ``Retry-After``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from icegate.errors import SignalingError
from transceiver.session import SessionManager

SDP = "application/sdp"
RETRY_AFTER_S = 5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def make_app(
    manager: SessionManager,
    registry: CollectorRegistry,
    readiness: Readiness,
    *,
    auth_token: str | None = None,
    max_offer_bytes: int = 65536,
) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if auth_token is not None and request.path.startswith("/v1/"):
            presented = request.headers.get("Authorization", "")
            if not hmac.compare_digest(presented.encode(), f"Bearer {auth_token}".encode()):
                return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"the offer exceeds {max_offer_bytes} bytes")

    async def create(request: web.Request) -> web.StreamResponse:
        if request.content_type != SDP:
            return error(415, f"expected Content-Type {SDP}, got {request.content_type or 'none'}")
        if request.content_length is not None and request.content_length > max_offer_bytes:
            return error(413, f"the offer exceeds {max_offer_bytes} bytes")
        body = await request.read()
        try:
            session, answer = await manager.create(body)
        except SignalingError as exc:
            if exc.status == 503:
                return error(503, exc.reason, **{"Retry-After": str(RETRY_AFTER_S)})
            return error(exc.status, exc.reason)
        location = f"/v1/sessions/{session.id}"
        return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location})

    async def listing(request: web.Request) -> web.StreamResponse:
        return web.json_response([s.describe() for s in manager.list()])

    async def show(request: web.Request) -> web.StreamResponse:
        session = manager.get(request.match_info["id"])
        if session is None:
            return error(404, "no such session")
        return web.json_response(session.describe())

    async def delete(request: web.Request) -> web.StreamResponse:
        if not await manager.close(request.match_info["id"], "completed"):
            return error(404, "no such session")
        return web.Response(status=204)

    async def metrics(request: web.Request) -> web.StreamResponse:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        ready, detail = readiness()
        return web.json_response(detail, status=200 if ready else 503)

    app = web.Application(middlewares=[guard], client_max_size=max_offer_bytes)
    app.router.add_post("/v1/sessions", create)
    app.router.add_get("/v1/sessions", listing)
    app.router.add_get("/v1/sessions/{id}", show)
    app.router.add_delete("/v1/sessions/{id}", delete)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app
