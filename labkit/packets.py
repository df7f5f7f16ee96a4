"""Builders for the shared packet vectors (``make_packet_vectors.py``): topology, state,
tokens, STUN messages, frames, and the expected outputs, all from the icegate codecs.

Expected outputs are built here independently of ``controlplane/datapath/engine.py`` and
``bpf/relay.c``, which must both reproduce them.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any, NamedTuple

from icegate import geneve, inet, stun, token
from icegate.siphash import siphash24

HOUR_NS = 3600 * 10**9

PUB_MAC, GW_MAC, PRIV_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:11"
TUNNEL4, TUNNEL6, TUNNEL_PORT = "10.70.0.1", "fd00:70::1", 6081
VIP4, VIP6, VIP_ALT = ("192.0.2.10", 3478, 0), ("2001:db8:1::10", 3478, 1), ("192.0.2.20", 3479, 7)
KEYS = {0: bytes(range(16)), 1: bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")}
TOPOLOGY: dict[str, dict[str, Any]] = {
    "public": {
        "ifname": "pub0",
        "mac": PUB_MAC,
        "address": "192.0.2.2/24",
        "address6": "2001:db8:1::2/64",
        "gateway": "192.0.2.1",
        "gateway6": "2001:db8:1::1",
        "gateway_mac": GW_MAC,
        "mtu": 1500,
        "routes": ["100.64.0.0/10", "2001:db8:100::/48"],
    },
    "private": {
        "ifname": "priv0",
        "mac": PRIV_MAC,
        "address": "10.70.0.1/24",
        "address6": "fd00:70::1/64",
        "mtu": 1500,
        "neighbours": {
            "10.70.0.11": "02:00:00:00:00:21",
            "10.70.0.12": "02:00:00:00:00:22",
            "10.70.0.13": "02:00:00:00:00:23",
            "10.70.0.14": "02:00:00:00:00:24",
            "fd00:70::21": "02:00:00:00:00:31",
        },
    },
}


class B(NamedTuple):
    cluster: int
    index: int  # type: ignore[assignment]  # the field shadows tuple.index on purpose
    address: str
    port: int
    state: str = "active"

    @property
    def via(self) -> tuple[str, str]:
        """(egress, next-hop MAC) in TOPOLOGY; empty MAC when the hop fails."""
        if self.address.startswith("100.64."):
            return "public", GW_MAC
        return "private", TOPOLOGY["private"]["neighbours"].get(self.address, "")


B11 = B(1, 1, "10.70.0.11", 6081)
B12 = B(1, 2, "10.70.0.12", 7000)
B13 = B(1, 3, "10.70.0.13", 6081, "draining")
B14 = B(1, 4, "10.70.0.14", 6081, "dead")
B15 = B(1, 5, "fd00:70::21", 6081)  # IPv6 transceiver
B16 = B(1, 6, "10.70.0.99", 6081)  # on the private network, no neighbour entry
B17 = B(1, 7, "10.99.0.5", 6081)  # no route
B21 = B(2, 1, "100.64.200.1", 6081)  # reached through the public gateway: XDP_TX
BACKENDS = [B11, B12, B13, B14, B15, B16, B17, B21]

C1, C2, C6 = ("100.64.1.2", 40000), ("100.64.1.3", 40001), ("2001:db8:100::5", 40000)
C_NO_NEIGH, C_NO_ROUTE = ("192.0.2.50", 40000), ("198.51.100.7", 40000)


# ---- tokens ----


def tok(b: B, key_id: int = 0, nonce: int = 1) -> str:
    return token.mint(key_id, KEYS[key_id], b.cluster, b.index, nonce)


def tag(ufrag: str) -> int:
    return token.verify(ufrag, KEYS).tag


def raw_token(first: int, cluster: int, index: int, nonce: int, key: bytes, mac: bytes | None = None) -> str:
    body = struct.pack(">BHH", first, cluster, index) + nonce.to_bytes(5, "big")
    mac = mac if mac is not None else struct.pack("<Q", siphash24(key, body))
    return b64(body + mac)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


T11, T12, T13, T14, T15, T16, T17, T21 = (tok(b) for b in BACKENDS)
T11_KEY1 = tok(B11, key_id=1, nonce=2)
T11_NONCE2 = tok(B11, nonce=3)  # the same transceiver, another session (a new tag)
T19 = token.mint(0, KEYS[0], 1, 9, 1)  # verifies, but no such backend
T_UNKNOWN_KEY = raw_token(0x13, 1, 1, 1, KEYS[0])
T_VERSION2 = raw_token(0x20, 1, 1, 1, KEYS[0])


def altered(ufrag: str, offset: int, value: int) -> str:
    raw = bytearray(base64.b64decode(ufrag))
    raw[offset] = value
    return b64(bytes(raw))


_T11_RAW = base64.b64decode(T11)
T_FORGED = altered(T11, 17, _T11_RAW[17] ^ 1)  # MAC broken outside the tag: same tag as T11
T_FORGED_TAG = altered(T11, 10, _T11_RAW[10] ^ 1)  # MAC broken inside the tag: a "new" tag
T11_VERSION0 = altered(T11, 0, 0x00)  # version 0, tag of T11
T_STEER = raw_token(0x10, 1, 2, 1, KEYS[0], mac=_T11_RAW[10:])  # names backend 1/2, carries T11's MAC


# ---- STUN ----


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def stun_message(
    msg_type: int, attrs: list[bytes], tid: bytes = b"icegate-tid1", fingerprint: bool = True
) -> bytes:
    body = b"".join(attrs)
    if fingerprint:  # RFC 8489 §14.7, computed over the message with the length covering it
        head = struct.pack("!HHI12s", msg_type, len(body) + 8, stun.COOKIE, tid)
        crc = zlib.crc32(head + body) ^ 0x5354554E
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI12s", msg_type, len(body), stun.COOKIE, tid) + body


def check(ufrag: str = "", *, before: int = 0, username: bytes | None = None, missing: bool = False) -> bytes:
    """A browser-like connectivity check: USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY.

    ``before`` PRIORITY attributes precede USERNAME; ``username`` replaces
    ``<ufrag>:cLnT``; ``missing`` leaves USERNAME out.
    """
    user = username if username is not None else f"{ufrag}:cLnT".encode()
    attrs = [attr(0x0024, struct.pack("!I", 0x6E7F1EFF)) for _ in range(before)]
    attrs += [] if missing else [attr(stun.ATTR_USERNAME, user)]
    attrs += [attr(0x0024, struct.pack("!I", 0x6E7F1EFF)), attr(0x802A, bytes(8)), attr(0x0008, bytes(20))]
    return stun_message(stun.BINDING_REQUEST, attrs)


def success(client: tuple[str, int]) -> bytes:
    """The transceiver's Binding success response (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY)."""
    packed = inet.packed_address(client[0])
    family = 1 if len(packed) == 4 else 2
    cookie = struct.pack("!I", stun.COOKIE)
    xport = client[1] ^ (stun.COOKIE >> 16)
    xaddr = bytes(a ^ b for a, b in zip(packed, (cookie + b"icegate-tid1")[: len(packed)], strict=True))
    xma = attr(0x0020, struct.pack("!BBH", 0, family, xport) + xaddr)
    return stun_message(stun.BINDING_SUCCESS, [xma, attr(0x0008, bytes(20))])


