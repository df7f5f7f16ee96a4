"""One UDP socket for every session: Geneve in, Geneve out (docs/ARCHITECTURE.md §5, §6).

Inbound, per datagram on the tunnel port::

    outer source in ``relay_sources`` (when the list is set)       else "not_relay"
    -> Geneve decap (icegate.geneve) -> inner IP/UDP (icegate.inet.parse_udp)
    -> destination must be a configured VIP                       else "not_vip"
    -> STUN carrying USERNAME: the route whose local ufrag is the part before ':'
                                                                   else "unknown_ufrag"
       whose MESSAGE-INTEGRITY verifies with that route's ICE password  else "bad_integrity"
       and whose (client, VIP) no other live session owns          else "address_owned"
       (learns the flow (client, VIP) -> route, relay)
    -> anything else: the route of flow (client, VIP)             else "closed" when that flow's
       session ended within ``owner_idle_s`` (the client's last packets crossing its DELETE, a
       client still sending after a reap), "no_flow" when it is not one we knew
       (with relay_sources set, its returns follow this relay: "relay_moved")
    -> that route's receiver for the VIP                           "delivered"

The inner UDP checksum is not verified: on veth the kernel leaves it to offload, so a
packet the relay tunnelled may carry a partial one; DTLS and SRTP authenticate anyway.

Outbound, :meth:`TunnelMux.send`: the inner packet VIP:port -> client with a complete
UDP checksum (``icegate.inet.build_udp``), in Geneve with VNI = this transceiver's index,
to the relay the flow's packets came from (outer source address, the relay's configured
tunnel port). The relay forwards returns only for flows that exist (DATAPATH.md §3), so a
packet for a client not heard from yet is *held* in a small per-route queue and flushed
the moment that client's first packet arrives, or dropped after ``hold_s``. aioice sends
checks to the candidates in the client's offer before the client's own first check has
reached us; holding them saves one STUN retransmission timeout on set-up.

A *route* is one ICE agent's local ufrag and its receivers, one per VIP
(:mod:`transceiver.iceadapter` makes them). The mux reads no more of STUN than USERNAME
and MESSAGE-INTEGRITY (``icegate.stun``): only an authentic check may move a flow (and so
where its returns go); aioice does the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

from icegate import geneve, inet
from icegate.errors import WireError
from icegate.rfc7983 import PacketKind, classify
from icegate.stun import integrity_ok, local_ufrag

logger = logging.getLogger(__name__)

Addr = tuple[str, int]
FlowKey = tuple[Addr, Addr]  # (client, VIP)
SOCKET_BUFFER = 4 << 20
# Flows of ended sessions remembered (with when they ended), so that their clients' late
# packets count as "closed" rather than "no_flow"; the oldest are forgotten first.
CLOSED_MEMORY = 4096


class Receiver(Protocol):
    """Where the mux hands an inner datagram: aioice's ``StunProtocol`` interface."""

    def datagram_received(self, data: bytes, addr: Addr) -> None: ...


@dataclass(frozen=True, slots=True)
class Vip:
    """A relay VIP and where that relay's Geneve endpoint listens for returns."""

    address: str
    port: int
    tunnel_port: int

    @property
    def addr(self) -> Addr:
        return (self.address, self.port)


@dataclass(eq=False)
class Route:
    """One ICE agent: its local ufrag, one receiver per VIP, the flows learned, held packets."""

    ufrag: bytes
    password: bytes | None = None  # the local ICE password: checks must carry its MESSAGE-INTEGRITY
    receivers: dict[Addr, Receiver] = field(default_factory=dict)
    flows: set[FlowKey] = field(default_factory=set)
    held: deque[tuple[float, FlowKey, bytes]] = field(default_factory=deque)
    closed: bool = False


@dataclass(slots=True)
class _Flow:
    route: Route
    relay: Addr  # the relay's Geneve endpoint for returns
    last_seen: float = 0.0  # monotonic time of the last packet delivered on this flow


