"""A node loss at fleet scale, replayed against a real Redis: recovery throughput and gap tail.

    .venv/bin/python -m bench.fleet_sim [--flows 100000] [--nodes 3] [--slow-pps 5000] [--out bench/results]

What is real: a redis-server holding ``--flows`` cached flows (written with the control plane's
``RedisStore.put_flows``, timed: Redis writes per new session), and on every surviving node the
control plane's own :class:`~controlplane.cluster.recovery.Recovery` (pipelined lookups, batch
installs into its maps). What is modelled: the datapath in front of it, per node:

- ECMP: every flow hashes to a node; ``threshold`` cuts the hash space into N equal ranges
  (losing one re-cuts all of them), ``resilient`` is a table of 128 buckets (losing a node
  re-assigns only its buckets) — the two flavours of ``lab up --ecmp``;
- every moved flow sends a packet every 20 ms (audio) with a random phase, from the moment
  of the loss (routing detection time not included);
- the XDP program hands packets without a flow to userspace through its slow-path token
  bucket (``rate.slow_path_pps`` per CPU, ``--cpus`` CPUs): the rest are dropped, counted,
  and that flow tries again 20 ms later.

A flow's media gap is the time from the loss to its flow being installed on its new node,
plus the 20 ms until its next packet. Reported per ECMP flavour: flows moved, recovery time
(last flow installed), throughput, and the gap's median, p99 and max.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from controlplane.cluster.recovery import Recovery
from controlplane.cluster.redisio import RedisStore
from controlplane.config import RedisConfig
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, FlowKeyT, MemoryStore, Vip
from icegate.inet import addr16
from icegate.schema import CachedFlow
from labkit.support import Processes, redis_server

NAME = "fleet_sim"
VIP = ("192.0.2.10", 3478)
FRAME_S = 0.020
BUCKETS = 128


@dataclass(frozen=True)
class Result:
    ecmp: str
    moved: int
    recovered: int
    recovery_s: float
    per_s: float
    gap_median_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    slow_path_dropped: int


def client(i: int) -> tuple[str, int]:
    return f"100.{64 + i // 60000}.{i // 240 % 250}.{i % 240 + 1}", 20000 + i % 40000


def hash_of(i: int) -> float:
    return random.Random(i * 7919).random()  # a stable stand-in for the L4 hash


def node_threshold(h: float, nodes: list[int]) -> int:
    return nodes[min(int(h * len(nodes)), len(nodes) - 1)]


def resilient_table(nodes: list[int]) -> list[int]:
    return [nodes[b % len(nodes)] for b in range(BUCKETS)]


def moved_flows(n: int, nodes: int, lost: int, ecmp: str) -> dict[int, list[int]]:
    """New node -> flows that must be recovered there after node ``lost`` goes."""
    before = list(range(1, nodes + 1))
    after = [k for k in before if k != lost]
    table = resilient_table(before)
    new_table = [k if k != lost else after[b % len(after)] for b, k in enumerate(table)]
    out: dict[int, list[int]] = {k: [] for k in after}
    for i in range(n):
        h = hash_of(i)
        if ecmp == "threshold":
            old, new = node_threshold(h, before), node_threshold(h, after)
        else:
            bucket = int(h * BUCKETS)
            old, new = table[bucket], new_table[bucket]
        if old != new:
            out[new].append(i)
    return out


async def populate(store: RedisStore, n: int) -> float:
    """Write ``n`` cached flows as the flow cache does; returns sessions written per second."""
    items = []
    now_ms = int(time.time() * 1000)
    for i in range(n):
        address, port = client(i)
        items.append(((VIP[0], VIP[1], address, port), CachedFlow(1, 1 + i % 2, i & 0xFFFFFFFF, now_ms)))
    started = time.perf_counter()
    await store.put_flows(items, ttl_s=600)
    return n / (time.perf_counter() - started)


async def survive(
    store: RedisStore, flows: list[int], slow_pps: float, burst: float
) -> tuple[list[float], int]:
    """One surviving node: packets of ``flows`` arrive, the slow path admits what its bucket
    allows, Recovery installs. Returns each flow's gap (s) and the slow-path drops."""
    maps = MemoryStore(max_flows=len(flows) + 16)
    maps.set_vips([Vip(VIP[0], VIP[1], 0)])
    for index in (1, 2):
        maps.put_backend(Backend(1, index, f"10.70.0.{10 + index}", 6081, BackendState.ACTIVE, 1))
    recovery = Recovery(store, maps)
    rng = random.Random(len(flows))
    by_phase: list[list[int]] = [[] for _ in range(20)]
    for i in flows:
        by_phase[rng.randrange(20)].append(i)
    gaps: dict[int, float] = {}
    in_flight: set[int] = set()
    tasks: list[asyncio.Task[None]] = []
    tokens, dropped = burst, 0
    start = time.monotonic()

    async def recover(i: int) -> None:
        address, port = client(i)
        key: FlowKeyT = (addr16(address), port, 0)
        if await recovery.recover_key(key):
            gaps[i] = time.monotonic() - start + FRAME_S
        in_flight.discard(i)

    tick = 0
    while len(gaps) < len(flows):
        deadline = start + (tick + 1) / 1000
        tokens = min(burst, tokens + slow_pps / 1000)
        for i in by_phase[tick % 20]:
            if i in gaps or i in in_flight:
                continue
            if tokens < 1:
                dropped += 1
                continue
            tokens -= 1
            in_flight.add(i)
            tasks.append(asyncio.create_task(recover(i)))
        tick += 1
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if tick > 120_000:
            raise RuntimeError(f"recovered only {len(gaps)} of {len(flows)} flows in 120 s")
    await asyncio.gather(*tasks)
    return list(gaps.values()), dropped