DTLS = bytes([22, 0xFE, 0xFD]) + bytes(range(60))  # handshake record header + body
RTP = bytes([0x80, 111, 0, 1]) + bytes(range(100, 200))


# ---- frames ----


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def eth(dst: str, src: str, etype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return mac(dst) + mac(src) + tag + struct.pack("!H", etype) + payload


def ip_etype(packet: bytes) -> int:
    return 0x0800 if packet[0] >> 4 == 4 else 0x86DD


def ipv4(src: str, dst: str, proto: int, payload: bytes, **kw: Any) -> bytes:
    """An IPv4 header with any field overridden (for malformed cases); checksum computed."""
    options = kw.get("options", b"")
    ihl = kw.get("ihl", 5 + len(options) // 4)
    total = kw.get("total", 20 + len(options) + len(payload))
    first = (kw.get("version", 4) << 4) | ihl
    header = struct.pack(
        "!BBHHHBBH4s4s",
        first,
        0,
        total,
        kw.get("ident", 0x1234),
        kw.get("frag", 0x4000),
        kw.get("ttl", 57),
        proto,
        0,
        inet.packed_address(src),
        inet.packed_address(dst),
    )
    header += options
    header = header[:10] + struct.pack("!H", inet.checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, **kw: Any) -> bytes:
    first = kw.get("version", 6) << 28
    plen = kw.get("plen", len(payload))
    s, d = inet.packed_address(src), inet.packed_address(dst)
    return struct.pack("!IHBB16s16s", first, plen, next_header, 57, s, d) + payload


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes, length: int | None = None) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload
    csum = inet.udp_checksum(inet.packed_address(src), inet.packed_address(dst), seg)
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def client_packet(client: tuple[str, int], vip: tuple[str, int, int], payload: bytes, **kw: Any) -> bytes:
    """The client's IP packet (TTL 57, ID 0x1234: the relay must not touch either)."""
    seg = udp(client[0], client[1], vip[0], vip[1], payload, kw.pop("udp_length", None))
    if ":" in client[0]:
        return ipv6(client[0], vip[0], 17, seg, **kw)
    return ipv4(client[0], vip[0], 17, seg, **kw)


def from_client(packet: bytes, vlan: int | None = None, pad_to: int = 0) -> bytes:
    frame = eth(PUB_MAC, GW_MAC, ip_etype(packet), packet, vlan)
    return frame + bytes(max(0, pad_to - len(frame)))


def reply(vip: tuple[str, int, int], client: tuple[str, int], payload: bytes) -> bytes:
    """The inner packet a transceiver writes: VIP:port -> client, complete UDP checksum."""
    return inet.build_udp(vip[0], vip[1], client[0], client[1], payload)


def from_backend(
    sender: str, geneve_payload: bytes, sport: int = 6081, sender_mac: str | None = None
) -> bytes:
    tunnel = TUNNEL6 if ":" in sender else TUNNEL4
    outer = inet.build_udp(sender, sport, tunnel, TUNNEL_PORT, geneve_payload)
    src_mac = sender_mac or TOPOLOGY["private"]["neighbours"].get(sender, "02:00:00:00:00:99")
    return eth(PRIV_MAC, src_mac, ip_etype(outer), outer)


def returned(b: B, inner: bytes, **kw: Any) -> bytes:
    """Geneve from ``b``'s tunnel address and port (§3 r7 checks both)."""
    kw.setdefault("sport", b.port)
    return from_backend(b.address, geneve.encapsulate(inner, b.index), **kw)


# ---- expectations ----


def encapsulated(b: B, inner: bytes, client: tuple[str, int], vip_port: int) -> bytes:
    """DATAPATH.md §2.2, from the codecs."""
    payload = geneve.encapsulate(inner, b.index)
    sport = geneve.entropy_port(inet.addr16(client[0]), client[1], vip_port)
    udp_len = 8 + len(payload)
    dst = inet.packed_address(b.address)
    if len(dst) == 4:
        src = inet.packed_address(TUNNEL4)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, src, dst)
        header = header[:10] + struct.pack("!H", inet.checksum(header)) + header[12:]
        return header + struct.pack("!HHHH", sport, b.port, udp_len, 0) + payload
    src = inet.packed_address(TUNNEL6)
    seg = struct.pack("!HHHH", sport, b.port, udp_len, 0) + payload
    seg = seg[:6] + struct.pack("!H", inet.udp_checksum(src, dst, seg)) + seg[8:]
    return struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, src, dst) + seg


