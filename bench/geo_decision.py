"""Geo front door: decision latency, and POST /v1/sessions -> 307 latency over real HTTP.

    .venv/bin/python -m bench.geo_decision [--decisions N] [--requests N] [--json] [--out bench/results]

1. **Decision**: :meth:`geo.frontdoor.FrontDoor.route` (locate from Cloudflare headers,
   decide, count metrics) in this process, for random client points, against the world
   catalog of ``docs/geo-catalog.yaml`` (6 clusters, 6 relays) and a synthetic one with 200
   clusters; health is a fixed view (every cluster live), so only the decision is timed.
2. **POST -> 307**: ``icegate geo serve`` as a separate process (pinned to the last CPU)
   against a real redis-server holding one live registration per cluster; one client
   (pinned to CPU 0) sends sequential POSTs with trusted Cloudflare headers and times each
   until the 307 is read (keep-alive connection, redirect not followed).

Reports median and p99 of each. Absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml

from bench import report
from geo.config import GeoConfig
from geo.decide import ClusterHealth, HealthView
from geo.frontdoor import FrontDoor
from icegate.catalog import Catalog, load_catalog
from icegate.config import build
from icegate.schema import Keys, Registration
from labkit.support import Processes, free_port, http_get, redis_server, wait_for

WORLD = Path(__file__).resolve().parents[1] / "docs" / "geo-catalog.yaml"


def synthetic_catalog(clusters: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    regions = [{"name": f"r{i}", "redis_url": "redis://127.0.0.1:6379/0"} for i in range(10)]
    cl, relays = [], []
    for i in range(clusters):
        lat, lon = round(rng.uniform(-60, 70), 2), round(rng.uniform(-180, 180), 2)
        region = f"r{i % 10}"
        cl.append({"name": f"c{i}", "id": i, "region": region, "signaling_url": f"http://c{i}.example",
                   "lat": lat, "lon": lon})  # fmt: skip
        for j in range(2):
            relays.append({"name": f"c{i}-r{j}", "region": region, "vip4": f"10.{i // 250}.{i % 250}.{j + 1}",
                           "lat": lat, "lon": lon, "serves": [f"c{i}"], "priority": 100 - j})  # fmt: skip
    return {"regions": regions, "clusters": cl, "relays": relays}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_us(samples: list[float]) -> dict[str, float]:
    return {
        "median_us": round(statistics.median(samples) * 1e6, 1),
        "p99_us": round(percentile(samples, 0.99) * 1e6, 1),
        "n": len(samples),
    }


def time_decisions(catalog: Catalog, n: int) -> dict[str, float]:
    config = build(GeoConfig, {"trusted_proxies": ["173.245.48.0/20"]}, "geo")
    door = FrontDoor(config, catalog)
    view = HealthView({c.name: ClusterHealth(live=1, sessions=3) for c in catalog.clusters})
    rng = random.Random(1)
    points = [
        {"cf-iplatitude": f"{rng.uniform(-89, 89):.4f}", "cf-iplongitude": f"{rng.uniform(-179, 179):.4f}"}
        for _ in range(n)
    ]
    samples = []
    for headers in points:
        started = time.perf_counter()
        door.route(headers, "173.245.48.7", view=view)
        samples.append(time.perf_counter() - started)
    return summary_us(samples[n // 10 :])  # the first tenth warms up


async def time_redirects(url: str, n: int) -> dict[str, float]:
    rng = random.Random(2)
    samples = []
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            headers = {
                "cf-iplatitude": f"{rng.uniform(-60, 60):.3f}",
                "cf-iplongitude": f"{rng.uniform(-179, 179):.3f}",
            }
            started = time.perf_counter()
            async with http.post(
                f"{url}/v1/sessions", data=b"v=0\r\n", headers=headers, allow_redirects=False
            ) as r:
                await r.read()
                if r.status != 307:
                    raise RuntimeError(f"request {i}: {r.status}")
            samples.append(time.perf_counter() - started)
    return summary_us(samples[n // 10 :])


def redirect_benchmark(n: int) -> dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0))
    with Processes() as procs, redis_server(procs) as server, tempfile.TemporaryDirectory() as tmp:
        document = yaml.safe_load(WORLD.read_text())
        for region in document["catalog"]["regions"]:
            region["redis_url"] = server.url
        port = free_port()
        document["geo"] |= {"listen_port": port, "trusted_proxies": ["127.0.0.0/8"], "health_interval_s": 0.5}
        path = Path(tmp) / "geo.yaml"
        path.write_text(yaml.safe_dump(document))
        r = redis.Redis.from_url(server.url)
        for c in document["catalog"]["clusters"]:
            key = Keys(c["region"]).transceiver(c["id"], 1)
            r.hset(
                key,
                mapping=Registration(c["id"], 1, "10.0.0.1", 6081, c["signaling_url"], "active", 1).encode(),
            )  # type: ignore[arg-type]
        r.close()
        argv = [
            sys.executable,
            "-c",
            "from icegate.cli import main; main()",
            "geo",
            "serve",
            "--config",
            str(path),
        ]
        door = procs.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if len(cpus) > 1:
            os.sched_setaffinity(door.pid, {cpus[-1]})
            os.sched_setaffinity(0, {cpus[0]})
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, timeout=30, what="the front door")
        try:
            return asyncio.run(time_redirects(url, n))
        finally:
            os.sched_setaffinity(0, set(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    world = load_catalog(WORLD)
    big = build(Catalog, synthetic_catalog(200), "catalog")
    results = {
        "decision_world": time_decisions(world, args.decisions),
        "decision_200_clusters": time_decisions(big, args.decisions // 4),
        "post_to_307": redirect_benchmark(args.requests),
    }
    rows = [
        ["decision (6 clusters, world catalog)", *results["decision_world"].values()],
        ["decision (200 clusters)", *results["decision_200_clusters"].values()],
        ["POST /v1/sessions -> 307 (HTTP, Redis health)", *results["post_to_307"].values()],
    ]
    table = report.markdown_table(["what", "median µs", "p99 µs", "samples"], rows)
    report.write("geo_decision", {"results": results}, table, args.out)
    print(json.dumps(results, indent=1) if args.json else table)


if __name__ == "__main__":
    main()
