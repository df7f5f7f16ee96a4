"""Cold start with ``--preload``: 10k cached flows from Redis into the real pinned ``flows`` map.

Every flow arrives, with its backend and tag. How fast is ``bench.flow_restore``'s
question (at most 20 ms for the map part), not this test's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import redis as redis_sync

from controlplane.cluster.recovery import PreloadReport, Recovery
from controlplane.cluster.redisio import RedisStore
from controlplane.config import RedisConfig, RelayLimits
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, Vip
from controlplane.kernel.maps import KernelStore
from icegate.inet import addr16
from icegate.schema import CachedFlow, Keys
from labkit.support import RedisServer, pinned_relay

FLOWS = 10_000


@pytest.fixture
def pinned() -> Iterator[KernelStore]:
    with pinned_relay(f"preload{os.getpid()}", RelayLimits(max_flows=16384, max_pending=64)) as store:
        store.set_vips([Vip("192.0.2.10", 3478, 0)])
        store.put_backend(Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 1))
        store.put_backend(Backend(1, 2, "10.70.0.12", 6081, BackendState.ACTIVE, 1))
        yield store


def test_preload_10k_flows_into_the_kernel_map(pinned: KernelStore, redis: RedisServer) -> None:
    region = f"preload{os.getpid()}"
    keys = Keys(region)
    r = redis_sync.Redis.from_url(redis.url)
    with r.pipeline(transaction=False) as pipe:
        for i in range(FLOWS):
            host = f"100.64.{i // 250}.{i % 250 + 1}"
            pipe.hset(
                keys.flow("192.0.2.10", 3478, host, 50000), mapping=CachedFlow(1, 1 + i % 2, i, 1).encode()
            )
        pipe.execute()
    r.close()

    async def preload() -> PreloadReport:
        store = RedisStore(RedisConfig(url=redis.url, region=region))
        try:
            return await Recovery(store, pinned).preload(pinned.vips())
        finally:
            await store.close()

    pinned.flush_flows()
    report = asyncio.run(preload())
    assert (report.scanned, report.installed, report.skipped) == (FLOWS, FLOWS, 0)
    assert sum(1 for _ in pinned.flows()) == FLOWS
    flow = pinned.get_flow((addr16("100.64.3.7"), 50000, 0))
    assert flow is not None and (flow.cluster, flow.index, flow.token_tag) == (1, 1, 3 * 250 + 6)