def step(frame: bytes, stat: str, ingress: str = "public", **out: Any) -> dict[str, Any]:
    if stat.startswith("FWD_"):
        egress, dst_mac = out["egress"], out["dst_mac"]
        src_mac = TOPOLOGY[egress]["mac"]
        return {
            "ingress": ingress,
            "frame": frame.hex(),
            "stat": stat,
            "action": "tx" if egress == ingress else "redirect",
            "egress": egress,
            "eth": {"src": src_mac, "dst": dst_mac},
            "output": out["output"].hex(),
        }
    action = "drop" if stat.startswith("DROP_") else "pass"
    return {
        "ingress": ingress,
        "frame": frame.hex(),
        "stat": stat,
        "action": action,
        "egress": None,
        "eth": None,
        "output": None,
    }


def to_backend(
    stat: str, b: B, client: tuple[str, int], vip: tuple[str, int, int], payload: bytes, **kw: Any
) -> dict[str, Any]:
    """A client packet and the step expecting it tunnelled to ``b``."""
    vlan, pad_to = kw.pop("vlan", None), kw.pop("pad_to", 0)
    packet = client_packet(client, vip, payload, **kw)
    egress, dst_mac = b.via
    out = encapsulated(b, packet, client, vip[1])
    return step(from_client(packet, vlan, pad_to), stat, egress=egress, dst_mac=dst_mac, output=out)


