"""The seam between aiortc/aioice and the tunnel mux: sessions that open no socket.

aiortc 1.16 / aioice 0.13 (pinned in pyproject.toml) build one ``aioice.Connection`` per
ICE transport (``RTCIceGatherer._connection``). ``Connection.gather_candidates()`` would
bind one UDP socket per host address, each with a ``StunProtocol``; aiortc calls it from
``setLocalDescription``. :func:`bind_peer_connection` runs between
``setRemoteDescription(offer)`` and ``createAnswer()`` and *pre-gathers* instead:

- the connection's local ufrag (``Connection._local_username``) becomes a fresh route
  token, so every check the client sends carries it and the relay can route it;
- per relay VIP, a :class:`MuxProtocol` (a ``StunProtocol``) whose local candidate is a
  host candidate ``VIP:port`` (primary relay first: higher local preference) and whose
  transport (:class:`MuxTransport`) writes into the shared :class:`~transceiver.mux.TunnelMux`;
- the protocols and candidates go into ``Connection._protocols`` /
  ``Connection._local_candidates``, and ``_local_candidates_start`` / ``_end`` are set,
  so aioice's own ``gather_candidates()`` finds the work done and binds nothing.

aioice stays the controlled agent (aiortc answers) and learns the client as a
peer-reflexive candidate from the client's checks, which arrive through the relay with the
client's real address. Nothing else of aioice or aiortc is replaced: STUN transactions,
checks, nomination, consent and data all run unmodified over the mux.

Internals relied on (re-check when upgrading): ``RTCIceTransport._connection``;
``Connection._local_username``, ``_protocols``, ``_local_candidates``,
``_local_candidates_start``, ``_local_candidates_end``; ``StunProtocol.receiver``,
``local_candidate``, ``connection_made``/``connection_lost``; aiortc creating ICE
transports in ``setRemoteDescription`` and gathering in ``setLocalDescription``.
ICE restart (:func:`restart_connection`) also sets ``Connection._local_password``,
``remote_username``, ``remote_password`` and ``_remote_candidates_end`` after connect;
aioice reads the credentials afresh on every check and response.
``tests/unit/test_transceiver_iceadapter.py`` and ``test_transceiver_continuity.py`` pin
each of these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioice import Candidate, Connection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, validate_password, validate_username
from aioice.utils import random_string
from aiortc import RTCIceTransport, RTCPeerConnection

from transceiver.mux import Addr, Route, TunnelMux, Vip

COMPONENT = 1  # aiortc multiplexes RTP and RTCP on one component
MAX_LOCAL_PREF = 65535


class RequestWatcher(Protocol):
    """Told of every binding request a :class:`MuxProtocol` handed to aioice."""

    def request_seen(self, protocol: StunProtocol, data: bytes, addr: Addr) -> None: ...


class MuxTransport(asyncio.DatagramTransport):
    """What a :class:`MuxProtocol` writes to: the mux, from one VIP, for one route."""

    def __init__(self, mux: TunnelMux, route: Route, vip: Addr, protocol: StunProtocol) -> None:
        super().__init__()
        self._mux = mux
        self._route = route
        self._vip = vip
        self._protocol = protocol
        self._closing = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not self._closing:
            self._mux.send(self._route, self._vip, (addr[0], addr[1]), bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            # As a socket transport does: the protocol learns of it on the next loop turn.
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._vip if name == "sockname" else default

    def abort(self) -> None:
        self.close()


class MuxProtocol(StunProtocol):
    """aioice's per-candidate protocol, fed by the mux instead of a socket.

    The mux has classified the packet already (RFC 7983); only the STUN range goes
    through aioice's STUN parser, DTLS/RTP go straight to the connection's data queue
    (aioice would otherwise try to parse each as STUN and catch the ValueError).
    """

    watcher: RequestWatcher | None = None

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if isinstance(data, bytes) and data and data[0] > 3:
            self.receiver.data_received(data, COMPONENT)
            return
        super().datagram_received(data, addr)
        # A binding request (type 0x0001, RFC 8489 §5), answered by aioice just now: the
        # watcher (transceiver.continuity) decides whether it is worth a latching check.
        if self.watcher is not None and isinstance(data, bytes) and data[:2] == b"\x00\x01":
            self.watcher.request_seen(self, data, (addr[0], addr[1]))


def relay_candidate(vip: Vip, rank: int) -> Candidate:
    """A host candidate on the VIP; ``rank`` 0 is the primary relay (highest priority)."""
    return Candidate(
        foundation=candidate_foundation("host", "udp", vip.address),
        component=COMPONENT,
        transport="udp",
        priority=candidate_priority(COMPONENT, "host", MAX_LOCAL_PREF - rank),
        host=vip.address,
        port=vip.port,
        type="host",
    )


def bind_connection(connection: Connection, ufrag: str, mux: TunnelMux, vips: Sequence[Vip]) -> Route:
    """Give ``connection`` the local ufrag ``ufrag`` and one mux-backed candidate per VIP."""
    if connection._local_candidates_start:
        raise RuntimeError("the ICE connection has gathered already: bind before createAnswer()")
    validate_username(ufrag)
    route = mux.open_route(ufrag, connection.local_password)
    connection._local_username = ufrag
    for rank, vip in enumerate(vips):
        protocol = MuxProtocol(connection)
        protocol.local_candidate = relay_candidate(vip, rank)
        protocol.connection_made(MuxTransport(mux, route, vip.addr, protocol))
        route.receivers[vip.addr] = protocol
        connection._protocols.append(protocol)
        connection._local_candidates.append(protocol.local_candidate)
    connection._local_candidates_start = True
    connection._local_candidates_end = True
    return route


def ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    """The distinct ICE transports of ``pc`` (one with BUNDLE), in m-line order."""
    found: list[RTCIceTransport] = []
    candidates = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        candidates.append(pc.sctp.transport.transport)
    for transport in candidates:
        if transport not in found:
            found.append(transport)
    return found


@dataclass
class MuxBinding:
    """The routes of one peer connection; :meth:`close` removes them from the mux."""

    mux: TunnelMux
    routes: list[Route]
    connections: list[Connection] = field(default_factory=list)  # routes[i] binds connections[i]

    @property
    def ufrags(self) -> list[str]:
        return [r.ufrag.decode("ascii") for r in self.routes]

    def close(self) -> None:
        for route in self.routes:
            self.mux.close_route(route)


def bind_peer_connection(
    pc: RTCPeerConnection, mux: TunnelMux, vips: Sequence[Vip], mint: Callable[[], str]
) -> MuxBinding:
    """Bind every ICE transport of ``pc`` to ``mux``, each with a fresh ufrag from ``mint``.

    Call after ``setRemoteDescription(offer)`` (which creates the transports) and before
    ``createAnswer()`` (which gathers). The answer then carries exactly ``vips``.
    """
    transports = ice_transports(pc)
    if not transports:
        raise RuntimeError("the peer connection has no ICE transport: apply the offer first")
    routes: list[Route] = []
    try:
        for transport in transports:
            routes.append(bind_connection(transport._connection, mint(), mux, vips))
    except BaseException:
        for route in routes:
            mux.close_route(route)
        raise
    return MuxBinding(mux, routes, [t._connection for t in transports])


def restart_connection(
    connection: Connection, route: Route, mux: TunnelMux, ufrag: str, remote_ufrag: str, remote_pwd: str
) -> str:
    """ICE restart (RFC 8445 §9) on a connected aioice connection, which has none of its own.

    The connection takes the fresh route token ``ufrag`` and a fresh password (returned)
    as its local credentials and the client's new ones as remote; the mux routes the new
    ufrag to the same route (same receivers, same flows). Everything above ICE (DTLS,
    SRTP, SCTP data channels) is untouched, and media keeps flowing on the nominated pair
    while the client's checks under the new credentials run: aioice answers them, learns
    and nominates a new address if the client has one (RFC 8445 §7.3.1.4, §7.3.1.5), and
    :mod:`transceiver.continuity` latches onto it.
    """
    validate_username(ufrag)
    validate_username(remote_ufrag)
    validate_password(remote_pwd)
    password = random_string(22)  # RFC 8445 §5.3: at least 128 bits (22 of 62 characters: 131)
    mux.rekey(route, ufrag, password)
    connection._local_username = ufrag
    connection._local_password = password
    connection.remote_username = remote_ufrag
    connection.remote_password = remote_pwd
    connection._remote_candidates_end = False  # a new ICE session: candidates may trickle again
    return password
