"""The XDP program's cost in place, per path, from 100 pps to 100 kpps (bpf_stats).

    .venv/bin/python -m bench.profile_xdp [--quick] [--seconds 3] [--before REV] [--uncached] [--busy]
                                          [--prefix P] [--out bench/results]

The bench lab (bench/lab/netlab.py) with the XDP relay attached in native mode to real
veths; the C generator sends each path's packets at a fixed rate, and the kernel's own
accounting of the attached program (``kernel.bpf_stats_enabled``: run_time_ns and
run_cnt, read before and after) gives the ns per packet *in place*, caches as the
traffic leaves them. Paths: a flow hit (DTLS from the client to the VIP: Geneve out), a
return (Geneve from the transceiver: decapsulated to the client), a first STUN (a Binding
request with a valid route token from one of 1,024 client ports: token check, rate
buckets, a new pending flow, Geneve out; the bench sets a 1 ns pending timeout, so a
port's earlier pending entry, where the LRU map still holds one, has expired and every
check is a new flow, which the relay's FWD_NEW_FLOW counter confirms), a drop (junk at
the VIP: DROP_NOT_WEBRTC). Low rates show the cold-cache cost that BPF_PROG_TEST_RUN hides.
Each path and rate is measured for each program in alternating rounds: the working
tree's, ``bpf/`` at git revision ``--before REV``, and the working tree's with the
next-hop cache (bpf/nexthop.h) compiled out (``-DNEXTHOP_CACHE=0``: bpf_fib_lookup for
every packet; ``--uncached``, the default without ``--before``). With ``--busy`` the
working tree's program is measured once more with the generator's CPU (where veth runs the
program) kept busy by a spinner at nice 19: the vCPU then never halts between packets,
which separates the cost of waking from idle (caches and TLB another guest or the host
used meanwhile) from the program's own. The table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl
from bench.xdp_micro import source_at
from controlplane.datapath.layout import Stat
from controlplane.datapath.store import RateConfig
from controlplane.kernel.loader import Loader
from icegate import geneve, inet, token

NAME = "profile_xdp"
RATES = (100, 1_000, 10_000, 30_000, 100_000)
QUICK_RATES = (1_000,)
SIZE = 172
# The transceiver's registered Geneve port: §3 r7 drops a return from any other port
# (DROP_RETURN_WRONG_BACKEND), and with 7000 here every "return" was that drop.
RETURN_SOURCE_PORT = nl.SINK_PORT
PATHS = ("flow hit", "return", "first STUN", "drop")
STUN_BASE_PORT = 41000  # clear of the installed flows' ports (nl.BASE_PORT + 0..63)
STUN_PORTS = 1024  # the generator's most


def return_prefix(size: int) -> str:
    """Geneve + inner IPv4/UDP (VIP:3478 -> client) + the RTP first bytes, for a Geneve
    payload of ``size`` bytes; the generator writes the rest. Inner UDP checksum 0 (IPv4:
    none), so the generator's bytes after the prefix keep the packet valid."""
    inner_payload = bytes([0x80, 0x6F]) + bytes(size - nl.GENEVE_INNER - 2)
    inner = inet.build_udp(nl.VIP, nl.VIP_PORT, nl.GEN_IP, nl.BASE_PORT, inner_payload, with_checksum=False)
    return geneve.encapsulate(inner, 1)[: nl.GENEVE_INNER + 2].hex()


@dataclass(frozen=True)
class Program:
    """One program of the comparison: its label, its ``bpf/`` folder, the cache on or off."""

    label: str
    source: Path | None = None  # None: the working tree's
    nexthop_cache: bool = True
    busy: bool = False  # the generator's CPU kept busy (--busy)


@contextlib.contextmanager
def attached(lab: nl.BenchLab, program: Program) -> Iterator[nl.Target]:
    """``netlab.xdp_relay`` for a program from another ``bpf/`` folder (``--before``)."""
    if program.source is None:
        with nl.xdp_relay(lab, nexthop_cache=program.nexthop_cache) as target:
            yield target
        return
    loader_class = Loader if program.nexthop_cache else nl.UncachedLoader
    real = nl.Loader
    # netlab builds its loader from this name: swap in one bound to the other folder
    nl.Loader = lambda config: loader_class(config, program.source)  # type: ignore[misc,assignment]
    try:
        with nl.xdp_relay(lab) as target:
            yield target
    finally:
        nl.Loader = real  # type: ignore[misc]


@dataclass(frozen=True)
class Traffic:
    """What the generator sends for one path: to ``dst:dport``, payloads starting with
    ``prefix``, from ``nports`` ports (``source``: namespace, address, first port; None:
    the generator's own); ``at``: where the sink listens (None: the transceiver's tunnel)."""

    dst: str
    dport: int
    prefix: str
    nports: int
    source: tuple[str, str, int] | None = None
    at: tuple[str, str, int] | None = None