def at_vip(
    stat: str, client: tuple[str, int], vip: tuple[str, int, int], payload: bytes, **kw: Any
) -> dict[str, Any]:
    vlan, pad_to = kw.pop("vlan", None), kw.pop("pad_to", 0)
    return step(from_client(client_packet(client, vip, payload, **kw), vlan, pad_to), stat)


def to_client(
    stat: str, b: B, vip: tuple[str, int, int], client: tuple[str, int], payload: bytes, **kw: Any
) -> dict[str, Any]:
    """A transceiver reply from ``b`` and the step expecting the inner packet sent to the client."""
    inner = reply(vip, client, payload)
    return step(returned(b, inner, **kw), stat, "private", egress="public", dst_mac=GW_MAC, output=inner)


def at_tunnel(
    stat: str, b: B, vip: tuple[str, int, int], client: tuple[str, int], payload: bytes, **kw: Any
) -> dict[str, Any]:
    return step(returned(b, reply(vip, client, payload), **kw), stat, "private")


def flow(client: tuple[str, int], vip: tuple[str, int, int], b: B, ufrag: str = "") -> dict[str, Any]:
    return {
        "client": client[0],
        "port": client[1],
        "vip_index": vip[2],
        "cluster": b.cluster,
        "index": b.index,
        "token_tag": tag(ufrag or tok(b)),
    }


def keys_only(*flows: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: f[k] for k in ("client", "port", "vip_index", "cluster", "index")} for f in flows]


def case(
    name: str, steps: list[dict[str, Any]], state: dict[str, Any] | None = None, **expect: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name}
    if state:
        found["state"] = state
    found["steps"] = steps
    if expect:
        found["expect"] = {k: keys_only(*v) for k, v in expect.items()}
    return found


def rate(*, pending_max_packets: int = 0, **values: int) -> dict[str, int]:
    """A ``state.rate``: every ``struct relay_config`` limit, 0 unless given (``x=`` sets ``x_ns``)."""
    names = ("source", "global", "slow", "tag", "slow_source")
    full = {f"{n}_{p}_ns": 0 for n in names for p in ("interval", "tolerance")}
    full["pending_timeout_ns"] = 0
    full.update({f"{k}_ns": v for k, v in values.items()})
    full["pending_max_packets"] = pending_max_packets
    return full


def base_state() -> dict[str, Any]:
    return {
        "vips": [{"address": v[0], "port": v[1], "index": v[2]} for v in (VIP4, VIP6, VIP_ALT)],
        "tunnel": {"address4": TUNNEL4, "address6": TUNNEL6, "port": TUNNEL_PORT},
        "route_keys": {str(k): v.hex() for k, v in KEYS.items()},
        "backends": [{**b._asdict(), "generation": 1} for b in BACKENDS],
        "flows": [],
        "pending": [],
        "rate": rate(),
    }
