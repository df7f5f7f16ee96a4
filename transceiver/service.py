"""A whole transceiver process: tunnel mux, sessions, signaling, Redis registry, metrics.

Lifecycle: :meth:`Transceiver.start` binds the Geneve socket and the signaling port and
registers; :meth:`Transceiver.drain` (SIGTERM, or ``state = draining`` set in Redis by
``icegate backends drain``) refuses new sessions with 503, keeps the live ones, and
:meth:`Transceiver.wait` returns once they have ended or ``drain_deadline_s`` passed
(the rest are then closed); :meth:`Transceiver.stop` deregisters and releases everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import aiohttp
from aiohttp import web

from icegate.observe import http_responses
from transceiver.config import TransceiverConfig
from transceiver.metrics import TransceiverMetrics
from transceiver.mux import Addr, TunnelMux, Vip
from transceiver.registry import Registry
from transceiver.session import SessionManager
from transceiver.signaling import make_admin_app, make_app, open_warnings

logger = logging.getLogger(__name__)


class Transceiver:
    """Construct inside the event loop (it opens an aiohttp client session)."""

    def __init__(self, config: TransceiverConfig) -> None:
        config = config.with_catalog_relays()  # the fleet catalog names the relays, when set
        self.config = config
        vips = [Vip(r.address, r.port, r.tunnel_port) for r in config.relays]
        self.mux = TunnelMux(
            config.index,
            vips,
            hold_packets=config.hold_packets,
            hold_s=config.hold_ms / 1000,
            relay_sources=config.relay_sources,
        )
        self.metrics = TransceiverMetrics()
        self.registry = Registry(config, sessions=lambda: len(self.sessions), on_drain=self.drain)
        self._http = aiohttp.ClientSession()  # agent WebSockets; needs the running loop
        self.sessions = SessionManager(config, self.mux, self.registry.mint, self.metrics, self._http)
        self.tunnel_address: Addr | None = None
        self.signaling_address: Addr | None = None
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.admin_address: Addr | None = None  # the admin listener (admin_port), when configured
        self._drained = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        snap = self.metrics.snapshot
        snap.sessions = lambda: len(self.sessions)
        snap.outcomes = lambda: dict(self.sessions.outcomes)
        snap.mux_counters = lambda: dict(self.mux.counters)
        snap.redis_up = lambda: self.registry.up
        snap.draining = lambda: self.sessions.draining

    @property
    def signaling_url(self) -> str:
        assert self.signaling_address is not None, "not started"
        host, port = self.signaling_address
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {
            "tunnel": self.tunnel_address is not None,
            "route_key": self.registry.current_key() is not None,
            "redis": self.registry.up,
            "draining": self.sessions.draining,
            "sessions": len(self.sessions),
        }
        ready = bool(detail["tunnel"] and detail["route_key"] and not detail["draining"])
        detail["status"] = "not ready" if not ready else "ready" if detail["redis"] else "degraded"
        return ready, detail

    async def start(self) -> None:
        cfg = self.config
        self.tunnel_address = await self.mux.bind(cfg.tunnel_bind, cfg.tunnel_port)
        app = make_app(
            self.sessions,
            self.metrics.registry,
            self.readiness,
            auth_token=cfg.auth_token,
            max_offer_bytes=cfg.max_offer_bytes,
            cors_origins=cfg.cors_origins,
            admin=cfg.admin_port is None,
        )
        app.middlewares.append(http_responses(self.metrics.registry, "icegate_transceiver"))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.signaling_host, cfg.signaling_port).start()
        sockname = self._runner.addresses[0]
        self.signaling_address = (sockname[0], sockname[1])
        if cfg.admin_port is not None:
            admin = make_admin_app(self.sessions, self.metrics.registry, self.readiness)
            self._admin_runner = web.AppRunner(admin, access_log=None)
            await self._admin_runner.setup()
            await web.TCPSite(self._admin_runner, cfg.admin_host, cfg.admin_port).start()
            name = self._admin_runner.addresses[0]
            self.admin_address = (name[0], name[1])
        for warning in open_warnings(cfg.auth_token, cfg.cors_origins, cfg.admin_port is not None):
            logger.warning("signaling open: %s", warning)
        await self.registry.start()
        logger.info(
            "transceiver running cluster=%d index=%d tunnel=%s:%d signaling=%s relays=%s agent=%s redis=%s",
            cfg.cluster,
            cfg.index,
            *self.tunnel_address,
            self.signaling_url,
            ",".join(f"{r.address}:{r.port}" for r in cfg.relays_by_priority()),
            cfg.agent_url or "-",
            "yes" if cfg.redis_url else "no",
        )

    def drain(self) -> None:
        if self.sessions.draining:
            return
        logger.info("draining sessions=%d deadline_s=%g", len(self.sessions), self.config.drain_deadline_s)
        self.sessions.draining = True
        self.registry.drain()
        self._drain_task = asyncio.create_task(self._finish_drain())

    async def _finish_drain(self) -> None:
        try:
            async with asyncio.timeout(self.config.drain_deadline_s):
                await self.sessions.wait_empty()
        except TimeoutError:
            logger.info("drain deadline passed closing=%d", len(self.sessions))
            await self.sessions.close_all("drained")
        self._drained.set()

    async def wait(self) -> None:
        """Return when a drain has completed."""
        await self._drained.wait()

    async def stop(self) -> None:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        await self.sessions.close_all("drained")
        await self.registry.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self._http.close()
        self.mux.close()


async def run(config: TransceiverConfig) -> None:
    """Serve until SIGTERM/SIGINT (or a drain request in Redis) has drained the sessions."""
    service = Transceiver(config)
    await service.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.drain)
    try:
        await service.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await service.stop()
