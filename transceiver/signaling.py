"""WHIP-shaped signaling (RFC 9725) and the health/metrics endpoints, on aiohttp.

=======  =====================  =============================================================
POST     /v1/sessions           ``application/sdp`` offer -> 201, ``Location``, SDP answer
GET      /v1/sessions           JSON list of live sessions (admin)
GET      /v1/sessions/{id}      JSON of one session (404 if unknown)
DELETE   /v1/sessions/{id}      end it -> 204 (404 if unknown)
PATCH    /v1/sessions/{id}      ``application/trickle-ice-sdpfrag``: ICE restart -> 200 + fragment,
                                trickled candidates -> 204 (RFC 9725 §4.3, docs/CONTINUITY.md)
GET      /metrics               Prometheus exposition (admin)
GET      /livez                 200 while the process runs (no dependency checks)
GET      /readyz                200 ready or degraded (Redis down, still serving), 503 not ready
OPTIONS  any                    CORS preflight (204; 403 for an origin not allowed)
=======  =====================  =============================================================

Authorization (docs/SECURITY.md): a session's id is 128 random bits and appears only in
the ``Location`` of the answer, so that URL is the capability to read, patch or end the session
(RFC 9725 section 4.2: the WHIP resource URL); the routes marked *admin* list every id and
so belong on the admin listener (:func:`make_admin_app`, ``admin_port``), reachable from
an operator's network only. ``make_app(..., admin=False)`` leaves them out.
:func:`open_warnings` names what a start-up leaves open (no bearer token, CORS for any
origin, admin routes on the public port).

CORS (for browsers on another origin, e.g. a web page POSTing its offer): with
``cors_origins`` set (``("*",)`` by default; empty turns CORS off), every response to a
request from an allowed ``Origin`` carries ``Access-Control-Allow-Origin`` and exposes
``Location`` (the session URL a WHIP client needs for its ``DELETE``) and
``Retry-After``. Preflights are answered before the bearer-token check: browsers never
send ``Authorization`` on a preflight. ``Authorization`` is listed explicitly in
``Access-Control-Allow-Headers`` because a ``*`` there does not cover it.

Errors are JSON ``{"error": reason}``: 400 malformed offer, 401 missing/wrong bearer
token (when ``auth_token`` is set; ``/v1`` only), 404, 413 offer larger than
``max_offer_bytes``, 415 not ``application/sdp``, 422 an offer without audio or nothing to
negotiate, 503 draining or at capacity (with ``Retry-After``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from icegate.errors import SignalingError
from transceiver import sdpfrag
from transceiver.session import SessionManager

SDP = "application/sdp"
RETRY_AFTER_S = 5
CORS_METHODS = "GET, POST, DELETE, OPTIONS, PATCH"
CORS_HEADERS = "Authorization, Content-Type, If-Match"
CORS_EXPOSE = "Location, Retry-After, ETag"
CORS_MAX_AGE_S = 600
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def cors_origin(origins: Sequence[str], origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``; None: not allowed."""
    if origin is None or not origins:
        return None
    if origin in origins:
        return origin
    return "*" if "*" in origins else None


def cors_headers(allowed: str) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": CORS_EXPOSE}
    if allowed != "*":
        headers["Vary"] = "Origin"  # the answer differs by origin: caches must key on it
    return headers


def make_cors(origins: Sequence[str]) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = cors_origin(origins, request.headers.get("Origin"))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if allowed is None:
                return error(403, "origin not allowed")
            headers = cors_headers(allowed) | {
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
            }
            return web.Response(status=204, headers=headers)
        if allowed is None:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405: readable by the page too
            exc.headers.update(cors_headers(allowed))
            raise
        response.headers.update(cors_headers(allowed))
        return response

    return cors


