"""Sessions that survive real networks: latching, consent freshness (docs/CONTINUITY.md).

One :class:`Continuity` per ICE connection (one per session with BUNDLE), wired by
:mod:`transceiver.session` and fed by :class:`transceiver.iceadapter.MuxProtocol`, which
hands it every binding request aioice has just answered.

**Latching** (NAT rebinding, a network change that keeps the ICE credentials). When a
check from a client address other than the nominated pair's arrives and verifies with the
session's ICE password (USERNAME and MESSAGE-INTEGRITY, RFC 8445 §7.3), this sends a
*triggered check* to that address (RFC 8445 §7.3.1.4) signed with the client's password.
Only when its success response comes back from that very address (RFC 8445 §7.2.5.2.1)
does the session's outbound path move: the nominated pair becomes (the VIP it came on,
the new address), the mux forgets the old address, the move is logged, counted and kept
in :attr:`Continuity.latches`. An incoming request alone never moves media: anyone who
holds a session of their own could otherwise spoof a source address and point that
session's media at a third party (RFC 7675 §1: consent is what the *receiver* proves by
answering). At most :data:`MAX_PROBES` such checks run at once per connection.

**Consent freshness** (RFC 7675 §5.1). Every ``window / 5`` seconds (5 s at most,
randomised by 0.8-1.2 as the RFC asks), a binding request on the nominated pair; a
success response (or a latch) renews consent. With none for ``consent_window_s`` (30 s
by default, RFC 7675 §5.1), ``on_expired`` is called once and the loop ends: the session
manager closes the session with outcome ``consent_expired`` and the agent gets its
``hangup`` event (docs/AGENT_PROTOCOL.md). aioice's own consent loop (6 checks, 5 s apart) is cancelled
when this one starts: one loop, on the window the operator sets.

aioice internals used here besides those of :mod:`transceiver.iceadapter`:
``Connection._nominated``, ``_remote_candidates``, ``_check_list``, ``_find_pair``,
``_tie_breaker``, ``ice_controlling``, ``remote_username``/``remote_password``,
``_valid_username``, ``_query_consent_task``; ``CandidatePair`` and ``Candidate._network_host``;
``StunProtocol.request``. ``tests/unit/test_transceiver_continuity.py`` pins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_priority
from aioice.ice import CandidatePair, StunProtocol
from aioice.utils import random_string

from transceiver.mux import Addr, Route, TunnelMux

logger = logging.getLogger(__name__)

COMPONENT = 1
CONSENT_WINDOW_S = 30.0  # RFC 7675 §5.1: consent expires 30 s after the last success
CONSENT_INTERVAL_S = 5.0  # RFC 7675 §5.1: a check every 5 s on average (4-6 s)
LATCH_RETRANSMISSIONS = 2  # a triggered check: 3 tries over 3.5 s (RFC 8489 §6.2.1 RTO 0.5 s)
MAX_PROBES = 4  # latch checks in flight per connection
MAX_LATCHES = 16  # moves remembered per connection (for GET /v1/sessions/{id}); all are counted


@dataclass(frozen=True)
class Latch:
    """One move of a session's outbound path: where from, where to, and when (monotonic)."""

    old: Addr | None
    new: Addr
    vip: Addr
    first_check: float  # the first authentic check from ``new``
    moved: float  # the triggered check's success: media goes to ``new`` from here

    def describe(self) -> dict[str, object]:
        return {
            "old": None if self.old is None else f"{self.old[0]}:{self.old[1]}",
            "new": f"{self.new[0]}:{self.new[1]}",
            "vip": f"{self.vip[0]}:{self.vip[1]}",
            "first_check": round(self.first_check, 6),
            "moved": round(self.moved, 6),
            "check_to_move_ms": round((self.moved - self.first_check) * 1e3, 2),
        }


