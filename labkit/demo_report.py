"""What ``icegate demo`` concludes: per-session verdicts, relay totals, the summary table.

Pure functions over plain data (the clients' JSON results, the relay's counters and
flows), so the judgement is testable without a lab. A session passed when the client
connected through a relay VIP, every turn was answered with the expected pitch, and
the relay shows the session's flow (its per-flow packet counters in XDP mode; the
flow-cache record the relay wrote in Redis in both modes).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PITCH_TOLERANCE_HZ = 10.0
VERDICTS = ("forward", "slow", "drop", "pass")  # the relay's counter verdicts, fast path first


@dataclass(frozen=True)
class Plan:
    """One session as the demo planned it."""

    index: int
    client: str  # lab host ("c1")
    transceiver: str  # lab host ("tx1")
    url: str  # the transceiver's signaling URL
    tone_hz: float  # the pitch the client speaks
    expect_hz: float  # the pitch of the answer: the echo of tone_hz, or the tone agent's
    expect_region: str | None = None  # two-region lab: the client POSTs to the front door, steered here


@dataclass
class Session:
    """A planned session with what the client and the relay report about it."""

    plan: Plan
    result: dict[str, Any]
    flow: dict[str, Any] | None = None  # the relay's flow row (`icegate flows ls`): its counters
    cached: bool = False  # the relay wrote this client's flow to the Redis flow cache
    problems: list[str] = field(default_factory=list)
    relay: str | None = None  # the lab relay whose flows hold the session (two-region lab)

    @property
    def decision(self) -> dict[str, str]:
        """The front door's ``Icegate-Decision`` header as a dict (``region``, ``cluster``, ...)."""
        return parse_decision(self.result.get("decision"))

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rtts(self) -> list[float]:
        return [t["rtt_ms"] for t in self.result.get("turns", []) if t.get("rtt_ms") is not None]

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            **asdict(self.plan),
            "ok": self.ok,
            "problems": self.problems,
            # the address the relay saw (the selected pair's), else the first candidate
            "client_address": addr_of(self.flow) if self.flow else (r.get("local") or [None])[0],
            "remote": r.get("remote", []),
            "setup_ms": r.get("setup_ms"),
            "turns": r.get("turns", []),
            "rtt_ms": round(statistics.median(self.rtts), 1) if self.rtts else None,
            "frames_sent": r.get("frames_sent", 0),
            "frames_received": r.get("frames_received", 0),
            "rtp": r.get("rtp", {}),
            "events": r.get("events", []),
            "error": r.get("error"),
            "relay_flow": self.flow,
            "decision": self.decision or None,
            "relay": self.relay,
            "relay_flow_cached": self.cached,
            "fast_path_packets": None
            if self.flow is None
            else self.flow["packets_in"] + self.flow["packets_out"],
        }


def parse_decision(header: str | None) -> dict[str, str]:
    """``region=a; cluster=b; ...`` -> ``{"region": "a", "cluster": "b", ...}`` (geo.frontdoor's header)."""
    out = {}
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            out[key] = value
    return out


def judge_steering(session: Session) -> None:
    """Two-region lab: the front door steered the client to its region, and its media went
    through a relay the decision named (the relay whose flow table holds the session)."""
    expected = session.plan.expect_region
    if expected is None:
        return
    decision = session.decision
    if not decision:
        session.problems.append("no decision header from the front door")
        return
    if decision.get("region") != expected:
        session.problems.append(f"steered to region {decision.get('region')}, expected {expected}")
    named = {name for name in (decision.get("primary"), decision.get("backup")) if name}
    if session.relay is not None and session.relay not in named:
        session.problems.append(
            f"media went through relay {session.relay}, the decision named {sorted(named)}"
        )


def addr_of(row: Mapping[str, Any]) -> str:
    return f"{row['client']}:{row['client_port']}"


def judge(session: Session, vips: Sequence[str]) -> None:
    """Fill ``session.problems``; empty means the session carried audio both ways through the relay."""
    r, problems = session.result, session.problems
    if r.get("error"):
        problems.append(f"client: {r['error']}")
    if r.get("setup_ms") is None:
        problems.append("never connected")
    remote = r.get("remote", [])
    if not remote or any(a not in vips for a in remote):
        problems.append(f"remote candidates {remote} are not all relay VIPs {list(vips)}")
    turns = r.get("turns", [])
    if not turns:
        problems.append("no turn completed")
    for n, turn in enumerate(turns, 1):
        if turn.get("rtt_ms") is None:
            problems.append(f"turn {n}: no agent audio heard")
        elif "said" in turn:  # a spoken turn (--agent speech): the words must match both ways
            if turn.get("agent_heard") != turn["said"]:
                problems.append(
                    f"turn {n}: said {turn['said']!r}, the agent heard {turn.get('agent_heard')!r}"
                )
            if turn.get("client_heard") != turn.get("agent_said"):
                said, heard = turn.get("agent_said"), turn.get("client_heard")
                problems.append(f"turn {n}: the agent said {said!r}, the client heard {heard!r}")
        elif abs(turn["heard_hz"] - session.plan.expect_hz) > PITCH_TOLERANCE_HZ:
            problems.append(f"turn {n}: heard {turn['heard_hz']} Hz, expected {session.plan.expect_hz} Hz")
    if r.get("frames_received", 0) == 0:
        problems.append("no audio frames received")
    if not session.cached:
        problems.append("the relay did not record this client's flow")
    flow = session.flow
    if flow is None:
        problems.append("no relay flow for the client's address")
    elif not (flow["packets_in"] > 0 and flow["packets_out"] > 0):
        problems.append(f"relay flow carried {flow['packets_in']} in / {flow['packets_out']} out")


