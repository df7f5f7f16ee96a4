"""B2: latency added by the relay against no relay, p50 and p99, at 100 pps and 10 kpps.

    .venv/bin/python -m bench.b2_latency [--quick] [--seconds 5] [--rounds 3] [--out bench/results]

The bench lab (bench/lab/netlab.py): the C generator stamps every packet with
CLOCK_MONOTONIC (one clock for all namespaces) and the C sink subtracts it on receipt,
so a sample is one-way, generator syscall to sink wake-up. "direct" is the same path with
the kernel routing in the relay namespace and no relay; each peer's added latency is its
median p50/p99 over alternating rounds minus direct's in the same rounds. Peers: XDP, the
twin (uvloop), coturn (TURN ChannelData), the C recvmmsg/sendmmsg forwarder.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl

NAME = "b2_latency"
RATES = (100, 10_000)
SIZE = 172


def peers(lab: nl.BenchLab) -> dict[str, Callable[[], AbstractContextManager[nl.Target]]]:
    return {
        "direct": lambda: nl.kernel_forwarding(lab),
        "xdp": lambda: nl.xdp_relay(lab),
        "twin (uvloop)": lambda: nl.twin_relay(lab, "uvloop"),
        "coturn": lambda: nl.coturn_relay(lab, SIZE),
        "C forwarder": lambda: nl.c_forwarder(lab),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rate in sorted({r["offered_pps"] for r in rows}):
        base = [r for r in rows if r["peer"] == "direct" and r["offered_pps"] == rate]
        b50 = statistics.median(r["p50_us"] for r in base)
        b99 = statistics.median(r["p99_us"] for r in base)
        for peer in dict.fromkeys(r["peer"] for r in rows):
            mine = [r for r in rows if r["peer"] == peer and r["offered_pps"] == rate]
            p50 = statistics.median(r["p50_us"] for r in mine)
            p99 = statistics.median(r["p99_us"] for r in mine)
            out.append(
                {
                    "peer": peer,
                    "pps": rate,
                    "p50_us": p50,
                    "p99_us": p99,
                    "added_p50_us": round(p50 - b50, 2),
                    "added_p99_us": round(p99 - b99, 2),
                    "loss": max(r["loss"] or 0 for r in mine),
                }
            )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    return report.markdown_table(
        ("relay", "pps", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs", "loss"),
        [
            (
                s["peer"],
                s["pps"],
                f"{s['p50_us']:.1f}",
                f"{s['p99_us']:.1f}",
                f"{s['added_p50_us']:+.1f}",
                f"{s['added_p99_us']:+.1f}",
                f"{s['loss'] * 100:.2f}%",
            )
            for s in summary
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of 1 s (smoke)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    rows = []
    with nl.bench_lab("pb2") as lab:
        for rnd in range(rounds):
            for name, make in peers(lab).items():
                with make() as target:
                    for rate in RATES:
                        row = nl.measure(lab, target, rate, SIZE, seconds)
                        row.update(peer=name, round=rnd, loadavg=nl.loadavg())
                        print(row, flush=True)
                        rows.append(row)
    summary = summarize(rows)
    text = table(summary)
    report.write(NAME, {"rows": rows, "summary": summary, "quick": args.quick}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
