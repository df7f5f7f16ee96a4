"""The relay datapath in Python: the userspace twin of ``bpf/relay.c``.

``docs/DATAPATH.md`` is the specification, rule by rule; the section numbers below are
its sections. Pure logic, no I/O: state lives behind a :class:`~controlplane.datapath.store.MapStore`,
time comes from ``clock`` (nanoseconds, CLOCK_MONOTONIC like ``bpf_ktime_get_ns``), the
next hop from a ``next_hop`` function (``bpf_fib_lookup`` in the kernel).

Two ways in:

- :meth:`Datapath.process_frame`: a whole Ethernet frame, every rule of §1-§6. The
  shared packet vectors (``tests/data/packets.json``) run through it and through the
  XDP program, and both must give the same counter, action and output bytes.
- :meth:`Datapath.from_client` / :meth:`Datapath.from_backend`: socket mode for
  ``twin.py``. The twin receives datagrams, not frames, so §1 (frame parsing) is done
  by the kernel and §6 (next hop) by its ``sendto``. ``from_client`` synthesises the
  client's IP packet (§7) to tunnel it; ``from_backend`` takes a Geneve UDP payload.

Every call increments exactly one entry of :attr:`Datapath.counters` (``[packets,
bytes]`` indexed by :class:`~controlplane.datapath.layout.Stat`): bytes are the frame length, or
in socket mode the IP length of the received datagram (synthesised IP + UDP headers).

Choices where the specification is silent (the C program must agree):

- the IPv6 version nibble is checked like the IPv4 one (``DROP_MALFORMED_IP``);
- "fewer than 8 bytes after the IP header" (§1 r5) counts the IP payload, not the frame
  (Ethernet padding is not part of the packet);
- §2.1 r1 decodes the token (alphabet, version) before comparing tags;
- trailing bytes after an inner packet's IP total length are not forwarded (§1);
- rate buckets (§5) are charged only when the new flow is forwarded (§6: a packet that
  is not forwarded leaves no trace but its counter); source is checked before global;
- ``REROUTED`` is emitted for confirmed flows only (pending flows emit nothing, §8); a
  confirmed return (3.9) also updates ``last_seen_ns`` / ``packets_out`` / ``bytes_out``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controlplane.datapath.layout import BackendState, FlowEventKind, Stat, Verdict
from controlplane.datapath.nexthop import HOP_OK, Fib, Hop, NextHop, same_interface
from controlplane.datapath.store import Backend, Flow, FlowEvent, FlowKeyT, MapStore, MemoryStore
from controlplane.datapath.wire import (
    ETH_HLEN,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPV6_EXTENSIONS,
    OUTER_V4,
    OUTER_V6,
    V4_MAPPED,
    build_udp,
    encapsulate,
    entropy_port,
    geneve_header,
    is_webrtc,
    l3_dst_proto,
    parse_ip,
)
from icegate import stun, token
from icegate.errors import TokenError
from icegate.geneve import PROTO_IPV4, PROTO_IPV6
from icegate.inet import addr16, text_address

MAX_RATE_SOURCES = 65536  # rate_sources LRU bound (shared.h MAX_RATE_SOURCES)
_ADDR_CACHE = 65536  # host text <-> addr16 conversions remembered in socket mode


class Action(StrEnum):
    """What the XDP program returns; the ``action`` of a shared vector."""

    TX = "tx"
    REDIRECT = "redirect"
    PASS = "pass"
    DROP = "drop"


@dataclass(slots=True, eq=False, repr=False)
class FrameResult:
    """The outcome of one frame. ``output`` is the packet from the IP header on."""

    stat: Stat
    action: Action
    egress: str | None = None
    eth_src: bytes | None = None
    eth_dst: bytes | None = None
    output: bytes | None = None

    @property
    def frame(self) -> bytes | None:
        """The complete output frame (untagged Ethernet), or None if nothing is sent."""
        if self.output is None or self.eth_dst is None or self.eth_src is None:
            return None
        etype = b"\x08\x00" if self.output[0] >> 4 == 4 else b"\x86\xdd"
        return self.eth_dst + self.eth_src + etype + self.output

    def __repr__(self) -> str:
        return f"FrameResult({self.stat.name}, {self.action}, egress={self.egress})"


@dataclass(slots=True, eq=False, repr=False)
class SocketResult:
    """The outcome of one datagram in socket mode.

    Forwarded: send ``data`` to ``addr``: from :meth:`Datapath.from_client` the Geneve
    UDP payload to the backend's tunnel (host, port), sent from the tunnel socket; from
    :meth:`Datapath.from_backend` the inner UDP payload to the client (host, port), sent
    from the socket of ``vip`` (addr16, port). ``key`` is the flow key when one was
    determined (also for SLOW verdicts, which is what the slow-path hook recovers).
    """

    stat: Stat
    data: bytes | None = None
    addr: tuple[str, int] | None = None
    vip: tuple[bytes, int] | None = None
    key: FlowKeyT | None = None

    @property
    def forwarded(self) -> bool:
        return self.data is not None

    def __repr__(self) -> str:
        return f"SocketResult({self.stat.name}, addr={self.addr})"


class _Wire:
    """What the datapath needs of a backend per packet, computed once per Backend object."""

    __slots__ = ("addr16", "backend", "family", "geneve4", "geneve6", "hostport", "packed")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.addr16 = addr16(backend.address)
        self.family = 4 if self.addr16[:12] == V4_MAPPED else 6
        self.packed = self.addr16[12:] if self.family == 4 else self.addr16
        self.hostport = (backend.address, backend.port)
        self.geneve4 = geneve_header(PROTO_IPV4, backend.index)
        self.geneve6 = geneve_header(PROTO_IPV6, backend.index)


class _RouteKeys(Mapping[int, bytes]):
    """``route_keys`` as the Mapping ``icegate.token.verify`` wants, one key read at a time."""

    def __init__(self, store: MapStore) -> None:
        self._store = store

    def __getitem__(self, key_id: int) -> bytes:
        key = self._store.route_key(key_id)
        if key is None:
            raise KeyError(key_id)
        return key

    def get(self, key_id: int, default: Any = None) -> Any:
        key = self._store.route_key(key_id)
        return default if key is None else key

    def __iter__(self) -> Iterator[int]:
        return iter(self._store.route_keys())

    def __len__(self) -> int:
        return len(self._store.route_keys())


_FWD_ACTION = {Verdict.PASS: Action.PASS, Verdict.SLOW: Action.PASS, Verdict.DROP: Action.DROP}
_BACKEND_REFUSED = {
    BackendState.DRAINING: Stat.DROP_BACKEND_DRAINING,
    BackendState.DEAD: Stat.DROP_BACKEND_DEAD,
}
_SLOW = frozenset({Stat.SLOW_NO_FLOW, Stat.SLOW_RETURN_NO_FLOW, Stat.SLOW_NO_NEIGH})
_HOP_FAILED = {Fib.FRAG_NEEDED: Stat.DROP_FRAG_NEEDED, Fib.UNREACHABLE: Stat.DROP_FIB}


class Datapath:
    """§1-§6 over a :class:`MapStore`; see the module docstring.

    ``next_hop`` is used by :meth:`process_frame` only (socket mode always has a next
    hop); the default forwards out of the ingress interface with no MAC addresses.
    ``on_event`` receives ``CREATED`` and ``REROUTED`` (§8). ``live_values``: the
    store returns its own Flow objects, so updates need no write-back (True for
    :class:`MemoryStore`, detected when None).
    """

    def __init__(
        self,
        store: MapStore,
        next_hop: NextHop = same_interface,
        clock: Callable[[], int] = time.monotonic_ns,
        on_event: Callable[[FlowEvent], None] | None = None,
        *,
        live_values: bool | None = None,
        max_rate_sources: int = MAX_RATE_SOURCES,
        roles: Mapping[str, str] | None = None,
        charge_slow: bool = True,
    ) -> None:
        self.store = store
        self.next_hop = next_hop
        self.clock = clock
        self.on_event = on_event
        self.live = type(store) is MemoryStore if live_values is None else live_values
        self.counters: list[list[int]] = [[0, 0] for _ in Stat]
        self._keys = _RouteKeys(store)
        self._wires: dict[tuple[int, int], _Wire] = {}
        self._sources: OrderedDict[bytes, int] = OrderedDict()  # rate_sources: addr16 -> TAT
        self._tags: OrderedDict[tuple[int, int, int], int] = (
            OrderedDict()
        )  # rate_tags: (cluster, index, tag) -> TAT
        self._slow_sources: OrderedDict[bytes, int] = OrderedDict()  # rate_slow_sources
        self._max_sources = max_rate_sources
        # §1 r8 for frames: interface name -> "public" | "private" (None: no roles). Socket
        # mode has no interfaces: the kernel's routing stands in (docs/SECURITY.md).
        self.roles = dict(roles) if roles else None
        # In XDP mode the program already charged every SLOW verdict (§5); the slow path
        # must not charge it again against limits scaled for per-CPU buckets.
        self.charge_slow = charge_slow
        self._global_tat = 0
        self._slow_tat = 0
        self._a16: dict[str, bytes] = {}
        self._text: dict[bytes, str] = {}
        self._tunnel_obj: object = None
        self._tunnel: tuple[bytes | None, bytes | None, int] = (None, None, 0)
        self._plain = {s: FrameResult(s, _FWD_ACTION.get(s.verdict, Action.DROP)) for s in Stat}
        self._socket_plain = {s: SocketResult(s) for s in Stat}

    # ---- counters ----

    def counter(self, stat: Stat) -> tuple[int, int]:
        packets, nbytes = self.counters[stat]
        return packets, nbytes

    def reset_counters(self) -> None:
        for entry in self.counters:
            entry[0] = entry[1] = 0

    def _count(self, stat: Stat, length: int) -> None:
        entry = self.counters[stat]
        entry[0] += 1
        entry[1] += length

    # ---- frames (§1) ----

    def process_frame(self, frame: bytes, ingress: str) -> FrameResult:
        """Every rule of DATAPATH.md on one Ethernet frame received on ``ingress``."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        n = len(frame)
        stat: Stat
        if n < ETH_HLEN:
            stat = Stat.PASS_NOT_IP
        else:
            o = ETH_HLEN
            etype = frame[12] << 8 | frame[13]
            if etype == ETH_P_8021Q:  # one 802.1Q tag is skipped
                o = ETH_HLEN + 4
                etype = frame[16] << 8 | frame[17] if n >= o else 0
            if etype != ETH_P_IP and etype != ETH_P_IPV6:
                stat = Stat.PASS_NOT_IP
            else:
                stat, result = self._frame_ip(frame, o, etype, ingress)
                if result is not None:
                    self._count(stat, n)
                    return result
        self._count(stat, n)
        return self._plain[stat]

    def _frame_ip(self, frame: bytes, o: int, etype: int, ingress: str) -> tuple[Stat, FrameResult | None]:
        parsed = parse_ip(frame, o, len(frame), etype)
        if isinstance(parsed, Stat):
            if parsed in (Stat.PASS_FRAGMENT, Stat.PASS_NOT_UDP) and self._fragment_to_us(frame, o, etype):
                return Stat.DROP_FRAGMENT_TO_VIP, None  # §1 r3
            return parsed, None
        end, u, src, dst, sport, dport, udp_len = parsed
        vip_index = self.store.vip_index(dst, dport)
        if vip_index is None and not self._is_tunnel(dst, dport):
            return Stat.PASS_NOT_RELAY, None
        if udp_len < 8 or u + udp_len != end:
            return Stat.DROP_MALFORMED_UDP, None
        if self.roles is not None and self.roles.get(ingress) != (
            "public" if vip_index is not None else "private"
        ):
            return Stat.DROP_WRONG_IFACE, None  # §1 r8
        if vip_index is not None:
            packet_len = end - o
            stat, wire, hop = self._client(
                src, sport, vip_index, frame[u + 8 : end], packet_len, ingress, dst=dst
            )
            if wire is None:
                return stat, None
            inner = frame[o:end]
            return stat, self._forward(stat, hop, ingress, self._encapsulate(wire, inner, src, sport, dport))
        stat, inner_at, hop, _ = self._return(src, frame, u + 8, end, ingress, sport=sport)
        if inner_at is None:
            return stat, None
        return stat, self._forward(stat, hop, ingress, frame[inner_at[0] : inner_at[1]])

    def _forward(self, stat: Stat, hop: Hop, ingress: str, output: bytes) -> FrameResult:
        action = Action.TX if hop.egress == ingress else Action.REDIRECT
        return FrameResult(stat, action, hop.egress, hop.src_mac, hop.dst_mac, output)

    def _fragment_to_us(self, frame: bytes, o: int, etype: int) -> bool:
        """§1 r3: an IPv4 fragment, or an IPv6 fragment / extension header, to a VIP's
        address (any port) or the tunnel address."""
        found = l3_dst_proto(frame, o, etype)
        if found is None:
            return False
        dst, proto, fragment = found
        if not fragment and not (etype == ETH_P_IPV6 and proto in IPV6_EXTENSIONS):
            return False
        t4, t6, _ = self._tunnel_addrs()
        return self.store.is_vip_address(dst) or dst == (t4 if etype == ETH_P_IP else t6)

    def _role_ok(self, egress: str | None, role: str) -> bool:
        """§2.2 / §3 r8: the next hop leaves by an interface of ``role`` (no roles: yes)."""
        return self.roles is None or egress is None or self.roles.get(egress) == role

    def _is_tunnel(self, dst16: bytes, port: int) -> bool:
        t4, t6, tport = self._tunnel_addrs()
        return port == tport and dst16 in (t4, t6)

    def _tunnel_addrs(self) -> tuple[bytes | None, bytes | None, int]:
        tunnel = self.store.tunnel()
        # Stores over kernel maps return a new (equal) object on every call.
        if tunnel is not self._tunnel_obj and tunnel != self._tunnel_obj:
            self._tunnel = (
                addr16(tunnel.address4) if tunnel.address4 else None,
                addr16(tunnel.address6) if tunnel.address6 else None,
                tunnel.port,
            )
        self._tunnel_obj = tunnel
        return self._tunnel

    def _encapsulate(self, wire: _Wire, inner: bytes, client16: bytes, cport: int, vport: int) -> bytes:
        """§2.2: outer IP | UDP | Geneve | the client's packet byte for byte."""
        t4, t6, _ = self._tunnel_addrs()
        if wire.family == 4:
            src = t4[12:] if t4 is not None else bytes(4)
        else:
            src = t6 if t6 is not None else bytes(16)
        geneve = wire.geneve4 if inner[0] >> 4 == 4 else wire.geneve6
        sport = entropy_port(client16, cport, vport)
        return encapsulate(src, wire.packed, sport, wire.backend.port, geneve, inner)

    # ---- sockets ----

    def from_client(
        self,
        client_host: str,
        client_port: int,
        vip_host: str,
        vip_port: int,
        payload: bytes,
        *,
        retry: bool = False,
    ) -> SocketResult:
        """A datagram a client sent to ``vip_host:vip_port`` (§2, next hop always ok).

        ``retry=True`` re-processes a packet the slow-path hook already had: it is not
        counted again and, still without a flow, not handed to the slow path again.
        """
        client16 = self._addr16(client_host)
        vip16 = self._addr16(vip_host)
        length = (20 if vip16[:12] == V4_MAPPED else 40) + 8 + len(payload)
        vip_index = self.store.vip_index(vip16, vip_port)
        if vip_index is None or not client16:
            stat: Stat = Stat.PASS_NOT_RELAY
            if not retry:
                self._count(stat, length)
            return self._socket_plain[stat]
        stat, wire, _ = self._client(
            client16, client_port, vip_index, payload, length, None, retry, dst=vip16
        )
        if not retry:
            self._count(stat, length)
        key = (client16, client_port, vip_index)
        if wire is None:
            return SocketResult(stat, key=key) if stat in _SLOW else self._socket_plain[stat]
        inner = build_udp(client16, client_port, vip16, vip_port, payload)
        geneve = wire.geneve4 if inner[0] >> 4 == 4 else wire.geneve6
        return SocketResult(stat, geneve + inner, wire.hostport, (vip16, vip_port), key)

    def from_backend(
        self, outer_src_host: str, payload: bytes, *, retry: bool = False, outer_src_port: int | None = None
    ) -> SocketResult:
        """A Geneve UDP payload the tunnel socket received from ``outer_src_host`` (§3),
        port ``outer_src_port`` (checked against the backend's when given)."""
        if type(payload) is not bytes:
            payload = bytes(payload)
        src16 = self._addr16(outer_src_host)
        length = (28 if src16[:12] == V4_MAPPED else 48) + len(payload)
        stat, inner_at, _, key = self._return(
            src16, payload, 0, len(payload), None, retry, sport=outer_src_port
        )
        if not retry:
            self._count(stat, length)
        if inner_at is None:
            return SocketResult(stat, key=key) if stat in _SLOW else self._socket_plain[stat]
        _, end, u, client16, cport, vip16, vport = inner_at
        client = self._text.get(client16)
        if client is None:
            client = self._remember_text(client16)
        return SocketResult(stat, payload[u + 8 : end], (client, cport), (vip16, vport), key)

    def _addr16(self, host: str) -> bytes:
        """addr16 of a socket address, cached; b"" for text that is not an address."""
        found = self._a16.get(host)
        if found is None:
            try:
                found = addr16(host.partition("%")[0])
            except (OSError, ValueError):
                found = b""
            if len(self._a16) >= _ADDR_CACHE:
                self._a16.clear()
            self._a16[host] = found
        return found

    def _remember_text(self, raw16: bytes) -> str:
        text = text_address(raw16[12:] if raw16[:12] == V4_MAPPED else raw16)
        if len(self._text) >= _ADDR_CACHE:
            self._text.clear()
        self._text[raw16] = text
        return text

    # ---- §2 client -> transceiver ----

    def _martian(self, src16: bytes, dst16: bytes | None) -> bool:
        """§2 r0: a source no client can have (RFC 6890), or our own address."""
        if dst16 is not None and dst16[:12] != V4_MAPPED and src16[:12] == V4_MAPPED:
            return True  # IPv4-mapped inside an IPv6 header: it would alias an IPv4 flow key
        if src16[:12] == V4_MAPPED:
            if src16[12] == 0 or src16[12] == 127 or src16[12] >= 224:
                return True
        elif src16[0] == 0xFF or (src16[:10] == bytes(10) and src16[10:12] in (b"\0\0", b"\xff\xff")):
            return True  # multicast, ::/96, IPv4-mapped inside IPv6 (it would alias an IPv4 flow key)
        t4, t6, _ = self._tunnel_addrs()
        return src16 in (dst16, t4, t6)  # a land attack, or our tunnel address

    def _pending(self, key: FlowKeyT, now: int) -> Flow | None:
        """§2 r5: the pending entry, unless older than ``pending_timeout_ns``."""
        flow = self.store.get_pending(key)
        if flow is None:
            return None
        timeout = self.store.rate_config().pending_timeout_ns
        return None if timeout and now - flow.created_ns > timeout else flow

    def _client(
        self,
        client16: bytes,
        cport: int,
        vip_index: int,
        payload: bytes,
        packet_len: int,
        ingress: str | None,
        retry: bool = False,
        *,
        dst: bytes | None = None,
    ) -> tuple[Stat, _Wire | None, Hop]:
        """§2 r0-r11 and §2.1. Returns (stat, backend wire if forwarded, next hop)."""
        # §2 r0 for frames; in socket mode the kernel's own martian checks (RFC 1812
        # section 5.3.7, fib_validate_source) ran before the socket saw the datagram.
        if ingress is not None and self._martian(client16, dst):
            return Stat.DROP_MARTIAN, None, HOP_OK
        if not payload or not is_webrtc(payload[0]):
            return Stat.DROP_NOT_WEBRTC, None, HOP_OK
        ufrag = None
        if payload[0] <= 3:
            try:
                ufrag = stun.first_check_ufrag(payload)  # rules 2-3, flow or not
            except stun.StunReject as exc:
                return Stat.drop(exc.reason), None, HOP_OK
        key = (client16, cport, vip_index)
        store = self.store
        now = self.clock()
        flow = store.get_flow(key)
        confirmed = flow is not None
        # A confirmed flow's DTLS and RTP need no pending entry (only a check can be part of a move).
        pend = self._pending(key, now) if flow is None or ufrag is not None else None
        if flow is None:
            flow = pend
        if flow is None:
            if ufrag is None:
                return (Stat.SLOW_NO_FLOW if retry else self._slow(Stat.SLOW_NO_FLOW, client16)), None, HOP_OK
            return self._new_flow(key, ufrag, packet_len, ingress, now)

        stat = Stat.FWD_FLOW if confirmed else Stat.FWD_PENDING
        routed: token.RouteToken | None = None
        moving = False
        if ufrag is not None:  # §2.1 r1: a changed tag is an ICE restart
            try:
                tag = token.decode(ufrag).tag
                if confirmed and pend is not None and tag == pend.token_tag and tag != flow.token_tag:
                    flow, confirmed, moving = pend, False, True  # a retransmitted check of a move
                    stat = Stat.FWD_MOVE_PENDING
                elif tag != flow.token_tag:
                    routed = token.verify(ufrag, self._keys)
            except TokenError as exc:
                return Stat.drop(exc.reason), None, HOP_OK
        if routed is not None:
            wire, refused = self._active(routed.cluster, routed.index)
            if wire is None:
                return refused, None, HOP_OK
            if confirmed and (routed.cluster, routed.index) != (flow.cluster, flow.index):
                # A live flow moves only when the new transceiver answers (§3 r9).
                moving, confirmed = True, False
                stat = Stat.FWD_MOVE_PENDING
            else:
                stat = Stat.FWD_REROUTE
        else:
            wire = self._wire(flow.cluster, flow.index)
            if wire is None:  # §2.1 r2: draining and dead backends keep their flows
                return Stat.DROP_BACKEND_UNKNOWN, None, HOP_OK
        if not confirmed:  # §2.1 r0: only STUN, and only so many packets, until confirmed
            if payload[0] > 3:
                return Stat.DROP_PENDING_NOT_STUN, None, HOP_OK
            cap = store.rate_config().pending_max_packets
            if cap and not (moving and routed is not None) and flow.packets_in >= cap:
                return Stat.DROP_PENDING_CAP, None, HOP_OK
        hop = HOP_OK if ingress is None else self._backend_hop(wire, packet_len, ingress)
        if hop.status:
            return self._hop_failed(hop, client16), None, hop
        if not self._role_ok(hop.egress if ingress is not None else None, "private"):
            return Stat.DROP_EGRESS_ROLE, None, hop
        if moving and routed is not None:
            move = Flow(routed.cluster, routed.index, routed.tag, now, now, 1, packet_len, 0, 0)
            store.put_pending(key, move)
            return stat, wire, hop
        if routed is not None:
            flow.cluster, flow.index, flow.token_tag = routed.cluster, routed.index, routed.tag
            if confirmed and self.on_event is not None:
                self.on_event(
                    FlowEvent(FlowEventKind.REROUTED, key, flow.cluster, flow.index, flow.token_tag, now)
                )
        flow.last_seen_ns = now
        flow.packets_in += 1
        flow.bytes_in += packet_len
        if not self.live:
            (store.put_flow if confirmed else store.put_pending)(key, flow)
        return stat, wire, hop

    def _new_flow(
        self, key: FlowKeyT, ufrag: bytes, packet_len: int, ingress: str | None, now: int
    ) -> tuple[Stat, _Wire | None, Hop]:
        """§2 r7-r11: verify, backend, rate limits, next hop, then (and only then) write."""
        try:
            routed = token.verify(ufrag, self._keys)
        except TokenError as exc:
            return Stat.drop(exc.reason), None, HOP_OK
        wire, refused = self._active(routed.cluster, routed.index)
        if wire is None:
            return refused, None, HOP_OK
        rate = self.store.rate_config()
        source = source_bucket(key[0])
        tag_key = (routed.cluster, routed.index, routed.tag)
        source_tat = tag_tat = global_tat = -1
        if rate.source_interval_ns:
            source_tat = self._gcra(
                self._sources.get(source, 0), now, rate.source_interval_ns, rate.source_tolerance_ns
            )
            if source_tat < 0:
                return Stat.DROP_RATE_SOURCE, None, HOP_OK
        if rate.tag_interval_ns:
            tag_tat = self._gcra(self._tags.get(tag_key, 0), now, rate.tag_interval_ns, rate.tag_tolerance_ns)
            if tag_tat < 0:
                return Stat.DROP_RATE_TOKEN, None, HOP_OK
        if rate.global_interval_ns:
            global_tat = self._gcra(self._global_tat, now, rate.global_interval_ns, rate.global_tolerance_ns)
            if global_tat < 0:
                return Stat.DROP_RATE_GLOBAL, None, HOP_OK
        hop = HOP_OK if ingress is None else self._backend_hop(wire, packet_len, ingress)
        if hop.status:
            return self._hop_failed(hop, key[0]), None, hop
        if not self._role_ok(hop.egress if ingress is not None else None, "private"):
            return Stat.DROP_EGRESS_ROLE, None, hop
        if source_tat >= 0:
            _lru_put(self._sources, source, source_tat, self._max_sources)
        if tag_tat >= 0:
            _lru_put(self._tags, tag_key, tag_tat, self._max_sources)
        if global_tat >= 0:
            self._global_tat = global_tat
        flow = Flow(routed.cluster, routed.index, routed.tag, now, now, 1, packet_len, 0, 0)
        self.store.put_pending(key, flow)
        return Stat.FWD_NEW_FLOW, wire, hop

    @staticmethod
    def _gcra(bucket: int, now: int, interval: int, tolerance: int) -> int:
        """§5: the bucket's new TAT if admitted, -1 if refused (the bucket is then unchanged)."""
        tat = bucket if bucket > now else now
        return -1 if tat - now > tolerance else tat + interval

    def _slow(self, stat: Stat, source16: bytes) -> Stat:
        """A SLOW verdict, charged to its source's bucket (not ``SLOW_RETURN_NO_FLOW``), then
        the slow-path bucket (§5)."""
        if not self.charge_slow:
            return stat  # XDP charged it before passing the packet up
        rate = self.store.rate_config()
        now = self.clock()
        source = source_bucket(source16)
        source_tat = -1
        # Not a return without a flow: after a reboot one transceiver sends those for all its sessions.
        if rate.slow_source_interval_ns and stat is not Stat.SLOW_RETURN_NO_FLOW:
            source_tat = self._gcra(
                self._slow_sources.get(source, 0),
                now,
                rate.slow_source_interval_ns,
                rate.slow_source_tolerance_ns,
            )
            if source_tat < 0:
                return Stat.DROP_RATE_SLOW_SOURCE
        if rate.slow_interval_ns:
            tat = self._gcra(self._slow_tat, now, rate.slow_interval_ns, rate.slow_tolerance_ns)
            if tat < 0:
                return Stat.DROP_RATE_SLOW_PATH
            self._slow_tat = tat
        if source_tat >= 0:
            _lru_put(self._slow_sources, source, source_tat, self._max_sources)
        return stat

    def _backend_hop(self, wire: _Wire, packet_len: int, ingress: str) -> Hop:
        """§6 for a frame: the next hop towards the backend, for the packet once encapsulated
        (socket mode leaves it to ``sendto``)."""
        return self.next_hop(wire.addr16, packet_len + (OUTER_V4 if wire.family == 4 else OUTER_V6), ingress)

    def _hop_failed(self, hop: Hop, source16: bytes) -> Stat:
        if hop.status == Fib.NO_NEIGH:
            return self._slow(Stat.SLOW_NO_NEIGH, source16)
        return _HOP_FAILED.get(hop.status, Stat.DROP_FIB)

    def _wire(self, cluster: int, index: int) -> _Wire | None:
        backend = self.store.get_backend(cluster, index)
        if backend is None:
            return None
        wire = self._wires.get((cluster, index))
        if wire is None or (wire.backend is not backend and wire.backend != backend):
            wire = _Wire(backend)
            self._wires[(cluster, index)] = wire
        return wire

    def _active(self, cluster: int, index: int) -> tuple[_Wire | None, Stat]:
        """§2 r8: the backend of a new (or re-routed) flow must exist and be active."""
        wire = self._wire(cluster, index)
        if wire is None:
            return None, Stat.DROP_BACKEND_UNKNOWN
        refused = _BACKEND_REFUSED.get(wire.backend.state)
        if refused is not None:
            return None, refused
        return wire, Stat.DROP_BACKEND_UNKNOWN

    # ---- §3 transceiver -> client ----

    def _return(
        self,
        src16: bytes,
        buf: bytes,
        g: int,
        end: int,
        ingress: str | None,
        retry: bool = False,
        *,
        sport: int | None = None,
    ) -> tuple[Stat, tuple[int, int, int, bytes, int, bytes, int] | None, Hop, FlowKeyT | None]:
        """§3 r1-r10 on the Geneve payload ``buf[g:end]`` sent by ``src16`` (from UDP port
        ``sport``; None: not known, the port is not checked).

        Returns (stat, what to forward, next hop, flow key). What to forward is
        ``(inner start, inner end, inner UDP offset, client, port, vip, port)``.
        """
        if end - g < 8:
            return Stat.DROP_GENEVE_MALFORMED, None, HOP_OK, None
        inner = g + 8 + ((buf[g] & 0x3F) << 2)
        if inner > end:
            return Stat.DROP_GENEVE_MALFORMED, None, HOP_OK, None
        proto = buf[g + 2] << 8 | buf[g + 3]
        if buf[g] >> 6 or buf[g + 1] & 0xC0 or (proto != PROTO_IPV4 and proto != PROTO_IPV6):
            return Stat.DROP_GENEVE_UNSUPPORTED, None, HOP_OK, None  # version, O bit, C bit, not IP
        parsed = parse_ip(buf, inner, end, proto)
        if isinstance(parsed, Stat):
            return Stat.DROP_INNER_MALFORMED, None, HOP_OK, None
        iend, u, vip16, client16, vport, cport, udp_len = parsed
        if udp_len < 8 or u + udp_len != iend:
            return Stat.DROP_INNER_MALFORMED, None, HOP_OK, None
        store = self.store
        vip_index = store.vip_index(vip16, vport)
        if vip_index is None:  # never an open reflector
            return Stat.DROP_RETURN_NOT_VIP, None, HOP_OK, None
        if iend == u + 8 or not is_webrtc(buf[u + 8]):
            return Stat.DROP_NOT_WEBRTC, None, HOP_OK, None
        key = (client16, cport, vip_index)
        now = self.clock()
        # §3 r6: the confirmed flow, else (or when its owner did not send this) the pending
        # entry: a new flow, or the transceiver a confirmed flow may move to (§2.1 r1).
        flow = store.get_flow(key)
        confirmed = flow is not None
        owner = flow is not None and self._sent_by(flow, src16, sport)
        live: Flow | None = None
        if not owner:
            pend = self._pending(key, now)
            if pend is not None and (flow is None or self._sent_by(pend, src16, sport)):
                live, flow, confirmed = flow, pend, False
                owner = self._sent_by(pend, src16, sport)
        if flow is None:
            stat = Stat.SLOW_RETURN_NO_FLOW if retry else self._slow(Stat.SLOW_RETURN_NO_FLOW, src16)
            return stat, None, HOP_OK, key
        if not owner:
            return Stat.DROP_RETURN_WRONG_BACKEND, None, HOP_OK, key
        if not confirmed:  # §3 r8 / §2.1 r0
            if buf[u + 8] > 3:
                return Stat.DROP_PENDING_NOT_STUN, None, HOP_OK, key
            cap = store.rate_config().pending_max_packets
            if cap and flow.packets_out >= cap:
                return Stat.DROP_PENDING_CAP, None, HOP_OK, key
        packet_len = iend - inner
        hop = HOP_OK
        if ingress is not None:
            hop = self.next_hop(client16, packet_len, ingress)
            if hop.status:
                return self._hop_failed(hop, src16), None, hop, key
            if not self._role_ok(hop.egress, "public"):
                return Stat.DROP_EGRESS_ROLE, None, hop, key
        success = not confirmed and buf[u + 8] <= 3 and stun.is_binding_success(buf[u + 8 : iend])
        if success and live is not None:
            # §3 r9: the new transceiver answered the moved check; the live flow follows.
            live.cluster, live.index, live.token_tag = flow.cluster, flow.index, flow.token_tag
            live.last_seen_ns = now
            live.packets_out += 1
            live.bytes_out += packet_len
            store.delete_pending(key)
            store.put_flow(key, live)
            if self.on_event is not None:
                self.on_event(
                    FlowEvent(FlowEventKind.REROUTED, key, live.cluster, live.index, live.token_tag, now)
                )
            return Stat.FWD_MOVE_CONFIRM, (inner, iend, u, client16, cport, vip16, vport), hop, key
        flow.last_seen_ns = now
        flow.packets_out += 1
        flow.bytes_out += packet_len
        if confirmed:
            stat = Stat.FWD_RETURN
            if not self.live:
                store.put_flow(key, flow)
        elif success:
            stat = Stat.FWD_CONFIRM  # §3 r9: the owner answered the check, the flow is real
            store.delete_pending(key)
            store.put_flow(key, flow)
            if self.on_event is not None:
                self.on_event(
                    FlowEvent(FlowEventKind.CREATED, key, flow.cluster, flow.index, flow.token_tag, now)
                )
        else:
            stat = Stat.FWD_RETURN_PENDING
            if not self.live:
                store.put_pending(key, flow)
        return stat, (inner, iend, u, client16, cport, vip16, vport), hop, key

    def _sent_by(self, flow: Flow, src16: bytes, sport: int | None) -> bool:
        """§3 r7: the flow's transceiver sent this, from its address and Geneve port."""
        wire = self._wire(flow.cluster, flow.index)
        return wire is not None and wire.addr16 == src16 and (sport is None or sport == wire.backend.port)


def source_bucket(addr16: bytes) -> bytes:
    """§5: the per-source buckets' key, an IPv6 source's /64 (RFC 6177: a site's prefix)."""
    return addr16 if addr16[:12] == V4_MAPPED else addr16[:8] + bytes(8)


def _lru_put(table: OrderedDict[Any, int], key: Any, value: int, capacity: int) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > capacity:
        table.popitem(last=False)
