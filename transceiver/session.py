"""Sessions: one aiortc ``RTCPeerConnection`` each, all behind the tunnel mux.

:meth:`SessionManager.create` turns an offer into an answer::

    prepare_offer -> RTCPeerConnection(no ICE servers) -> setRemoteDescription(offer)
    -> addTrack(agent voice) -> bind_peer_connection (route-token ufrag, VIP candidates)
    -> createAnswer / setLocalDescription -> answer SDP

and then watches the session: connected (set-up time observed, RTP stats sampled every
``stats_interval_s``), failed or closed by either side (ended), or never connected within
``connect_timeout_s`` (reaped). Every end goes through :meth:`SessionManager.close`, which
counts the outcome once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aioice import Candidate, Connection
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.stats import RTCInboundRtpStreamStats, RTCRemoteInboundRtpStreamStats

from icegate.errors import SignalingError, StoreError
from transceiver import session_options
from transceiver.audio import set_receive_prefetch
from transceiver.bridge import MediaBridge
from transceiver.config import TransceiverConfig
from transceiver.continuity import Continuity, Latch
from transceiver.iceadapter import MuxBinding, MuxProtocol, bind_peer_connection, restart_connection
from transceiver.metrics import TransceiverMetrics
from transceiver.mux import TunnelMux, Vip
from transceiver.offer import prepare_offer, usable_candidate
from transceiver.sdpfrag import SdpFrag

logger = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
OPUS_CLOCK = 48000  # RTP clock of the audio codec icegate negotiates (jitter is in clock units)
UNAVAILABLE = 503


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    bridge: MediaBridge
    created: float = field(default_factory=time.monotonic)
    binding: MuxBinding | None = None
    connected_after: float | None = None  # seconds from offer to connected
    stats: dict[str, float] = field(default_factory=dict)
    outcome: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Session continuity (transceiver/continuity.py, docs/CONTINUITY.md): one per ICE
    # connection; the entity tag of the ICE session (RFC 9725 §4.3), new on each restart.
    continuity: list[Continuity] = field(default_factory=list)
    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(8)}"')
    ice_restarts: int = 0

    @property
    def state(self) -> str:
        return "ended" if self.outcome else self.pc.connectionState

    def remote_ufrag(self) -> str | None:
        """The client's current ICE ufrag (a PATCH with another one is an ICE restart)."""
        if self.binding is None or not self.binding.connections:
            return None
        return self.binding.connections[0].remote_username

    def mids(self) -> list[str]:
        """The media sections of the answer, by ``a=mid``."""
        answer = self.pc.localDescription
        sdp = answer.sdp if answer is not None else ""
        return [line[6:].strip() for line in sdp.splitlines() if line.startswith("a=mid:")]

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "age_s": round(time.monotonic() - self.created, 3),
            "setup_s": None if self.connected_after is None else round(self.connected_after, 4),
            "ufrags": self.binding.ufrags if self.binding else [],
            "turns": self.bridge.turns,
            "frames_in": self.bridge.frames_in,
            "agent": self.bridge.describe(),
            "stats": self.stats,
            "ice_restarts": self.ice_restarts,
            "latches": [latch.describe() for c in self.continuity for latch in c.latches],
        }


