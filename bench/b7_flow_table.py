"""B7: the flow table at 10k / 100k / 1M entries: lookup cost, kernel memory per flow, eviction.

    .venv/bin/python -m bench.b7_flow_table [--quick] [--probes 2000] [--before REV] [--prefix P]
                                            [--out bench/results]

For each size the program is loaded with ``max_flows`` = that size (the relay host of
DATAPATH.md §9, BPF_PROG_TEST_RUN, pins of its own) and the ``flows`` map is filled to
capacity with distinct clients, alternately owned by two transceivers (B11, B12).
- cost: the median one-shot duration of a flow-hit forward, each probe a *different*
  random flow (cold hash buckets, as a full table sees them), and the same for a client
  with no flow (SLOW_NO_FLOW: a miss in ``flows`` and ``pending``); minus the
  2-instruction baseline. The difference to the 16-entry table is the cost of the size.
  "warm": the same flows, each timed on its second run right after the first: what the
  size costs once the flow's bucket and entry are cached (chain length, not misses).
- memory: the kernel's own accounting of the map (``memlock`` in the map fd's fdinfo)
  divided by its capacity.
- eviction: 10 % more flows are inserted into the full LRU map; then every probe of an
  evicted client must count SLOW_NO_FLOW (recovery from Redis) and every probe of a
  surviving one must leave for its own transceiver: 0 misforwarded.
``--before REV`` measures ``bpf/`` at git revision REV too, each size right before the
working tree's program (same minute); the table gives both.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.xdp_micro import load_xdp_pass, source_at
from controlplane.config import RelayLimits
from controlplane.datapath.store import Flow
from controlplane.kernel import libbpf as kernel
from icegate import inet, netns
from labkit import packets as pb
from labkit.bpf_harness import RelayHost, XdpRelay, relay_config, vectors

NAME = "b7_flow_table"
SIZES = (16, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (16, 10_000)
BACKENDS = (pb.B11, pb.B12)


def client(i: int) -> tuple[str, int]:
    """Distinct clients inside 100.64.0.0/10 (routed on the public side of the §9 host)."""
    return f"100.{64 + (i >> 22) % 64}.{(i >> 14) & 0xFF}.{(i >> 6) & 0xFF}", 10000 + (i & 0x3F)


def fill(xdp: XdpRelay, start: int, count: int) -> None:
    batch = []
    for i in range(start, start + count):
        c = client(i)
        b = BACKENDS[i % 2]
        batch.append(((inet.addr16(c[0]), c[1], 0), Flow(b.cluster, b.index, 0, 0, 0)))
        if len(batch) == 50_000:
            xdp.store.put_flows(batch)
            batch = []
    if batch:
        xdp.store.put_flows(batch)


def memlock(xdp: XdpRelay, name: str) -> int:
    fd = xdp.store.maps[name].fd
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def frame(i: int) -> bytes:
    return pb.from_client(pb.client_packet(client(i), pb.VIP4, pb.DTLS))


def probe(xdp: XdpRelay, indexes: list[int], base_ns: float, warm: bool = False) -> float:
    """Median duration of one run per flow; ``warm``: of a second run right after the first,
    so the flow's bucket and entry are in the caches and TLBs (the size's own cost)."""
    ifindex = xdp.host.ifindex["public"]
    frames = [frame(i) for i in indexes]
    durations = []
    with netns.entered(xdp.host.ns):
        for f in frames:
            if warm:
                kernel.prog_test_run(xdp.prog_fd, f, ingress_ifindex=ifindex)
            durations.append(kernel.prog_test_run(xdp.prog_fd, f, ingress_ifindex=ifindex).duration_ns)
    return float(statistics.median(durations)) - base_ns


def eviction(xdp: XdpRelay, size: int, probes: int) -> dict[str, int]:
    """Insert 10 % more flows into the full table, then check every probe's verdict."""
    extra = max(size // 10, 1)
    fill(xdp, size, extra)
    rng = random.Random(7)
    counts = {"evicted_slow": 0, "kept_own_backend": 0, "misforwarded": 0, "other": 0}
    for i in rng.sample(range(size + extra), min(probes, size + extra)):
        out = xdp.run(frame(i))
        if out.stat == "SLOW_NO_FLOW":
            counts["evicted_slow"] += 1
        elif out.stat == "FWD_FLOW" and out.output is not None:
            outer_dst = socket.inet_ntoa(bytes.fromhex(out.output)[16:20])  # outer IPv4 destination
            if outer_dst == BACKENDS[i % 2].address:
                counts["kept_own_backend"] += 1
            else:
                counts["misforwarded"] += 1
        else:
            counts["other"] += 1
    return counts


def measure_size(
    size: int, probes: int, source: Path | None = None, program: str = "current", prefix: str = "pb7"
) -> dict[str, Any]:
    host = RelayHost(f"{prefix}{os.getpid() % 1000}-", vectors()["topology"])
    limits = RelayLimits(max_flows=size, max_pending=1024, max_rate_sources=1024, events_pages=8)
    try:
        host.build()
        xdp = XdpRelay(host, relay_config(f"{prefix}-{os.getpid()}-{size}", vectors()["state"], limits))
        if source is not None:
            xdp.loader.source = source
        baseline_fd = load_xdp_pass()
        try:
            xdp.load()
            xdp.apply(vectors()["state"])
            fill(xdp, 0, size)
            rng = random.Random(1)
            hits = [rng.randrange(size) for _ in range(probes)]
            misses = [size * 4 + rng.randrange(1 << 20) for _ in range(probes)]
            assert xdp.run(frame(hits[0])).stat == "FWD_FLOW"
            assert xdp.run(frame(misses[0])).stat == "SLOW_NO_FLOW"
            with netns.entered(host.ns):
                base = statistics.median(
                    kernel.prog_test_run(
                        baseline_fd, frame(0), ingress_ifindex=host.ifindex["public"]
                    ).duration_ns
                    for _ in range(probes)
                )
            hit_ns = probe(xdp, hits, base)
            warm_ns = probe(xdp, hits, base, warm=True)
            # the slow-path bucket would turn misses into DROP_RATE_SLOW_PATH: same lookups
            miss_ns = probe(xdp, misses, base)
            entries = sum(1 for _ in xdp.store.flows())
            row = {
                "program": program,
                "loadavg": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
                "size": size,
                "entries": entries,
                "flow_hit_ns": hit_ns,
                "flow_hit_warm_ns": warm_ns,
                "no_flow_ns": miss_ns,
                "memlock_bytes": memlock(xdp, "flows"),
                "bytes_per_flow": round(memlock(xdp, "flows") / size, 1),
                "eviction": eviction(xdp, size, min(probes, 2000)),
            }
        finally:
            os.close(baseline_fd)
            xdp.close()
    finally:
        host.remove()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = []
    for program in dict.fromkeys(r.get("program", "current") for r in rows):
        mine = [r for r in rows if r.get("program", "current") == program]
        small = mine[0]
        for r in mine:
            ev = r["eviction"]
            out.append(
                (
                    program,
                    f"{r['size']:,}",
                    f"{r['entries']:,}",
                    f"{r['flow_hit_ns']:.0f}",
                    f"{r['flow_hit_ns'] - small['flow_hit_ns']:+.0f}",
                    f"{r.get('flow_hit_warm_ns', 0):.0f}",
                    f"{r['no_flow_ns']:.0f}",
                    f"{r['bytes_per_flow']:.0f}",
                    f"{ev['evicted_slow']} / {ev['kept_own_backend']} / {ev['misforwarded']}",
                )
            )
    return report.markdown_table(
        (
            "program",
            "max_flows",
            "entries",
            "flow hit ns",
            "vs smallest",
            "flow hit ns, warm",
            "no flow ns",
            "kernel B/flow",
            "after +10 %: slow / own backend / misforwarded",
        ),
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 and 10k entries, 200 probes")
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--before", help="also measure bpf/ at this git revision, size by size")
    parser.add_argument("--prefix", default="pb7", help="namespace name prefix (default pb7)")
    parser.add_argument("--sizes", help="comma-separated table sizes (default 16,10000,100000,1000000)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    sizes: tuple[int, ...] = QUICK_SIZES if args.quick else SIZES
    probes = 200 if args.quick else args.probes
    if args.sizes and not args.quick:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="b7-") as tmp:
        before = source_at(args.before, Path(tmp)) if args.before else None
        for size in sizes:
            if before is not None:
                rows.append(measure_size(size, probes, before, f"before ({args.before})", args.prefix))
            rows.append(measure_size(size, probes, prefix=args.prefix))
    rows.sort(key=lambda r: r["program"] != "current")
    text = table(rows)
    report.write(NAME, {"rows": rows, "quick": args.quick, "before": args.before}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
