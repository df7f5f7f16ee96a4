"""Restoring flows into the real pinned ``flows`` map: the target "≤20 ms for 10k flows" (root).

    .venv/bin/python -m bench.flow_restore [--flows 10000] [--rounds 20] [--out bench/results]

Loads ``bpf/relay.c`` with the production loader and default limits into pins of its own
(removed afterwards; nothing is attached), then times, round-robin so that drift hits
every method alike and on an emptied map each time, the median and best of:

- ``KernelStore.put_flows``: what a cold start calls (``Recovery.preload``, the slow
  path), from ``store.Flow`` values to the kernel;
- its two parts: packing keys and values (``controlplane.kernel.maps.pack_flows``) and the batch
  syscall alone (``PinnedMap.update_batch_raw`` of packed buffers);
- ``ctypes structs``: one ctypes key and value per flow, then ``PinnedMap.update_batch``,
  which is how ``put_flows`` worked before it packed the buffers itself.

Reading the flows from Redis is not part of the target (``Recovery.preload`` reports it
separately).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from controlplane.datapath.store import Flow, FlowKeyT
from controlplane.kernel.maps import KernelStore, flow_key_struct, flow_value_struct, pack_flows
from icegate.inet import addr16
from labkit.support import pinned_relay

NAME = "flow_restore"
TARGET_MS = 20.0  # target for restoring 10k flows from the flow cache (README: Benchmarks)
PARTS = ("put_flows, part: packing (pack_flows)", "put_flows, part: batch syscall (update_batch_raw)")


def flows(n: int) -> list[tuple[FlowKeyT, Flow]]:
    """``n`` distinct clients on one VIP, two backends, realistic times and counters."""
    now = time.monotonic_ns()
    return [
        (
            (addr16(f"100.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"), 40000 + i % 20000, 0),
            Flow(1, 1 + i % 2, i, now - 10**9, now, 500, 80_000, 480, 77_000),
        )
        for i in range(n)
    ]


def measure(store: KernelStore, items: list[tuple[FlowKeyT, Flow]], rounds: int) -> dict[str, list[float]]:
    """Seconds per method and round; every method starts from an empty map."""
    flows_map = store.maps["flows"]
    keys, values = pack_flows(items)
    methods: dict[str, Callable[[], Any]] = {
        "KernelStore.put_flows": lambda: store.put_flows(items),
        PARTS[0]: lambda: pack_flows(items),
        PARTS[1]: lambda: flows_map.update_batch_raw(keys, values),
        "before: ctypes structs + update_batch": lambda: flows_map.update_batch(
            [(flow_key_struct(k), flow_value_struct(f)) for k, f in items]
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            store.flush_flows()
            started = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - started)
            if name != PARTS[0] and sum(1 for _ in store.flows()) != len(items):
                raise RuntimeError(f"{name} did not install {len(items)} flows")
    store.flush_flows()
    return times


def table(times: dict[str, list[float]], n: int) -> str:
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds) * 1e3
        share = "" if name in PARTS else f"{median / (TARGET_MS * n / 10_000):.2f}"
        rows.append((name, f"{median:.1f}", f"{min(seconds) * 1e3:.1f}", share))
    return report.markdown_table((f"{n} flows", "median ms", "best ms", "of B8 target (20 ms per 10k)"), rows)


def write_results(
    times: dict[str, list[float]], n: int, rounds: int, out_dir: Path = report.RESULTS
) -> tuple[Path, Path]:
    data = {
        "flows": n,
        "rounds": rounds,
        "target_ms_per_10k": TARGET_MS,
        "median_ms": {name: statistics.median(s) * 1e3 for name, s in times.items()},
        "best_ms": {name: min(s) * 1e3 for name, s in times.items()},
    }
    return report.write(NAME, data, table(times, n), out_dir)


def run(n: int, rounds: int) -> dict[str, list[float]]:
    """Load the program into fresh pins, measure, and remove the pins again."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    with pinned_relay(f"bench-restore-{os.getpid()}") as store:
        return measure(store, flows(n), rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    times = run(args.flows, args.rounds)
    write_results(times, args.flows, args.rounds, args.out)
    print(table(times, args.flows), end="")


if __name__ == "__main__":
    main()