class TunnelMux(asyncio.DatagramProtocol):
    """The Geneve socket shared by every session of one transceiver."""

    def __init__(
        self,
        vni: int,
        vips: Iterable[Vip],
        *,
        hold_packets: int = 16,
        hold_s: float = 2.0,
        relay_sources: Iterable[str] = (),
        owner_idle_s: float = 30.0,
    ) -> None:
        self.vni = vni
        # docs/SECURITY.md: an address a live session received from within this window is
        # not handed to another session (RFC 7675's 30 s consent window by default).
        self.owner_idle_s = owner_idle_s
        self.vips = {v.addr: v for v in vips}
        # Networks relays send Geneve from; empty: any sender (the tunnel network is trusted).
        self.relay_sources = tuple(ipaddress.ip_network(n, strict=False) for n in relay_sources)
        self._allowed: dict[str, bool] = {}
        self.hold_packets = hold_packets
        self.hold_s = hold_s
        self.counters: Counter[tuple[str, str]] = Counter()  # (direction, result) -> packets
        self._routes: dict[bytes, Route] = {}
        self._flows: dict[FlowKey, _Flow] = {}
        self._closed: OrderedDict[FlowKey, float] = OrderedDict()  # flow of an ended session -> when
        self._holding: set[Route] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._transport: asyncio.DatagramTransport | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def bind(self, host: str, port: int) -> Addr:
        """Bind the tunnel socket; return the bound address (``port`` 0 picks one)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        bound = sock.getsockname()
        return (bound[0], bound[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def routes(self) -> int:
        return len(self._routes)

    @property
    def flows(self) -> int:
        return len(self._flows)

    # -- routes ----------------------------------------------------------------------

    def open_route(self, ufrag: str, password: str | None = None) -> Route:
        """Route checks for ``ufrag`` (and the flows they name) to a new route. With
        ``password``, a check must verify with it before it moves a flow."""
        key = ufrag.encode("ascii")
        if key in self._routes:
            raise ValueError(f"ufrag {ufrag} is already routed")
        route = Route(key, None if password is None else password.encode())
        self._routes[key] = route
        return route

    def close_route(self, route: Route) -> None:
        route.closed = True
        if self._routes.get(route.ufrag) is route:
            del self._routes[route.ufrag]
        now = time.monotonic()
        for key in route.flows:
            flow = self._flows.get(key)
            if flow is not None and flow.route is route:
                del self._flows[key]
                self._closed[key] = now
                self._closed.move_to_end(key)
        while len(self._closed) > CLOSED_MEMORY:
            self._closed.popitem(last=False)
        route.flows.clear()
        route.held.clear()
        self._holding.discard(route)

    def rekey(self, route: Route, ufrag: str, password: str) -> None:
        """ICE restart (docs/CONTINUITY.md): ``route`` answers to a new ufrag and password from
        now on; its flows and receivers stay, so media flows on while the new checks run.
        Checks under the old ufrag are no longer routed (aioice would refuse them anyway)."""
        key = ufrag.encode("ascii")
        if key in self._routes:
            raise ValueError(f"ufrag {ufrag} is already routed")
        if self._routes.get(route.ufrag) is route:
            del self._routes[route.ufrag]
        route.ufrag = key
        route.password = password.encode()
        self._routes[key] = route

    def forget(self, route: Route, client: Addr, vip: Addr) -> bool:
        """Drop the flow (client, VIP) of ``route`` (the client latched elsewhere): later
        packets from that address count as ``no_flow`` until an authentic check names it again."""
        key = (client, vip)
        flow = self._flows.get(key)
        if flow is None or flow.route is not route:
            return False
        del self._flows[key]
        route.flows.discard(key)
        return True

    # -- inbound ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.relay_sources and not self._from_relay(str(addr[0])):
            self.counters["in", "not_relay"] += 1
            return
        try:
            _, inner = geneve.decapsulate(data)
            packet = inet.parse_udp(inner)
        except WireError:
            self.counters["in", "malformed"] += 1
            return
        vip = (packet.dst, packet.dport)
        if vip not in self.vips:
            self.counters["in", "not_vip"] += 1
            return
        client = (packet.src, packet.sport)
        payload = packet.payload
        key = (client, vip)
        username = local_ufrag(payload) if payload and classify(payload[0]) is PacketKind.STUN else None
        if username is not None:
            route = self._routes.get(username)
            if route is None:
                self.counters["in", "unknown_ufrag"] += 1
                return
            if route.password is not None and not integrity_ok(payload, route.password):
                self.counters["in", "bad_integrity"] += 1  # aioice would discard it too
                return
            if self._owned_by_another(key, route):
                self.counters["in", "address_owned"] += 1  # aioice never sees it: no answer
                return
            self._learn(key, route, (str(addr[0]), self.vips[vip].tunnel_port))
        else:
            flow = self._flows.get(key)
            if flow is None:
                ended = self._closed.get(key)
                recent = ended is not None and time.monotonic() - ended < self.owner_idle_s
                self.counters["in", "closed" if recent else "no_flow"] += 1
                return
            route = flow.route
            if self.relay_sources:
                self._follow(flow, (str(addr[0]), self.vips[vip].tunnel_port))
        flow = self._flows.get(key)
        if flow is not None and flow.route is route:
            flow.last_seen = time.monotonic()
        receiver = route.receivers.get(vip)
        if receiver is None:
            self.counters["in", "not_vip"] += 1
            return
        self.counters["in", "delivered"] += 1
        receiver.datagram_received(payload, client)

    def _from_relay(self, host: str) -> bool:
        allowed = self._allowed.get(host)
        if allowed is None:
            try:
                address = ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                address = None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            allowed = address is not None and any(address in net for net in self.relay_sources)
            if len(self._allowed) < 4096:  # a few relays in practice; bounded against spoofed floods
                self._allowed[host] = allowed
        return allowed

    def _owned_by_another(self, key: FlowKey, route: Route) -> bool:
        """Issue 12, findings 2 and 7: an address owned by a live session is not handed to
        another session. A holder of one session can sign checks for its own ufrag from
        any spoofed address; were the mux to move (client, VIP) to that session, it would
        answer, the relay would confirm, and the victim's DTLS would go to the attacker's
        session. The owner is live while it received within ``owner_idle_s``; a closed
        route owns nothing (``close_route`` forgets its flows)."""
        flow = self._flows.get(key)
        if flow is None or flow.route is route:
            return False
        return time.monotonic() - flow.last_seen < self.owner_idle_s

    def _learn(self, key: FlowKey, route: Route, relay: Addr) -> None:
        """Bind (client, VIP) to the route an authentic check named, and its returns to the
        relay it came through (the relay verified the token; the mux, the check's integrity:
        without the session's ICE password nobody can move its flow or redirect its returns)."""
        flow = self._flows.get(key)
        if flow is not None and flow.route is route:
            flow.relay = relay  # the client may now come through another relay behind the VIP
            return
        if flow is not None:  # the address moved to another session (new session, same port)
            flow.route.flows.discard(key)
        self._closed.pop(key, None)
        self._flows[key] = _Flow(route, relay)
        route.flows.add(key)
        if route.held:
            self._flush(route, key)

    def _follow(self, flow: _Flow, relay: Addr) -> None:
        """Returns follow the fleet node that carries the client now (docs/SCALING.md): after a
        node is lost or added, ECMP hashes the client to another relay, whose packets are the
        first sign of it; a consent check (seconds away) would move it too, but the audio in
        between would go to a dead node. Only with ``relay_sources``: the sender is a relay
        (checked above), and a relay forwards only packets of flows it verified."""
        if flow.relay != relay:
            flow.relay = relay
            self.counters["in", "relay_moved"] += 1

    # -- outbound --------------------------------------------------------------------

    def send(self, route: Route, vip: Addr, client: Addr, data: bytes) -> None:
        """Send ``data`` from ``vip`` to ``client`` for ``route``, or hold it until the client is heard."""
        if route.closed:
            self.counters["out", "closed"] += 1
            return
        key = (client, vip)
        flow = self._flows.get(key)
        if flow is None or flow.route is not route:
            self._hold(route, key, data)
            return
        self._emit(flow.relay, vip, client, data)

    def _emit(self, relay: Addr, vip: Addr, client: Addr, data: bytes) -> None:
        if self._transport is None:
            self.counters["out", "closed"] += 1
            return
        inner = inet.build_udp(vip[0], vip[1], client[0], client[1], data)
        self._transport.sendto(geneve.encapsulate(inner, self.vni), relay)
        self.counters["out", "sent"] += 1

    def _hold(self, route: Route, key: FlowKey, data: bytes) -> None:
        if len(route.held) >= self.hold_packets:
            route.held.popleft()
            self.counters["out", "hold_overflow"] += 1
        route.held.append((time.monotonic() + self.hold_s, key, data))
        self.counters["out", "held"] += 1
        self._holding.add(route)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.hold_s, self._expire)

    def _flush(self, route: Route, key: FlowKey) -> None:
        flow = self._flows[key]
        now = time.monotonic()
        keep: deque[tuple[float, FlowKey, bytes]] = deque()
        for deadline, held_key, data in route.held:
            if deadline < now:
                self.counters["out", "hold_expired"] += 1
            elif held_key == key:
                self.counters["out", "flushed"] += 1
                self._emit(flow.relay, key[1], key[0], data)
            else:
                keep.append((deadline, held_key, data))
        route.held = keep
        if not keep:
            self._holding.discard(route)

    def _expire(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for route in list(self._holding):
            while route.held and route.held[0][0] < now:
                route.held.popleft()
                self.counters["out", "hold_expired"] += 1
            if not route.held:
                self._holding.discard(route)
        if self._holding:
            earliest = min(r.held[0][0] for r in self._holding)
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(max(earliest - now, 0.01), self._expire)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (relay unreachable): counted, the session's own timers decide.
        self.counters["out", "error"] += 1
        logger.debug("tunnel socket error: %s", exc)
