"""B10: junk and forged-token floods at the VIP while calls run: the calls' loss.

    .venv/bin/python -m bench.b10_floods [--quick] [--seconds 5] [--out bench/results]

The bench lab (bench/lab/netlab.py) with the XDP relay: "calls" are 64 confirmed flows
carrying DTLS-sized media at 10 kpps in all (the C generator, 64 source ports) to the
transceiver sink; at the same time a second generator floods the VIP from 64 other
ports with (a) junk (first byte 99: DROP_NOT_WEBRTC) or (b) STUN Binding requests whose
route token fails its MAC (DROP_TOKEN_MAC), at the highest rate it can reach. Reported:
the calls' loss (target < 0.1 %), the flood's rate and what the relay counted for it,
and whether any confirmed flow was evicted (target: none).
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl
from controlplane.datapath.layout import Stat
from labkit.packets import T_FORGED

NAME = "b10_floods"
CALL_PPS = 10_000
FLOOD_PPS = (100_000, 300_000)
SIZE = 172
FLOOD_BASE_PORT = 40000


def run(seconds: float, floods: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    with nl.bench_lab("pb10") as lab, nl.xdp_relay(lab) as target:
        store = target.store
        for kind, prefix in (("junk", "63"), ("forged token", nl.check_prefix(T_FORGED, SIZE))):
            for flood_pps in floods:
                before = store.counters()
                flows_before = sum(1 for _ in store.flows())
                flood: dict[str, Any] = {}

                def blast(out: dict[str, Any] = flood, pps: int = flood_pps, pfx: str = prefix) -> None:
                    source = (lab.gen_ns, nl.GEN_IP, FLOOD_BASE_PORT)
                    out["gen"] = lab.gen(nl.VIP, nl.VIP_PORT, pps, seconds + 1, SIZE, pfx, 64, source)

                thread = threading.Thread(target=blast)
                thread.start()
                row = nl.measure(lab, target, CALL_PPS, SIZE, seconds)
                thread.join()
                after = store.counters()
                moved = {
                    Stat(i).name: a[0] - b[0]
                    for i, (a, b) in enumerate(zip(after, before, strict=True))
                    if a != b
                }
                row.update(
                    flood=kind,
                    flood_offered_pps=flood_pps,
                    flood_sent_pps=round(flood["gen"].pps, 1),
                    counters=moved,
                    flows_before=flows_before,
                    flows_after=sum(1 for _ in store.flows()),
                    loadavg=nl.loadavg(),
                )
                print(row, flush=True)
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    return report.markdown_table(
        (
            "flood",
            "offered pps",
            "flood reached pps",
            "relay counted (drops)",
            "calls' loss",
            "flows before/after",
        ),
        [
            (
                r["flood"],
                f"{r['flood_offered_pps']:,}",
                f"{r['flood_sent_pps']:,.0f}",
                ", ".join(f"{k} {v:,}" for k, v in r["counters"].items() if k.startswith("DROP")),
                f"{(r['loss'] or 0) * 100:.3f}%",
                f"{r['flows_before']} / {r['flows_after']}",
            )
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one flood rate, 1 s (smoke)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    rows = run(1.0, FLOOD_PPS[:1]) if args.quick else run(args.seconds, FLOOD_PPS)
    text = table(rows)
    report.write(NAME, {"rows": rows, "call_pps": CALL_PPS, "quick": args.quick}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
