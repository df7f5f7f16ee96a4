"""The XDP program's cost in place, per path, from 100 pps to 100 kpps (bpf_stats).

    .venv/bin/python -m bench.profile_xdp [--quick] [--seconds 3] [--out bench/results]

The bench lab (bench/lab/netlab.py) with the XDP relay attached in native mode to real
veths; the C generator sends each path's packets at a fixed rate, and the kernel's own
accounting of the attached program (``kernel.bpf_stats_enabled``: run_time_ns and
run_cnt, read before and after) gives the ns per packet *in place*, caches as the
traffic leaves them. Paths: a flow hit (DTLS from the client to the VIP: Geneve out), a
return (Geneve from the transceiver: decapsulated to the client), a drop (junk at the
VIP: DROP_NOT_WEBRTC). Low rates show the cold-cache cost that BPF_PROG_TEST_RUN hides.
Each path and rate is measured with the next-hop cache (bpf/nexthop.h) and without it
(``-DNEXTHOP_CACHE=0``: bpf_fib_lookup for every packet), in alternating rounds; the
table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl
from icegate import geneve, inet

NAME = "profile_xdp"
RATES = (100, 1_000, 10_000, 30_000, 100_000)
QUICK_RATES = (1_000,)
SIZE = 172
RETURN_SOURCE_PORT = 7000


def return_prefix(size: int) -> str:
    """Geneve + inner IPv4/UDP (VIP:3478 -> client) + the RTP first bytes, for a Geneve
    payload of ``size`` bytes; the generator writes the rest. Inner UDP checksum 0 (IPv4:
    none), so the generator's bytes after the prefix keep the packet valid."""
    inner_payload = bytes([0x80, 0x6F]) + bytes(size - nl.GENEVE_INNER - 2)
    inner = inet.build_udp(nl.VIP, nl.VIP_PORT, nl.GEN_IP, nl.BASE_PORT, inner_payload, with_checksum=False)
    return geneve.encapsulate(inner, 1)[: nl.GENEVE_INNER + 2].hex()


def one(lab: nl.BenchLab, target: nl.Target, path: str, pps: int, seconds: float) -> dict[str, Any]:
    assert target.prog_id is not None
    at: tuple[str, str, int] | None = None
    source: tuple[str, str, int] | None = None
    dst, dport, prefix, nports = nl.VIP, nl.VIP_PORT, nl.DTLS_PREFIX, 64
    if path == "return":
        at = (lab.gen_ns, nl.GEN_IP, nl.BASE_PORT)
        source = (lab.sink_ns, nl.SINK_IP, RETURN_SOURCE_PORT)
        dst, dport, prefix, nports = nl.TUNNEL_IP, nl.SINK_PORT, return_prefix(SIZE), 1
    elif path == "drop":
        prefix = "63"  # first byte 99: no RFC 7983 class, DROP_NOT_WEBRTC
    with lab.sink(seconds + 5, -1, at) as received:
        t0, n0 = nl.bpf_stats(target.prog_id)
        sent = lab.gen(dst, dport, pps, seconds, SIZE, prefix, nports, source)
        t1, n1 = nl.bpf_stats(target.prog_id)
    runs = n1 - n0
    return {
        "path": path,
        "offered_pps": pps,
        "sent": sent.sent,
        "gen_kept_up": sent.errors == 0 and sent.pps >= 0.98 * pps,
        "delivered": received.get("received", 0),
        "runs": runs,
        "ns_per_pkt": round((t1 - t0) / runs, 1) if runs else None,
        "loadavg": nl.loadavg(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    rates = sorted({r["offered_pps"] for r in rows})
    out = []
    for cache in (True, False):
        for path in ("flow hit", "return", "drop"):
            cells = []
            for rate in rates:
                costs = [
                    r["ns_per_pkt"]
                    for r in rows
                    if r["path"] == path
                    and r["offered_pps"] == rate
                    and r["nexthop_cache"] == cache
                    and r["ns_per_pkt"]
                ]
                cells.append(f"{statistics.median(costs):.0f}" if costs else "-")
            out.append((path, "cache" if cache else "no cache (before)", *cells))
    return report.markdown_table(("path", "next hop", *(f"{r:,} pps" for r in rates)), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one rate, 1 s (smoke)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    rates, seconds, rounds = (QUICK_RATES, 1.0, 1) if args.quick else (RATES, args.seconds, args.rounds)
    rows = []
    with nl.bench_lab("ppx") as lab, nl.bpf_stats_enabled():
        for rnd in range(rounds):
            for cache in (True, False):
                with nl.xdp_relay(lab, nexthop_cache=cache) as target:
                    for rate in rates:
                        for path in ("flow hit", "return", "drop"):
                            row = one(lab, target, path, rate, seconds)
                            row.update(nexthop_cache=cache, round=rnd)
                            print(row, flush=True)
                            rows.append(row)
    text = table(rows)
    report.write(NAME, {"rows": rows, "size": SIZE, "quick": args.quick}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
