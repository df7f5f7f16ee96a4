"""The front door over real HTTP against a real redis-server: 307 with the decision, the
explanation at /v1/route, failover when a region's registrations go, 503 + Retry-After,
trusted and untrusted Cloudflare headers, metrics and readiness."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from geo.config import GeoConfig
from geo.frontdoor import DECISION_HEADER, FrontDoor
from geo.locate import MaxMind
from icegate.catalog import Catalog
from icegate.config import build
from icegate.schema import Keys, Registration
from labkit.support import RedisServer, free_port
from tests.unit.test_geo_locate import build_mmdb

SYDNEY = {"cf-iplatitude": "-33.87", "cf-iplongitude": "151.21", "cf-ipcountry": "AU"}
PARIS = {"cf-iplatitude": "48.85", "cf-iplongitude": "2.35", "cf-ipcountry": "FR"}


def catalog(redis_url: str, tag: str, dead_url: str | None = None) -> Catalog:
    """Two regions (their own key spaces in one real Redis) plus, optionally, one whose Redis is gone."""
    regions = [
        {"name": f"{tag}eu", "redis_url": redis_url},
        {"name": f"{tag}ap", "redis_url": redis_url},
    ]
    clusters = [
        {
            "name": "fra1",
            "id": 1,
            "region": f"{tag}eu",
            "signaling_url": "http://127.0.0.1:1",
            "lat": 50.11,
            "lon": 8.68,
            "capacity": 3,
        },
        {
            "name": "syd1",
            "id": 1,
            "region": f"{tag}ap",
            "signaling_url": "http://127.0.0.1:2",
            "lat": -33.87,
            "lon": 151.21,
        },
    ]
    relays = [
        {
            "name": "fra-r1",
            "region": f"{tag}eu",
            "vip4": "192.0.2.10",
            "lat": 50.11,
            "lon": 8.68,
            "serves": ["fra1"],
            "priority": 100,
        },
        {
            "name": "fra-r2",
            "region": f"{tag}eu",
            "vip6": "2001:db8::20",
            "lat": 52.37,
            "lon": 4.9,
            "serves": ["fra1"],
            "priority": 50,
        },
        {
            "name": "syd-r1",
            "region": f"{tag}ap",
            "vip4": "192.0.2.30",
            "lat": -33.87,
            "lon": 151.21,
            "serves": ["syd1"],
        },
    ]
    if dead_url:
        regions.append({"name": f"{tag}us", "redis_url": dead_url})
        clusters.append(
            {
                "name": "iad1",
                "id": 1,
                "region": f"{tag}us",
                "signaling_url": "http://127.0.0.1:3",
                "lat": 39.04,
                "lon": -77.49,
            }
        )
        relays.append(
            {
                "name": "iad-r1",
                "region": f"{tag}us",
                "vip4": "192.0.2.40",
                "lat": 39.04,
                "lon": -77.49,
                "serves": ["iad1"],
            }
        )
    return build(Catalog, {"regions": regions, "clusters": clusters, "relays": relays}, "catalog")


async def register(client: aioredis.Redis, region: str, cluster: int, index: int, **fields: Any) -> str:
    reg = Registration(
        cluster, index, "10.0.0.1", 6081, "http://x", fields.pop("state", "active"), 1, **fields
    )
    key = Keys(region).transceiver(cluster, index)
    await client.hset(key, mapping=reg.encode())  # type: ignore[arg-type]
    await client.pexpire(key, 30_000)
    return key


@asynccontextmanager
async def front_door(cat: Catalog, **config: Any) -> AsyncIterator[tuple[FrontDoor, str]]:
    cfg = build(GeoConfig, {"trusted_proxies": ["127.0.0.0/8"], "health_interval_s": 0.1, **config}, "geo")
    door = FrontDoor(cfg, cat)
    await door.start()
    live = [r for r in door.health.regions.values() if r.keys.region.endswith(("eu", "ap"))]
    deadline = time.monotonic() + 20
    while not all(r.reachable for r in live):  # a loaded host may miss the first read's 1 s timeout
        assert time.monotonic() < deadline, "the test's Redis did not answer the front door"
        await asyncio.sleep(0.05)
    server = TestServer(door.app(), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield door, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
        await door.stop()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_redirect_explain_failover_and_503(redis: RedisServer) -> None:
    async def main() -> None:
        tag = f"fd{time.monotonic_ns() % 10**6}"
        cat = catalog(redis.url, tag)
        client = aioredis.from_url(redis.url)
        fra = await register(client, f"{tag}eu", 1, 1, sessions=1)
        syd = await register(client, f"{tag}ap", 1, 1)
        async with front_door(cat) as (door, url), aiohttp.ClientSession() as http:
            # Trusted Cloudflare headers: each client to its own region, relays named.
            async with http.post(
                f"{url}/v1/sessions", data="v=0", headers=SYDNEY, allow_redirects=False
            ) as r:
                assert r.status == 307
                assert r.headers["Location"] == "http://127.0.0.1:2/v1/sessions"
                assert r.headers[DECISION_HEADER].startswith(f"region={tag}ap; cluster=syd1; reason=nearest")
            async with http.post(f"{url}/v1/sessions", data="v=0", headers=PARIS, allow_redirects=False) as r:
                assert r.status == 307
                assert "cluster=fra1" in r.headers[DECISION_HEADER]
                assert "primary=fra-r1; backup=fra-r2" in r.headers[DECISION_HEADER]
            # The explanation, for a point and for the request itself.
            async with http.get(f"{url}/v1/route", params={"lat": "-37.8", "lon": "144.9"}) as r:
                data = await r.json()
                assert (
                    r.status == 200 and data["cluster"] == "syd1" and data["location"]["source"] == "explicit"
                )
            async with http.get(f"{url}/v1/route", params={"lat": "95", "lon": "0"}) as r:
                assert r.status == 400
            async with http.get(f"{url}/v1/route") as r:
                data = await r.json()
                assert data["location"]["source"] == "default" and data["cluster"] == "fra1"

            # Capacity: fra1 takes 3 sessions; at 3 Paris goes to Sydney, as a failover.
            await register(client, f"{tag}eu", 1, 1, sessions=3)

            async def paris_cluster() -> str:
                async with http.get(f"{url}/v1/route", headers=PARIS) as r:
                    return str((await r.json()).get("cluster"))

            async def failed_over() -> bool:
                return await paris_cluster() == "syd1"

            await until(failed_over)
            async with http.get(f"{url}/v1/route", headers=PARIS) as r:
                data = await r.json()
                assert data["reason"] == "failover" and data["skipped"][0]["why"] == "full"
            await register(client, f"{tag}eu", 1, 1, sessions=0)

            async def back() -> bool:
                return await paris_cluster() == "fra1"

            await until(back)
            # The region's last transceiver goes: the next Paris session goes to Sydney.
            await client.delete(fra)
            await client.publish(Keys(f"{tag}eu").transceiver_events, "1:1")
            await until(failed_over)
            # Nothing left anywhere: 503 with Retry-After and the reasons.
            await client.delete(syd)

            async def unavailable() -> bool:
                async with http.post(f"{url}/v1/sessions", headers=PARIS, allow_redirects=False) as r:
                    return r.status == 503

            await until(unavailable)
            async with http.post(f"{url}/v1/sessions", headers=PARIS, allow_redirects=False) as r:
                assert r.headers["Retry-After"] == "5"
                body = await r.json()
                assert {s["why"] for s in body["skipped"]} == {"no_live_transceiver"}
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            assert (
                f'icegate_geo_decisions_total{{reason="nearest",region="{tag}ap",source="cloudflare"}}'
                in text
            )
            assert 'icegate_geo_failovers_total{from_cluster="fra1",to_cluster="syd1"}' in text
            unavailable_total = re.search(r"^icegate_geo_unavailable_total (\S+)$", text, re.M)
            assert unavailable_total is not None and float(unavailable_total.group(1)) >= 2
            assert f'icegate_geo_region_up{{region="{tag}eu"}} 1.0' in text
            # Like every component: process metrics, build info, HTTP responses by route and code.
            assert 'icegate_build_info{component="geo"' in text and "process_cpu_seconds_total" in text
            assert 'icegate_geo_http_responses_total{code="503",path="/v1/sessions"}' in text
            assert door.health.view().clusters["fra1"].live == 0
        await client.aclose()

    asyncio.run(main())


def test_untrusted_headers_ignored_and_counted(redis: RedisServer) -> None:
    async def main() -> None:
        tag = f"fu{time.monotonic_ns() % 10**6}"
        client = aioredis.from_url(redis.url)
        await register(client, f"{tag}eu", 1, 1)
        await register(client, f"{tag}ap", 1, 1)
        async with (
            front_door(catalog(redis.url, tag), trusted_proxies=["10.0.0.0/8"]) as (_, url),
            aiohttp.ClientSession() as http,
        ):
            async with http.get(f"{url}/v1/route", headers=SYDNEY) as r:
                data = await r.json()
            assert data["cluster"] == "fra1" and data["location"]["source"] == "default"
            assert "untrusted" in data["notes"][0]
            async with http.get(f"{url}/metrics") as r:
                assert 'icegate_geo_headers_ignored_total{why="untrusted"} 1.0' in await r.text()
        await client.aclose()

    asyncio.run(main())


def test_mmdb_route_by_ip_and_a_dead_region(redis: RedisServer, tmp_path: Path) -> None:
    async def main() -> None:
        tag = f"fm{time.monotonic_ns() % 10**6}"
        client = aioredis.from_url(redis.url)
        await register(client, f"{tag}eu", 1, 1)
        await register(client, f"{tag}ap", 1, 1)
        dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        mmdb = build_mmdb(tmp_path / "city.mmdb")
        async with front_door(catalog(redis.url, tag, dead), mmdb=str(mmdb)) as (door, url):
            assert isinstance(door.locator.mmdb, MaxMind)
            async with aiohttp.ClientSession() as http:
                # 198.51.100.0/24 is at Ashburn: its cluster's region has no Redis, so the next nearest.
                async with http.get(f"{url}/v1/route", params={"ip": "198.51.100.7"}) as r:
                    data = await r.json()
                assert data["location"]["source"] == "mmdb" and data["location"]["country"] == "US"
                assert data["cluster"] == "fra1" and data["reason"] == "failover"
                assert data["skipped"][0] == {
                    "cluster": "iad1",
                    "region": f"{tag}us",
                    "why": "region_unreachable",
                }
                async with http.get(f"{url}/v1/route", params={"ip": "2001:db8:5::1"}) as r:
                    assert (await r.json())["cluster"] == "syd1"  # Singapore: Sydney is nearer than Frankfurt
                async with http.get(f"{url}/v1/route", params={"ip": "nope"}) as r:
                    assert r.status == 400
                async with http.get(f"{url}/readyz") as r:
                    assert r.status == 200
                    assert (await r.json())["regions"][f"{tag}us"] == "unreachable"
                async with http.get(f"{url}/livez") as r:
                    assert r.status == 200
        await client.aclose()

    asyncio.run(main())


def test_a_whip_client_follows_the_307_with_its_offer(redis: RedisServer) -> None:
    """aiohttp (the reference client's HTTP) re-POSTs the body to the cluster (RFC 9110 §15.4.8)."""

    async def main() -> None:
        tag = f"fw{time.monotonic_ns() % 10**6}"
        client = aioredis.from_url(redis.url)
        await register(client, f"{tag}eu", 1, 1)
        await register(client, f"{tag}ap", 1, 1)
        seen: list[str] = []

        async def cluster_post(request: web.Request) -> web.Response:
            seen.append(await request.text())
            return web.Response(status=201, text="answer", headers={"Location": "/v1/sessions/abc"})

        app = web.Application()
        app.router.add_post("/v1/sessions", cluster_post)
        cluster = TestServer(app, host="127.0.0.1", port=free_port())
        await cluster.start_server()
        cat = catalog(f"{redis.url}", tag)
        fra = cat.clusters[0].__class__(
            **{**cat.clusters[0].__dict__, "signaling_url": str(cluster.make_url(""))}
        )
        cat = Catalog(cat.regions, (fra, *cat.clusters[1:]), cat.relays)
        async with (
            front_door(cat) as (_, url),
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/sessions", data="v=0 offer", headers=PARIS) as r,
        ):
            assert r.status == 201
            assert str(r.url).startswith(str(cluster.make_url("")).rstrip("/"))
            assert r.history[0].status == 307
        assert seen == ["v=0 offer"]
        await cluster.close()
        await client.aclose()

    asyncio.run(main())


def test_cors_for_browser_pages(redis: RedisServer) -> None:
    async def main() -> None:
        tag = f"fc{time.monotonic_ns() % 10**6}"
        client = aioredis.from_url(redis.url)
        await register(client, f"{tag}eu", 1, 1)
        await register(client, f"{tag}ap", 1, 1)
        origin = {"Origin": "https://app.example"}
        cat = catalog(redis.url, tag)
        async with (
            front_door(cat, cors_origins=["https://app.example"]) as (_, url),
            aiohttp.ClientSession() as http,
        ):
            preflight = {**origin, "Access-Control-Request-Method": "POST"}
            async with http.options(f"{url}/v1/sessions", headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
            async with http.post(
                f"{url}/v1/sessions", headers={**origin, **PARIS}, allow_redirects=False
            ) as r:
                assert r.status == 307
                assert "Icegate-Decision" in r.headers["Access-Control-Expose-Headers"]
            async with http.options(f"{url}/v1/sessions", headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        await client.aclose()

    asyncio.run(main())
