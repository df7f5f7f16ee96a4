"""Where the XDP program's time goes in place, by function, at several loads (perf).

    .venv/bin/python -m bench.perf_xdp [--quick] [--paths "flow hit,return"] [--rates 10000,30000,100000]
                                       [--seconds 10] [--period 49991] [--prefix P] [--out bench/results]

The bench lab with the XDP relay attached (as in ``bench/profile_xdp.py``, whose paths it
sends). For each rate the C generator sends the path's packets while ``perf record -a -g
-e cpu-clock`` samples both CPUs (this VM has no PMU: a timer samples, every
``PERIOD_NS``). The generator's CPU, where veth runs the program, is kept busy by a
spinner at nice 19 (``netlab.cpu_kept_busy``), so the profile is of the program with its
CPU awake (the figure ``profile_xdp --busy`` measures). A sample whose call chain passes
through the attached program (``bpf_prog_<tag>_xdp_relay``: the JIT image's symbol, with
``net.core.bpf_jit_kallsyms=1``) is the program's, and is charged to its innermost
function: the program's own instructions, or a kernel function it called (the hash maps'
``htab_map_hash``, ``lookup_nulls_elem_raw``, ``memcmp``; helpers). ns per packet of a
function = its samples times the sampling period / the packets the program ran on
(bpf_stats, the same window).

The sum of the functions is set beside the kernel's own ``run_time_ns / run_cnt`` of that
window: two separate measurements of one figure. At 30 and 100 kpps they agree within a
few per cent. At 10 kpps the timer samples see only 15-20 % of the program's time with the
vCPU halting between packets, and 50-70 % with it kept busy: the samples are not spread
evenly over work that follows a wake-up, so that column gives proportions, not times.
Sampling at ~20 kHz with call chains costs the program itself: read the split, not the
absolute ns, which ``profile_xdp`` gives without perf.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl
from bench.profile_xdp import PATHS, SIZE, configured_for, traffic

NAME = "perf_xdp"
RATES = (10_000, 30_000, 100_000)
QUICK_RATES = (100_000,)  # the smoke run: a load at which the samples match bpf_stats closely
OWN = "the program's own instructions"
PROGRAM_SYMBOL = re.compile(r"^bpf_prog_[0-9a-f]+_xdp_relay")
TOP = 10  # functions named in the table; the rest are summed as "other"
# A sample every 49,991 ns of CPU time (~20 kHz), a prime, so that the samples' phase to
# the generator's round wake-up intervals (400 us at 10 kpps) sweeps.
PERIOD_NS = 49_991


def chains(script: str) -> list[list[str]]:
    """``perf script`` output (callchains) -> one list of symbols per sample, innermost first."""
    out: list[list[str]] = []
    frames: list[str] | None = None
    for line in script.splitlines():
        if not line.strip():
            if frames is not None:
                out.append(frames)
            frames = None
        elif not line[0].isspace():
            frames = []  # a sample's header line
        elif frames is not None:
            # "\t ffffffffc0a1b2c3 htab_map_hash+0x1d ([kernel.kallsyms])"
            parts = line.split(None, 1)
            symbol = parts[1].rsplit(" (", 1)[0] if len(parts) > 1 else "[unknown]"
            frames.append(symbol.split("+0x", 1)[0])
    if frames is not None:
        out.append(frames)
    return out


def charge(samples: list[list[str]]) -> Counter[str]:
    """The program's samples by innermost function (``OWN`` for its own instructions)."""
    found: Counter[str] = Counter()
    for frames in samples:
        at = next((i for i, symbol in enumerate(frames) if PROGRAM_SYMBOL.match(symbol)), None)
        if at is not None:
            found[OWN if at == 0 else frames[0]] += 1
    return found