def match_flows(
    sessions: Iterable[Session], rows: Sequence[Mapping[str, Any]], relay: str | None = None
) -> None:
    """Attach to each session the relay flow whose client address is one of its local candidates
    (``relay``: the name of the relay these rows come from, when the lab has several)."""
    by_addr = {addr_of(row): dict(row) for row in rows}
    for s in sessions:
        for local in s.result.get("local", []):
            if local in by_addr and (s.flow is None or _packets(by_addr[local]) > _packets(s.flow)):
                s.flow = by_addr[local]
                s.relay = relay
                break


def _packets(row: Mapping[str, Any]) -> int:
    return int(row.get("packets_in", 0)) + int(row.get("packets_out", 0))


def totals(after: Mapping[str, int], before: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Packets per verdict and per counter (``forward/flow``...) between two counter readings."""
    before = before or {}
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    per_verdict = dict.fromkeys(VERDICTS, 0)
    for key, n in delta.items():
        verdict = key.split("/", 1)[0]
        per_verdict[verdict] = per_verdict.get(verdict, 0) + n
    return {
        "fast_path_packets": per_verdict["forward"],
        "slow_path_packets": per_verdict["slow"],
        "dropped_packets": per_verdict["drop"],
        "passed_packets": per_verdict["pass"],
        "counters": dict(sorted(delta.items(), key=lambda kv: -kv[1])),
    }


# ---- rendering -------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def table(sessions: Sequence[Session]) -> str:
    steered = any(s.decision for s in sessions)
    where = "REGION/CLUSTER via RELAY" if steered else "TRANSCEIVER"
    headers = ["#", "CLIENT", where, "SETUP ms", "TURNS", "RTT ms", "PITCH Hz", "FRAMES tx/rx",
               "LOST up/down", "RELAY in/out", "RESULT"]  # fmt: skip
    rows = []
    for s in sessions:
        j = s.to_json()
        rtp = j["rtp"]
        heard = [t["heard_hz"] for t in j["turns"]]
        relay = "-" if s.flow is None else f"{s.flow['packets_in']}/{s.flow['packets_out']}"
        rows.append(
            [
                str(s.plan.index),
                f"{s.plan.client} {j['client_address'] or '-'}",
                _where(s),
                _num(j["setup_ms"]),
                str(len(j["turns"])),
                _num(j["rtt_ms"]),
                f"{s.plan.tone_hz:.0f}>{_num(statistics.median(heard)) if heard else '-'}",
                f"{j['frames_sent']}/{j['frames_received']}",
                f"{rtp.get('up_packets_lost', '-')}/{rtp.get('down_packets_lost', '-')}",
                relay,
                "ok" if s.ok else "FAILED",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = {1, 2, 10}
    lines = []
    for cells in [headers, *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(line.rstrip() for line in lines)


def _where(s: Session) -> str:
    """The transceiver planned, or (two-region lab) the decision's region/cluster and the relay used."""
    d = s.decision
    if not d:
        return s.plan.transceiver
    return f"{d.get('region')}/{d.get('cluster')} via {s.relay or '-'}"


def relay_line(datapath: str, total: Mapping[str, Any]) -> str:
    """The relay's totals; "fast path" is the in-kernel XDP path, the twin forwards in userspace."""
    top = ", ".join(f"{k} {v}" for k, v in list(total["counters"].items())[:6])
    fast = "fast path (in kernel)" if datapath.startswith("xdp") else "forwarded by the twin"
    return (
        f"relay {datapath}: {fast} {total['fast_path_packets']} packets, "
        f"slow path {total['slow_path_packets']}, dropped {total['dropped_packets']}"
        + (f"\n  counters: {top}" if top else "")
    )


def session_stats(sessions: Sequence[Session]) -> dict[str, float | None]:
    setups = [s.result["setup_ms"] for s in sessions if s.result.get("setup_ms") is not None]
    rtts = [r for s in sessions for r in s.rtts]
    return {
        "setup_ms_median": round(statistics.median(setups), 1) if setups else None,
        "setup_ms_max": max(setups) if setups else None,
        "rtt_ms_median": round(statistics.median(rtts), 1) if rtts else None,
        "rtt_ms_max": max(rtts) if rtts else None,
    }


def spoken_lines(sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per spoken turn: what was said and heard on each side (``--agent speech``)."""
    lines = []
    for s in sessions:
        for n, t in enumerate(s.get("turns", []), 1):
            if "said" not in t:
                continue
            mark = (
                "ok"
                if t.get("agent_heard") == t["said"] and t.get("client_heard") == t.get("agent_said")
                else "MISMATCH"
            )
            lines.append(
                f"  s{s['index']} t{n}: {t['said']!r} -> {t.get('agent_heard')!r} -> {t.get('agent_said')!r} "
                f"-> {t.get('client_heard')!r}  ({_num(t.get('rtt_ms'))} ms) {mark}"
            )
    return lines
