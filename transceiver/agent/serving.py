"""What every agent server of this package shares: the WebSocket application with its
metrics, the agent side of the handshake, and loading ``module:name`` specs.

The SDK (:mod:`transceiver.agent.sdk`) and the Pipecat transport
(:mod:`transceiver.agent.pipecat_transport`) serve calls differently; both serve them
through these.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from icegate.errors import WireError
from icegate.observe import http_responses, register_process
from transceiver.agent_protocol import (
    TO_AGENT,
    Event,
    EventType,
    Negotiated,
    accept_event,
    decode_event,
    event,
)

WS_CLOSE_PROTOCOL = 1002


def agent_app(serve_call: Callable[[web.WebSocketResponse], Awaitable[None]]) -> web.Application:
    """An aiohttp application: ``serve_call(ws)`` for each WebSocket on ``GET /``, and the
    metrics on ``GET /metrics`` (``icegate_agent_*``, ``process_*``)."""
    registry = CollectorRegistry(auto_describe=True)
    register_process(registry, "agent")
    connections = Gauge(
        "icegate_agent_connections", "Sessions connected to this agent now.", registry=registry
    )
    sessions = Counter("icegate_agent_sessions", "Sessions this agent served.", registry=registry)

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=65536)
        await ws.prepare(request)
        connections.inc()
        sessions.inc()
        try:
            await serve_call(ws)
        finally:
            connections.dec()
        return ws

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[http_responses(registry, "icegate_agent")])
    app.router.add_get("/", handle)
    app.router.add_get("/metrics", metrics)
    return app


async def answer_hello(
    ws: web.WebSocketResponse, text: str | None, choose: Callable[[Event], Negotiated]
) -> tuple[Event, Negotiated] | None:
    """The agent side of the handshake, given the first message's ``text`` (None: it was
    not text). Sends ``accept`` and returns (hello, what was accepted); or sends a
    ``negotiation`` error, closes with 1002 and returns None."""
    try:
        if text is None:
            raise WireError("expected hello")
        hello = decode_event(text, TO_AGENT)
        if hello.type is not EventType.HELLO:
            raise WireError(f"expected hello, got {hello.type.value}")
        negotiated = choose(hello)
    except WireError as exc:
        await ws.send_str(event(EventType.ERROR, code="negotiation", message=str(exc)).encode())
        await ws.close(code=WS_CLOSE_PROTOCOL)
        return None
    await ws.send_str(accept_event(negotiated).encode())
    return hello, negotiated


def load_spec(spec: str, expected: str) -> Any:
    """``module:name`` -> the module's attribute (None if it has no such name); ValueError
    saying what is wrong with the spec (``expected`` names the form, e.g. ``module:Class``)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"{spec!r}: expected {expected}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{spec!r}: cannot import {module_name}: {exc}") from exc
    return getattr(module, name, None)