@dataclass
class Continuity:
    """Latching and consent for one aioice connection bound to ``route`` in ``mux``."""

    connection: Connection
    route: Route
    mux: TunnelMux
    consent_window_s: float = CONSENT_WINDOW_S
    on_expired: Callable[[], None] = lambda: None
    on_latch: Callable[[Latch], None] = lambda latch: None
    on_latch_check: Callable[[str], None] = lambda result: None  # moved|failed|busy|unauthenticated
    counters: Counter[str] = field(default_factory=Counter)  # latch results, consent results
    latches: deque[Latch] = field(default_factory=lambda: deque(maxlen=MAX_LATCHES))
    consent_at: float | None = None  # the last proof of consent (monotonic)
    _probing: dict[Addr, asyncio.Task[None]] = field(default_factory=dict)
    _consent_task: asyncio.Task[None] | None = None

    # -- latching --------------------------------------------------------------------

    def request_seen(self, protocol: StunProtocol, data: bytes, addr: Addr) -> None:
        """aioice has handled the binding request ``data`` from ``addr`` on ``protocol``."""
        conn = self.connection
        nominated = conn._nominated.get(COMPONENT)
        if nominated is None or conn.remote_password is None:
            return  # not connected yet: ordinary ICE (aioice) owns the checks
        if nominated.protocol is protocol and nominated.remote_addr == addr:
            return  # the current path
        if addr in self._probing:
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        username = message.attributes.get("USERNAME")
        # The mux verified this already; checked again here because it is what allows a move.
        if not (
            isinstance(username, str)
            and conn._valid_username(username)
            and message.check_message_integrity(conn.local_password.encode("utf8"))
        ):
            self._count("unauthenticated")
            return
        if len(self._probing) >= MAX_PROBES:
            self._count("busy")
            return
        first = time.monotonic()
        task = asyncio.create_task(self._latch(protocol, addr, first))
        self._probing[addr] = task
        task.add_done_callback(functools.partial(self._probed, addr))

    def _probed(self, addr: Addr, _task: asyncio.Task[None]) -> None:
        self._probing.pop(addr, None)

    def _count(self, result: str) -> None:
        self.counters[result] += 1
        self.on_latch_check(result)

    async def _latch(self, protocol: StunProtocol, addr: Addr, first: float) -> None:
        conn = self.connection
        assert conn.remote_password is not None
        try:
            _, source = await protocol.request(
                self._request(),
                addr,
                integrity_key=conn.remote_password.encode("utf8"),
                retransmissions=LATCH_RETRANSMISSIONS,
            )
        except stun.TransactionError:
            self._count("failed")
            logger.info("latch check to %s:%d failed: the path stays", *addr)
            return
        if (source[0], source[1]) != addr:  # RFC 8445 §7.2.5.2.1: the answer must come from there
            self._count("failed")
            return
        self._move(protocol, addr, first)

    def _request(self) -> stun.Message:
        conn = self.connection
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{conn.remote_username}:{conn.local_username}"
        request.attributes["PRIORITY"] = candidate_priority(COMPONENT, "prflx")
        role = "ICE-CONTROLLING" if conn.ice_controlling else "ICE-CONTROLLED"
        request.attributes[role] = conn._tie_breaker
        return request

    def _move(self, protocol: StunProtocol, addr: Addr, first: float) -> None:
        conn = self.connection
        old = conn._nominated.get(COMPONENT)
        candidate = next(
            (c for c in conn._remote_candidates if (c._network_host, c.port) == addr),
            None,
        )
        if candidate is None:  # aioice learns it in check_incoming; made here if it did not
            candidate = Candidate(
                foundation=random_string(10),
                component=COMPONENT,
                transport="udp",
                priority=candidate_priority(COMPONENT, "prflx"),
                host=addr[0],
                port=addr[1],
                type="prflx",
            )
            conn._remote_candidates.append(candidate)
        pair = conn._find_pair(protocol, candidate)
        if pair is None:
            pair = CandidatePair(protocol, candidate)
            conn._check_list.append(pair)
        pair.state = CandidatePair.State.SUCCEEDED
        pair.nominated = True
        conn._nominated[COMPONENT] = pair
        vip = (protocol.local_candidate.host, protocol.local_candidate.port)
        old_addr = None
        if old is not None and old is not pair:
            old_addr = old.remote_addr
            old_vip = (old.local_candidate.host, old.local_candidate.port)
            self.mux.forget(self.route, old_addr, old_vip)
        now = time.monotonic()
        self.consent_at = now  # the client just answered from there
        latch = Latch(old_addr, addr, vip, first, now)
        self.latches.append(latch)
        self._count("moved")
        logger.info(
            "latched %s -> %s:%d via %s:%d check_to_move_ms=%.1f",
            "none" if old_addr is None else f"{old_addr[0]}:{old_addr[1]}",
            addr[0],
            addr[1],
            vip[0],
            vip[1],
            (now - first) * 1e3,
        )
        self.on_latch(latch)

    # -- consent ---------------------------------------------------------------------

    def start(self) -> None:
        if self._consent_task is None:
            self._consent_task = asyncio.create_task(self._consent())

    async def _consent(self) -> None:
        conn = self.connection
        interval = min(CONSENT_INTERVAL_S, self.consent_window_s / 5)
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))  # RFC 7675 §5.1
            pair = conn._nominated.get(COMPONENT)
            if pair is None or conn.remote_password is None:
                continue  # not connected yet: the connect timeout reaps a session that never is
            if self.consent_at is None:
                self.consent_at = time.monotonic()  # consent starts with ICE's own success
                # One consent loop, on the operator's window: aioice's (six failures 5 s
                # apart) would end a session by itself, as "completed", past 30 s.
                theirs = conn._query_consent_task
                if theirs is not None and not theirs.done():
                    theirs.cancel()
            try:
                await pair.protocol.request(
                    self._request(),
                    pair.remote_addr,
                    integrity_key=conn.remote_password.encode("utf8"),
                    retransmissions=0,
                )
                self.consent_at = time.monotonic()
                self.counters["consent_ok"] += 1
            except stun.TransactionError:
                self.counters["consent_lost"] += 1
            if time.monotonic() - self.consent_at > self.consent_window_s:
                logger.info("consent expired: no answer for %.1f s", time.monotonic() - self.consent_at)
                self.counters["consent_expired"] += 1
                self._consent_task = None
                self.on_expired()
                return

    async def close(self) -> None:
        tasks = [t for t in (self._consent_task, *self._probing.values()) if t is not None]
        self._consent_task = None
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for task in tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