def make_app(
    manager: SessionManager,
    registry: CollectorRegistry,
    readiness: Readiness,
    *,
    auth_token: str | None = None,
    max_offer_bytes: int = 65536,
    cors_origins: Sequence[str] = ("*",),
    admin: bool = True,
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
            session, answer = await manager.create(body, request.query, request.headers)
        except SignalingError as exc:
            if exc.status == 503:
                return error(503, exc.reason, **{"Retry-After": str(RETRY_AFTER_S)})
            return error(exc.status, exc.reason)
        location = f"/v1/sessions/{session.id}"
        headers = {"Location": location, "ETag": session.etag}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def patch(request: web.Request) -> web.StreamResponse:
        session = manager.get(request.match_info["id"])
        if session is None or session.outcome is not None:
            return error(404, "no such session")
        if request.content_type != sdpfrag.CONTENT_TYPE:
            got = request.content_type or "none"
            return error(415, f"expected Content-Type {sdpfrag.CONTENT_TYPE}, got {got}")
        # RFC 9725 §4.3: the client names the ICE session it means with If-Match (its ETag,
        # or "*" for an ICE restart); another entity tag is a stale ICE session.
        match = request.headers.get("If-Match")
        if match is None:
            return error(428, "If-Match is required (the session's ETag, or * for an ICE restart)")
        if match.strip() != "*" and session.etag not in (t.strip() for t in match.split(",")):
            return error(412, "If-Match does not name the current ICE session")
        try:
            frag = sdpfrag.parse(await request.read())
        except ValueError as exc:
            return error(400, str(exc))
        try:
            if frag.ufrag is not None and frag.ufrag != session.remote_ufrag():
                assert frag.pwd is not None
                ufrag, pwd, candidates = await manager.restart_ice(session, frag)
                mids = session.mids() or frag.mids
                body = sdpfrag.write(ufrag, pwd, mids, candidates)
                return web.Response(
                    status=200,
                    text=body,
                    content_type=sdpfrag.CONTENT_TYPE,
                    headers={"ETag": session.etag},
                )
            await manager.trickle(session, frag)
        except SignalingError as exc:  # RFC 9725 §4.3: a refused restart leaves the session up
            if exc.status == 503:
                return error(503, exc.reason, **{"Retry-After": str(RETRY_AFTER_S)})
            return error(exc.status, exc.reason)
        return web.Response(status=204)

    middlewares: list[Middleware] = [make_cors(cors_origins), guard] if cors_origins else [guard]
    app = web.Application(middlewares=middlewares, client_max_size=max_offer_bytes)
    app.router.add_post("/v1/sessions", create)
    app.router.add_patch("/v1/sessions/{id}", patch)
    _add_shared_routes(app, manager, registry, readiness, admin=admin)
    return app


def make_admin_app(
    manager: SessionManager, registry: CollectorRegistry, readiness: Readiness
) -> web.Application:
    """The operator's listener: the session list, any session by id, /metrics, health.
    No CORS (no page calls it) and no bearer token: it binds where only operators reach."""
    app = web.Application()
    _add_shared_routes(app, manager, registry, readiness, admin=True)
    return app


def _add_shared_routes(
    app: web.Application,
    manager: SessionManager,
    registry: CollectorRegistry,
    readiness: Readiness,
    *,
    admin: bool,
) -> None:
    """GET/DELETE of one session (its id is the capability), health, and with ``admin``
    the session list and /metrics."""

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
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        ready, detail = readiness()
        return web.json_response(detail, status=200 if ready else 503)

    if admin:
        app.router.add_get("/v1/sessions", listing)
    app.router.add_get("/v1/sessions/{id}", show)
    app.router.add_delete("/v1/sessions/{id}", delete)
    if admin:
        app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)


def open_warnings(auth_token: str | None, cors_origins: Sequence[str], admin_listener: bool) -> list[str]:
    """What this signaling configuration leaves open to anyone who reaches the port."""
    found = []
    if auth_token is None:
        found.append("no auth_token: anyone who reaches the signaling port can create sessions")
    if "*" in cors_origins:
        found.append(
            "cors_origins '*': pages of any origin can create sessions from their visitors' browsers"
        )
    if not admin_listener:
        found.append("no admin_port: the session list and /metrics are on the public signaling port")
    return found
