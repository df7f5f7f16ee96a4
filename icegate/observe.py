"""What every icegate component exports beside its own metrics: ``process_*`` (CPU,
memory, file descriptors, start time), ``icegate_build_info`` and the HTTP responses it
served by status code. One function for each, called where the component builds its
registry and its aiohttp app, so the relay, the transceiver and the agent look alike to
Prometheus and to the alerts in ``deploy/monitoring/``.
"""

from __future__ import annotations

import platform
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from icegate import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def register_process(registry: CollectorRegistry, component: str) -> None:
    """``process_*`` and ``icegate_build_info{component,version,python}`` (always 1) in ``registry``."""
    ProcessCollector(registry=registry)
    info = Gauge(
        "icegate_build_info",
        "Always 1: the icegate version and the Python that runs this component.",
        ["component", "version", "python"],
        registry=registry,
    )
    info.labels(component, __version__, platform.python_version()).set(1)


def http_responses(registry: CollectorRegistry, prefix: str) -> web.middleware:  # type: ignore[valid-type]
    """An aiohttp middleware counting ``<prefix>_http_responses_total{path,code}``. ``path``
    is the route's pattern (``/v1/sessions/{id}``), or ``unmatched``, so labels stay bounded
    whatever clients send."""
    responses = Counter(
        f"{prefix}_http_responses",
        "HTTP responses served, by route and status code.",
        ["path", "code"],
        registry=registry,
    )

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info.route.resource
        path = info.canonical if info is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            responses.labels(path, str(exc.status)).inc()
            raise
        except Exception:
            responses.labels(path, "500").inc()
            raise
        responses.labels(path, str(response.status)).inc()
        return response

    return count