class SessionManager:
    def __init__(
        self,
        config: TransceiverConfig,
        mux: TunnelMux,
        mint: Callable[[], str],
        metrics: TransceiverMetrics,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.mux = mux
        relays = config.relays_by_priority()
        self.vips: Sequence[Vip] = [Vip(r.address, r.port, r.tunnel_port) for r in relays]
        self.metrics = metrics
        self.outcomes: Counter[str] = Counter()
        self.draining = False
        self._mint = mint
        self._http = http
        self._sessions: dict[str, Session] = {}
        self._background: set[asyncio.Task[bool]] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    async def wait_empty(self) -> None:
        await self._empty.wait()

    # -- creation --------------------------------------------------------------------

    async def create(
        self, body: bytes, query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[Session, str]:
        """Answer an offer; raise :class:`SignalingError` with the HTTP status when it cannot.

        Every refused offer counts as outcome ``rejected``.
        """
        try:
            return await self._create(body, query or {}, headers or {})
        except SignalingError:
            self.outcomes["rejected"] += 1
            raise

    async def _create(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[Session, str]:
        if self.draining:
            raise SignalingError(UNAVAILABLE, "draining: this transceiver takes no new sessions")
        if len(self._sessions) >= self.config.max_sessions:
            raise SignalingError(UNAVAILABLE, f"at capacity ({self.config.max_sessions} sessions)")
        offer = prepare_offer(body)
        vad = session_options.endpointing(self.config.vad, query)
        meta = session_options.metadata(self.config.agent.metadata_headers, headers)
        session_id = secrets.token_hex(16)  # 128 bits: the Location is the session's capability
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN/TURN server, ever
        bridge = MediaBridge(
            session_id,
            vad,
            agent_url=self.config.agent_url,
            http=self._http,
            link=self.config.agent,
            metadata=meta,
            on_turn_latency=self.metrics.turn_latency_seconds.observe,
            on_barge_in=self.metrics.barge_ins.inc,
            on_hangup=lambda reason: self._close_soon(session_id, "completed"),
            on_count=self.metrics.count_agent,
        )
        session = Session(session_id, pc, bridge)
        self._wire(session)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            set_receive_prefetch(pc, self.config.agent.receive_prefetch_packets)
            pc.addTrack(bridge.track)
            session.binding = bind_peer_connection(pc, self.mux, self.vips, self._mint)
            self._continue(session)
            await pc.setLocalDescription(await pc.createAnswer())
        except SignalingError:
            await self._abandon(session)
            raise
        except StoreError as exc:
            await self._abandon(session)
            raise SignalingError(UNAVAILABLE, f"cannot mint a route token: {exc}") from exc
        except (OperationError, InvalidAccessError) as exc:
            await self._abandon(session)
            raise SignalingError(422, f"cannot negotiate the offer: {exc}") from exc
        except (ValueError, InvalidStateError) as exc:
            await self._abandon(session)
            raise SignalingError(400, f"invalid offer: {exc}") from exc
        self._sessions[session_id] = session
        self._empty.clear()
        logger.info("session created id=%s live=%d", session_id, len(self._sessions))
        session.tasks.append(asyncio.create_task(self._watch(session)))
        session.tasks.append(asyncio.create_task(session.bridge.connect_agent()))
        return session, pc.localDescription.sdp

    def _continue(self, session: Session) -> None:
        """Latching and consent freshness for each of the session's ICE connections."""
        assert session.binding is not None
        binding = session.binding
        for connection, route in zip(binding.connections, binding.routes, strict=True):
            continuity = Continuity(
                connection,
                route,
                self.mux,
                consent_window_s=self.config.consent_window_s,
                on_expired=functools.partial(self._close_soon, session.id, "consent_expired"),
                on_latch=self._latched,
                on_latch_check=self._latch_checked,
            )
            for protocol in connection._protocols:
                if isinstance(protocol, MuxProtocol):
                    protocol.watcher = continuity
            session.continuity.append(continuity)

    def _latch_checked(self, result: str) -> None:
        self.metrics.latch_checks.labels(result).inc()

    def _latched(self, latch: Latch) -> None:
        self.metrics.latches.inc()
        self.metrics.latch_seconds.observe(latch.moved - latch.first_check)

    # -- ICE restart and trickle over WHIP PATCH (RFC 9725 §4.3) -----------------------

    async def restart_ice(self, session: Session, frag: SdpFrag) -> tuple[str, str, Sequence[str]]:
        """Restart ICE on ``session`` with the client's new credentials in ``frag``; return
        the new local ufrag (a fresh route token for this same transceiver), password and
        candidates. Raise :class:`SignalingError` when the session cannot restart."""
        binding = session.binding
        if session.outcome is not None or binding is None:
            raise SignalingError(404, "no such session")
        if len(binding.connections) != 1:
            raise SignalingError(422, "ICE restart needs one ICE transport (BUNDLE)")
        if self.draining:  # relays refuse new flows to a draining transceiver (DATAPATH.md §2 r8)
            raise SignalingError(UNAVAILABLE, "draining: no ICE restart here, start a new session")
        assert frag.ufrag is not None and frag.pwd is not None
        try:
            ufrag = self._mint()
        except StoreError as exc:
            raise SignalingError(UNAVAILABLE, f"cannot mint a route token: {exc}") from exc
        connection, route = binding.connections[0], binding.routes[0]
        try:
            password = restart_connection(connection, route, self.mux, ufrag, frag.ufrag, frag.pwd)
        except ValueError as exc:
            raise SignalingError(400, f"cannot restart ICE: {exc}") from exc
        await self._add_candidates(connection, frag)
        session.ice_restarts += 1
        session.etag = f'"{secrets.token_hex(8)}"'
        self.metrics.ice_restarts.inc()
        logger.info("ice restart id=%s ufrag=%s", session.id, ufrag)
        return ufrag, password, [f"candidate:{c.to_sdp()}" for c in connection._local_candidates]

    async def trickle(self, session: Session, frag: SdpFrag) -> None:
        """Trickled client candidates (RFC 8838) for the current ICE session."""
        binding = session.binding
        if session.outcome is not None or binding is None:
            raise SignalingError(404, "no such session")
        for connection in binding.connections:
            await self._add_candidates(connection, frag)

    @staticmethod
    async def _add_candidates(connection: Connection, frag: SdpFrag) -> None:
        candidates = []
        for _, line in frag.candidates:
            if not usable_candidate(f"a=candidate:{line}"):
                continue  # mDNS or not UDP: as in offers (offer.py)
            try:
                candidates.append(Candidate.from_sdp(line))
            except (ValueError, IndexError) as exc:
                raise SignalingError(400, f"bad candidate {line!r}: {exc}") from exc
        if connection._remote_candidates_end:
            return  # after end-of-candidates (in the offer or an earlier PATCH): ignored, RFC 8838 §14
        for candidate in candidates:
            await connection.add_remote_candidate(candidate)
        if frag.end_of_candidates:
            await connection.add_remote_candidate(None)

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                session.bridge.attach_input(track)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_CHANNEL:
                session.bridge.events = channel
                channel.on("message", session.bridge.client_message)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and session.connected_after is None:
                session.connected_after = time.monotonic() - session.created
                self.metrics.setup_seconds.observe(session.connected_after)
                logger.info(
                    "session connected id=%s setup_ms=%.1f", session.id, session.connected_after * 1e3
                )
                session.tasks.append(asyncio.create_task(self._sample_stats(session)))
                for continuity in session.continuity:
                    continuity.start()
            elif state in ("failed", "closed") and session.outcome is None:
                ended = state == "closed" and session.connected_after is not None
                outcome = "completed" if ended else "failed"
                self._close_soon(session.id, outcome)

    def _close_soon(self, session_id: str, outcome: str) -> None:
        task = asyncio.create_task(self.close(session_id, outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _abandon(self, session: Session) -> None:
        session.outcome = "rejected"
        await self._teardown(session)

    # -- lifetime --------------------------------------------------------------------

    async def _watch(self, session: Session) -> None:
        """Reap a session that does not connect within ``connect_timeout_s``."""
        await asyncio.sleep(self.config.connect_timeout_s)
        if session.connected_after is None and session.outcome is None:
            await self.close(session.id, "reaped")

    async def _sample_stats(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            sample: dict[str, float] = {}
            for stat in (await session.pc.getStats()).values():
                if isinstance(stat, RTCRemoteInboundRtpStreamStats) and stat.roundTripTime is not None:
                    sample["rtt_s"] = stat.roundTripTime
                    self.metrics.rtt_seconds.observe(stat.roundTripTime)
                elif isinstance(stat, RTCInboundRtpStreamStats):
                    sample["jitter_s"] = stat.jitter / OPUS_CLOCK
                    expected = stat.packetsReceived + stat.packetsLost
                    sample["loss"] = stat.packetsLost / expected if expected > 0 else 0.0
                    sample["packets_in"] = stat.packetsReceived
                    self.metrics.jitter_seconds.observe(sample["jitter_s"])
                    self.metrics.loss_ratio.observe(max(sample["loss"], 0.0))
            session.stats = sample

    async def close(self, session_id: str, outcome: str = "completed") -> bool:
        """End a session (idempotent); False if there is no such live session."""
        session = self._sessions.get(session_id)
        if session is None or session.outcome is not None:
            return False
        session.outcome = outcome
        self.outcomes[outcome] += 1
        logger.info(
            "session ended id=%s outcome=%s age_s=%.1f turns=%d",
            session_id,
            outcome,
            time.monotonic() - session.created,
            session.bridge.turns,
        )
        try:
            await self._teardown(session)
        finally:
            self._sessions.pop(session_id, None)
            if not self._sessions:
                self._empty.set()
            session.closed.set()
        return True

    async def _teardown(self, session: Session) -> None:
        current = asyncio.current_task()
        for continuity in session.continuity:
            await continuity.close()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        await session.bridge.close(session.outcome or "closed")
        await session.pc.close()
        if session.binding is not None:
            session.binding.close()
        # Cancelled again: while the awaits above ran, the peer connection could still reach
        # "connected" (a client that hangs up at once) and start the stats task, which never ends.
        for task in session.tasks:
            if task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close_all(self, outcome: str) -> None:
        await asyncio.gather(*(self.close(sid, outcome) for sid in list(self._sessions)))
