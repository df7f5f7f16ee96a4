"""CORS on the signaling endpoint, over real HTTP against a real Transceiver (no Redis)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from icegate.config import load
from icegate.errors import ConfigError
from labkit.support import run_transceiver
from transceiver.client import VoiceClient
from transceiver.config import TransceiverConfig
from transceiver.signaling import cors_origin

PAGE = "http://page.example:8000"
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type,authorization",
}
Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def config(**overrides: Any) -> TransceiverConfig:
    base: dict[str, Any] = {
        "cluster": 1,
        "index": 1,
        "relays": [{"address": "192.0.2.10"}],
        "tunnel_bind": "127.0.0.1",
        "route_key": "00112233445566778899aabbccddeeff",
    }
    return load(TransceiverConfig, None, "transceiver", base | overrides)


def run(scenario: Scenario, **overrides: Any) -> None:
    run_transceiver(config(**overrides), lambda service, http, url: scenario(http, url))


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (("*",), PAGE, "*"),
        ((PAGE,), PAGE, PAGE),
        ((PAGE, "*"), PAGE, PAGE),
        ((PAGE,), "http://evil.example", None),
        (("*",), None, None),
        ((), PAGE, None),
    ],
)
def test_allowed_origin(origins: tuple[str, ...], origin: str | None, allowed: str | None) -> None:
    assert cors_origin(origins, origin) == allowed


def test_preflight_then_offer_exposes_location_to_the_page() -> None:
    async def scenario(http: aiohttp.ClientSession, url: str) -> None:
        async with http.options(f"{url}/v1/sessions", headers=PREFLIGHT) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"content-type", "authorization"} <= allowed
            assert int(resp.headers["Access-Control-Max-Age"]) > 0
        client = VoiceClient(url)
        offer = await client.offer()
        headers = {"Origin": PAGE, "Content-Type": "application/sdp"}
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=headers) as resp:
                assert resp.status == 201
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
                assert "Location" in exposed
                location = resp.headers["Location"]
            async with http.options(
                f"{url}{location}", headers=PREFLIGHT | {"Access-Control-Request-Method": "DELETE"}
            ) as resp:
                assert resp.status == 204 and "DELETE" in resp.headers["Access-Control-Allow-Methods"]
            async with http.delete(f"{url}{location}", headers={"Origin": PAGE}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
        finally:
            await client.hangup()

    run(scenario)


def test_listed_origins_only_and_errors_stay_readable() -> None:
    async def scenario(http: aiohttp.ClientSession, url: str) -> None:
        async with http.options(f"{url}/v1/sessions", headers=PREFLIGHT) as resp:
            assert resp.status == 204  # no bearer token on a preflight, and none needed
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE
            assert resp.headers["Vary"] == "Origin"
        evil = PREFLIGHT | {"Origin": "http://evil.example"}
        async with http.options(f"{url}/v1/sessions", headers=evil) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        # The page can read why it was refused (401 from the bearer check, 404 from the router).
        async with http.post(f"{url}/v1/sessions", data=b"v=0", headers={"Origin": PAGE}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        async with http.get(f"{url}/nowhere", headers={"Origin": PAGE}) as resp:
            assert resp.status == 404
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        async with http.get(f"{url}/livez", headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers

    run(scenario, cors_origins=[PAGE], auth_token="s3cret")


def test_cors_off() -> None:
    async def scenario(http: aiohttp.ClientSession, url: str) -> None:
        async with http.options(f"{url}/v1/sessions", headers=PREFLIGHT) as resp:
            assert resp.status == 405
        async with http.get(f"{url}/livez", headers={"Origin": PAGE}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers

    run(scenario, cors_origins=[])


def test_a_bad_origin_fails_at_start_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"cors_origins\[1\]"):
        config(cors_origins=["*", "page.example"])
