"""What the operator CLI shows: rows built from map and Redis state, and plain-text tables.

Pure functions, no I/O, so the CLI's output can be checked against known map contents.
Every view is a list of dicts: ``--json`` prints them as they are, the table shows the
same keys under upper-case headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controlplane.datapath.layout import Stat
from controlplane.datapath.store import Backend, Flow, FlowKeyT, Vip
from icegate.inet import from_addr16
from icegate.schema import Registration

Row = dict[str, Any]


# ---- parsing operator input ----
def parse_backend(text: str) -> tuple[int, int]:
    """``C:I`` -> (cluster, index)."""
    cluster, sep, index = text.partition(":")
    try:
        pair = (int(cluster), int(index))
    except ValueError:
        pair = (-1, -1)
    if not sep or not all(0 <= x <= 0xFFFF for x in pair):
        raise ValueError(f"expected CLUSTER:INDEX (0-65535 each), got {text!r}")
    return pair


def parse_client(text: str) -> tuple[str, int | None]:
    """``ip``, ``ip:port``, ``ipv6``, ``[ipv6]:port`` -> (normalised address, port or None)."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
        number = None if port is None else int(port)
    except ValueError:
        raise ValueError(f"expected a client address (ip, ip:port or [ipv6]:port), got {text!r}") from None
    if number is not None and not 0 < number < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return address, number


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- rows ----
def flow_row(key: FlowKeyT, flow: Flow, state: str, vips: Mapping[int, Vip], now_ns: int) -> Row:
    vip = vips.get(key[2])
    return {
        "client": from_addr16(key[0]),
        "client_port": key[1],
        "vip": vip.address if vip else None,
        "vip_port": vip.port if vip else None,
        "vip_index": key[2],
        "backend": f"{flow.cluster}:{flow.index}",
        "state": state,
        "token_tag": flow.token_tag,
        "age_s": round(max(0, now_ns - flow.created_ns) / 1e9, 3),
        "idle_s": round(max(0, now_ns - flow.last_seen_ns) / 1e9, 3),
        "packets_in": flow.packets_in,
        "bytes_in": flow.bytes_in,
        "packets_out": flow.packets_out,
        "bytes_out": flow.bytes_out,
    }


def flow_rows(
    items: Iterable[tuple[FlowKeyT, Flow]],
    state: str,
    vips: Sequence[Vip],
    now_ns: int,
    *,
    backend: tuple[int, int] | None = None,
    client: tuple[str, int | None] | None = None,
) -> list[Row]:
    by_index = {v.index: v for v in vips}
    rows = []
    for key, flow in items:
        if backend is not None and (flow.cluster, flow.index) != backend:
            continue
        row = flow_row(key, flow, state, by_index, now_ns)
        if client is not None and (row["client"] != client[0] or client[1] not in (None, row["client_port"])):
            continue
        rows.append(row)
    rows.sort(key=_client_order)
    return rows


def _client_order(row: Row) -> tuple[int, bytes, int, int]:
    ip = ipaddress.ip_address(row["client"])
    return ip.version, ip.packed, row["client_port"], row["vip_index"]


FLOW_COLUMNS = {
    "CLIENT": lambda r: hostport(r["client"], r["client_port"]),
    "VIP": lambda r: hostport(r["vip"], r["vip_port"]) if r["vip"] else f"#{r['vip_index']}",
    "BACKEND": lambda r: r["backend"],
    "STATE": lambda r: r["state"],
    "AGE": lambda r: duration(r["age_s"]),
    "IDLE": lambda r: duration(r["idle_s"]),
    "PKTS_IN": lambda r: r["packets_in"],
    "BYTES_IN": lambda r: r["bytes_in"],
    "PKTS_OUT": lambda r: r["packets_out"],
    "BYTES_OUT": lambda r: r["bytes_out"],
}
# -o wide: the columns above and these (headers are single words, for awk and cut)
FLOW_WIDE = {"VIP_INDEX": lambda r: r["vip_index"], "TOKEN_TAG": lambda r: r["token_tag"]}


def backend_rows(
    backends: Sequence[Backend] | None,
    registrations: Mapping[tuple[int, int], Registration] | None,
    flows_per_backend: Mapping[tuple[int, int], int],
    now_ms: int,
) -> list[Row]:
    """Map and Redis views side by side; ``None`` for a view that could not be read."""
    in_map = {(b.cluster, b.index): b for b in backends or ()}
    in_redis = dict(registrations or {})
    rows = []
    for key in sorted(set(in_map) | set(in_redis)):
        b, reg = in_map.get(key), in_redis.get(key)
        address = b.address if b else reg.tunnel_addr if reg else ""
        port = b.port if b else reg.tunnel_port if reg else 0
        rows.append(
            {
                "cluster": key[0],
                "index": key[1],
                "tunnel": hostport(address, port),
                "map_state": b.state.name.lower() if b else None,
                "map_generation": b.generation if b else None,
                "redis_state": reg.state if reg else None,
                "redis_generation": reg.generation if reg else None,
                "sessions": reg.sessions if reg else None,
                "heartbeat_age_s": round((now_ms - reg.heartbeat_ms) / 1000, 1) if reg else None,
                "flows": flows_per_backend.get(key, 0),
            }
        )
    return rows


BACKEND_COLUMNS = {
    "BACKEND": lambda r: f"{r['cluster']}:{r['index']}",
    "TUNNEL": lambda r: r["tunnel"],
    "MAP_STATE": lambda r: r["map_state"],
    "MAP_GEN": lambda r: r["map_generation"],
    "REDIS_STATE": lambda r: r["redis_state"],
    "REDIS_GEN": lambda r: r["redis_generation"],
    "SESSIONS": lambda r: r["sessions"],
    "HEARTBEAT": lambda r: None if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']}s ago",
    "FLOWS": lambda r: r["flows"],
}


def stat_rows(
    totals: Sequence[tuple[int, int]], previous: Sequence[tuple[int, int]] | None, interval_s: float
) -> list[Row]:
    """Non-zero counters, most packets first, with per-second rates when ``previous`` is given."""
    rows = []
    for stat, (packets, octets) in zip(Stat, totals, strict=False):
        if not packets:
            continue
        row: Row = {
            "stat": stat.name,
            "verdict": stat.verdict.name.lower(),
            "reason": stat.reason,
            "packets": packets,
            "bytes": octets,
        }
        if previous is not None and interval_s > 0:
            old_packets, old_bytes = previous[stat]
            row["pps"] = round((packets - old_packets) / interval_s, 1)
            row["bps"] = round((octets - old_bytes) * 8 / interval_s, 1)
        rows.append(row)
    rows.sort(key=lambda r: (-r.get("pps", 0), -r["packets"], r["stat"]))
    return rows


STAT_COLUMNS = {
    "VERDICT": lambda r: r["verdict"],
    "REASON": lambda r: r["reason"],
    "PACKETS": lambda r: r["packets"],
    "BYTES": lambda r: r["bytes"],
    "PPS": lambda r: r.get("pps"),
    "BPS": lambda r: None if r.get("bps") is None else si(r["bps"]),
}
STAT_WIDE = {"STAT": lambda r: r["stat"]}


# ---- rendering ----
def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"