def traffic(lab: nl.BenchLab, path: str) -> Traffic:
    if path == "flow hit":
        return Traffic(nl.VIP, nl.VIP_PORT, nl.DTLS_PREFIX, 64)
    if path == "return":
        source = (lab.sink_ns, nl.SINK_IP, RETURN_SOURCE_PORT)
        at = (lab.gen_ns, nl.GEN_IP, nl.BASE_PORT)
        return Traffic(nl.TUNNEL_IP, nl.SINK_PORT, return_prefix(SIZE), 1, source, at)
    if path == "first STUN":
        prefix = nl.check_prefix(token.mint(0, nl.KEY, 1, 1), SIZE)
        return Traffic(nl.VIP, nl.VIP_PORT, prefix, STUN_PORTS, (lab.gen_ns, nl.GEN_IP, STUN_BASE_PORT))
    if path == "drop":  # first byte 99: no RFC 7983 class, DROP_NOT_WEBRTC
        return Traffic(nl.VIP, nl.VIP_PORT, "63", 64)
    raise ValueError(f"no such path: {path!r} (one of {', '.join(PATHS)})")


@contextlib.contextmanager
def configured_for(target: nl.Target, path: str) -> Iterator[None]:
    """The first STUN path needs every check to be a new flow: a 1 ns pending timeout
    while it runs, so a port's earlier pending entry has always expired."""
    store = target.store
    tunnel, rates = store.tunnel(), store.rate_config()
    if path == "first STUN":
        store.set_config(tunnel, RateConfig(pending_timeout_ns=1))
    try:
        yield
    finally:
        store.set_config(tunnel, rates)


def one(lab: nl.BenchLab, target: nl.Target, path: str, pps: int, seconds: float) -> dict[str, Any]:
    assert target.prog_id is not None
    t = traffic(lab, path)
    store = target.store
    with configured_for(target, path), lab.sink(seconds + 5, -1, t.at) as received:
        before = store.counters()[Stat.FWD_NEW_FLOW][0]
        t0, n0 = nl.bpf_stats(target.prog_id)
        sent = lab.gen(t.dst, t.dport, pps, seconds, SIZE, t.prefix, t.nports, t.source)
        t1, n1 = nl.bpf_stats(target.prog_id)
        new_flows = store.counters()[Stat.FWD_NEW_FLOW][0] - before
    runs = n1 - n0
    return {
        "path": path,
        "offered_pps": pps,
        "sent": sent.sent,
        "gen_kept_up": sent.errors == 0 and sent.pps >= 0.98 * pps,
        "delivered": received.get("received", 0),
        "new_flows": new_flows,
        # the forwarding paths are what they say only when the sink got what was sent
        # (and, for the first STUN, when each was a new flow)
        "path_checked": path == "drop"
        or (
            received.get("received", 0) >= 0.98 * sent.sent
            and (path != "first STUN" or new_flows >= 0.98 * sent.sent)
        ),
        "runs": runs,
        "ns_per_pkt": round((t1 - t0) / runs, 1) if runs else None,
        "loadavg": nl.loadavg(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    rates = sorted({r["offered_pps"] for r in rows})
    programs = list(dict.fromkeys(r["program"] for r in rows))
    out = []
    for program in programs:
        for path in PATHS:
            cells = []
            for rate in rates:
                same = [
                    r for r in rows if (r["path"], r["offered_pps"], r["program"]) == (path, rate, program)
                ]
                costs = [r["ns_per_pkt"] for r in same if r["ns_per_pkt"]]
                cell = f"{statistics.median(costs):.0f}" if costs else "-"
                if not all(r.get("path_checked", True) for r in same):
                    cell += " (not delivered)"  # timed a different path than named
                cells.append(cell)
            out.append((path, program, *cells))
    return report.markdown_table(("path", "program", *(f"{r:,} pps" for r in rates)), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one rate, 1 s (smoke)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rates", help="comma-separated packet rates (default 100,1000,10000,30000,100000)")
    parser.add_argument("--before", help="also measure bpf/ at this git revision")
    parser.add_argument("--uncached", action="store_true", help="also measure without the next-hop cache")
    parser.add_argument("--busy", action="store_true", help="also measure with the generator's CPU kept busy")
    parser.add_argument("--prefix", default="ppx", help="lab namespace prefix (default ppx)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    rates: tuple[int, ...] = QUICK_RATES if args.quick else RATES
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    if args.rates and not args.quick:
        rates = tuple(int(r) for r in args.rates.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="profile-xdp-") as tmp:
        programs = [Program("current")]
        if args.before:
            programs.append(Program(f"before ({args.before})", source_at(args.before, Path(tmp))))
        if args.uncached or not args.before:
            programs.append(Program("no next-hop cache", nexthop_cache=False))
        if args.busy:
            programs.append(Program("current, CPU kept busy", busy=True))
        with nl.bench_lab(args.prefix) as lab, nl.bpf_stats_enabled():
            for rnd in range(rounds):
                for program in programs:
                    busy = nl.cpu_kept_busy(nl.GEN_CPU) if program.busy else contextlib.nullcontext()
                    with attached(lab, program) as target, busy:
                        for rate in rates:
                            for path in PATHS:
                                row = one(lab, target, path, rate, seconds)
                                row.update(
                                    program=program.label, nexthop_cache=program.nexthop_cache, round=rnd
                                )
                                print(row, flush=True)
                                rows.append(row)
    text = table(rows)
    data = {"rows": rows, "size": SIZE, "quick": args.quick, "before": args.before}
    report.write(NAME, data, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