def record(lab: nl.BenchLab, target: nl.Target, path: str, pps: int, seconds: float, period_ns: int,
           tmp: Path) -> dict[str, Any]:  # fmt: skip
    assert target.prog_id is not None
    t = traffic(lab, path)
    data = tmp / f"perf-{path.replace(' ', '-')}-{pps}.data"
    argv = ["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock", "-c", str(period_ns), "-o", str(data)]
    perf = subprocess.Popen(
        [*argv, "--", "sleep", str(seconds + 1.0)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # perf has opened its events
    with configured_for(target, path), lab.sink(seconds + 5, -1, t.at):
        t0, n0 = nl.bpf_stats(target.prog_id)
        sent = lab.gen(t.dst, t.dport, pps, seconds, SIZE, t.prefix, t.nports, t.source)
        t1, n1 = nl.bpf_stats(target.prog_id)
    _, err = perf.communicate(timeout=seconds + 60)
    if perf.returncode != 0:
        raise RuntimeError(f"perf record failed ({perf.returncode}): {err.strip()[-500:]}")
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,time,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples = chains(script)
    found = charge(samples)
    runs = n1 - n0
    per_packet = {fn: round(n * period_ns / runs, 1) for fn, n in found.most_common()} if runs else {}
    return {
        "path": path,
        "offered_pps": pps,
        "sent": sent.sent,
        "gen_kept_up": sent.errors == 0 and sent.pps >= 0.98 * pps,
        "runs": runs,
        "period_ns": period_ns,
        "samples_all": len(samples),
        "samples_program": sum(found.values()),
        "ns_per_pkt_bpf_stats": round((t1 - t0) / runs, 1) if runs else None,
        "ns_per_pkt_sampled": round(sum(found.values()) * period_ns / runs, 1) if runs else None,
        "functions_ns_per_pkt": per_packet,
        "loadavg": nl.loadavg(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """One table per path: ns per packet of the top functions at each rate."""
    out = []
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        totals: Counter[str] = Counter()
        for r in mine:
            totals.update(r["functions_ns_per_pkt"])
        named = [fn for fn, _ in totals.most_common(TOP)]
        lines = [(fn, *(f"{r['functions_ns_per_pkt'].get(fn, 0.0):.0f}" for r in mine)) for fn in named]
        lines.append(("other", *(
            f"{sum(v for k, v in r['functions_ns_per_pkt'].items() if k not in named):.0f}" for r in mine
        )))  # fmt: skip
        lines.append(("**sum of the samples**", *(f"**{r['ns_per_pkt_sampled']:.0f}**" for r in mine)))
        lines.append(("bpf_stats (run_time / run_cnt)", *(f"{r['ns_per_pkt_bpf_stats']:.0f}" for r in mine)))
        lines.append(("program samples", *(str(r["samples_program"]) for r in mine)))
        columns = (f"{path}: ns per packet by function", *(f"{r['offered_pps']:,} pps" for r in mine))
        out.append(report.markdown_table(columns, lines))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 kpps for 2 s (smoke)")
    parser.add_argument("--paths", default="flow hit,return", help=f"comma-separated, of: {', '.join(PATHS)}")
    parser.add_argument("--rates", help="comma-separated packet rates (default 10000,30000,100000)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--period", type=int, default=PERIOD_NS, help=f"ns between samples ({PERIOD_NS})")
    parser.add_argument("--prefix", default="pfx", help="lab namespace prefix (default pfx)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    rates: tuple[int, ...] = QUICK_RATES if args.quick else RATES
    seconds = 2.0 if args.quick else args.seconds
    paths = ["flow hit"] if args.quick else args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        parser.error(f"--paths: no such path {', '.join(sorted(unknown))} (one of {', '.join(PATHS)})")
    if args.rates and not args.quick:
        rates = tuple(int(r) for r in args.rates.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="perf-xdp-") as tmp:
        os.chmod(tmp, 0o700)
        with (
            nl.bench_lab(args.prefix) as lab,
            nl.bpf_stats_enabled(),
            nl.xdp_relay(lab) as target,
            nl.cpu_kept_busy(nl.GEN_CPU),
        ):
            for path in paths:
                for rate in rates:
                    row = record(lab, target, path, rate, seconds, args.period, Path(tmp))
                    print({k: v for k, v in row.items() if k != "functions_ns_per_pkt"}, flush=True)
                    rows.append(row)
    text = table(rows)
    report.write(NAME, {"rows": rows, "size": SIZE, "quick": args.quick}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