async def simulate(url: str, n: int, nodes: int, slow_pps: float, cpus: int) -> tuple[float, list[Result]]:
    store = RedisStore(RedisConfig(url=url, region="fleetsim", timeout_s=5.0))
    supervisor = asyncio.create_task(store.supervise())
    try:
        await asyncio.wait_for(store.wait_up(), 10)
        writes_per_s = await populate(store, n)
        results = []
        for ecmp in ("threshold", "resilient"):
            moved = moved_flows(n, nodes, nodes, ecmp)  # the last node goes
            started = time.monotonic()
            outcome = await asyncio.gather(
                *(
                    survive(store, flows, slow_pps * cpus, slow_pps * cpus)
                    for flows in moved.values()
                    if flows
                )
            )
            took = time.monotonic() - started
            gaps = sorted(g for node_gaps, _ in outcome for g in node_gaps)
            total = sum(len(f) for f in moved.values())
            results.append(
                Result(
                    ecmp,
                    total,
                    len(gaps),
                    round(took, 2),
                    round(len(gaps) / took) if took else 0,
                    round(statistics.median(gaps) * 1000, 1) if gaps else 0.0,
                    round(gaps[int(len(gaps) * 0.99) - 1] * 1000, 1) if gaps else 0.0,
                    round(gaps[-1] * 1000, 1) if gaps else 0.0,
                    sum(d for _, d in outcome),
                )
            )
        return writes_per_s, results
    finally:
        supervisor.cancel()
        await store.close()


def table(results: list[Result]) -> str:
    rows = [
        (r.ecmp, r.moved, r.recovered, r.recovery_s, r.per_s, r.gap_median_ms, r.gap_p99_ms, r.gap_max_ms,
         r.slow_path_dropped)
        for r in results
    ]  # fmt: skip
    columns = ("ECMP", "flows moved", "recovered", "recovery s", "flows/s", "gap median ms", "gap p99 ms",
               "gap max ms", "slow-path drops")  # fmt: skip
    return report.markdown_table(columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--slow-pps", type=float, default=5000.0, help="rate.slow_path_pps (per CPU)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each node (slow-path buckets)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    procs = Processes()
    try:
        with redis_server(procs) as server:
            writes_per_s, results = asyncio.run(
                simulate(server.url, args.flows, args.nodes, args.slow_pps, args.cpus)
            )
    finally:
        procs.stop_all()
    data: dict[str, Any] = {
        "flows": args.flows,
        "nodes": args.nodes,
        "slow_path_pps_per_cpu": args.slow_pps,
        "cpus": args.cpus,
        "cache_writes_sessions_per_s": round(writes_per_s),
        "results": [r.__dict__ for r in results],
    }
    text = table(results)
    text += f"\n{args.flows} flows over {args.nodes} nodes, the last one lost; flow-cache writes: "
    text += f"{writes_per_s:,.0f} sessions/s (HSET + EXPIRE each, pipelined)\n"
    report.write(NAME, data, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
