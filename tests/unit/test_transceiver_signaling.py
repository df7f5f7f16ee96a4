"""transceiver.signaling: the WHIP-shaped API over real HTTP against a real Transceiver (no Redis)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from icegate import token
from icegate.config import load
from labkit.support import free_port, run_transceiver
from transceiver.client import VoiceClient
from transceiver.config import TransceiverConfig
from transceiver.offer import prepare_offer
from transceiver.service import Transceiver

KEY = "00112233445566778899aabbccddeeff"
SDP = {"Content-Type": "application/sdp"}


def config(**overrides: Any) -> TransceiverConfig:
    base: dict[str, Any] = {
        "cluster": 2,
        "index": 5,
        "relays": [{"address": "192.0.2.10", "priority": 10}, {"address": "192.0.2.20"}],
        "tunnel_bind": "127.0.0.1",
        "route_key": KEY,
        "route_key_id": 3,
    }
    base.update(overrides)
    return load(TransceiverConfig, None, "transceiver", base)


Scenario = Callable[[Transceiver, aiohttp.ClientSession, str], Awaitable[None]]


def run(scenario: Scenario, **overrides: Any) -> Transceiver:
    return run_transceiver(config(**overrides), scenario)


async def client_offer() -> tuple[VoiceClient, str]:
    client = VoiceClient("unused")
    return client, await client.offer()


def test_offer_is_answered_with_relay_candidates_and_a_token_ufrag() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        client, offer = await client_offer()
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                assert resp.status == 201
                assert resp.content_type == "application/sdp"
                location = resp.headers["Location"]
                answer = await resp.text()
            assert re.fullmatch(r"/v1/sessions/[0-9a-f]{32}", location)
            ufrag = re.search(r"^a=ice-ufrag:(\S+)", answer, re.M)
            assert ufrag is not None
            decoded = token.verify(ufrag.group(1), {3: bytes.fromhex(KEY)})
            assert (decoded.cluster, decoded.index, decoded.key_id) == (2, 5, 3)
            hosts = re.findall(r"^a=candidate:\S+ 1 udp (\d+) (\S+) 3478 typ host", answer, re.M)
            assert [h for _, h in hosts[:2]] == ["192.0.2.10", "192.0.2.20"]
            assert int(hosts[0][0]) > int(hosts[1][0])

            async with http.get(f"{url}/v1/sessions") as resp:
                listed = await resp.json()
            assert [s["id"] for s in listed] == [location.rsplit("/", 1)[1]]
            assert listed[0]["ufrags"] == [ufrag.group(1)]
            async with http.get(f"{url}{location}") as resp:
                assert resp.status == 200 and (await resp.json())["state"] in ("new", "connecting")
            async with http.delete(f"{url}{location}") as resp:
                assert resp.status == 204
            async with http.delete(f"{url}{location}") as resp:
                assert resp.status == 404
            async with http.get(f"{url}/v1/sessions") as resp:
                assert await resp.json() == []
            assert service.mux.routes == 0
        finally:
            await client.hangup()

    service = run(scenario)
    assert service.sessions.outcomes["completed"] == 1


BAD_OFFERS = [
    (b"hello", 400, "must start with v=0"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 422, "no m-line"),
    (b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n", 400, "ice-ufrag"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_OFFERS)
def test_bad_offers_are_refused_with_a_reason(body: bytes, status: int, reason: str) -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        async with http.post(f"{url}/v1/sessions", data=body, headers=SDP) as resp:
            assert resp.status == status
            assert reason in (await resp.json())["error"]
        assert len(service.sessions) == 0 and service.mux.routes == 0
        assert service.sessions.outcomes["rejected"] == 1

    run(scenario)


def test_offer_without_audio_is_unprocessable() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        client = VoiceClient("unused")
        client.pc.createDataChannel("only-data")
        await client.pc.setLocalDescription(await client.pc.createOffer())
        try:
            async with http.post(
                f"{url}/v1/sessions", data=client.pc.localDescription.sdp, headers=SDP
            ) as resp:
                assert resp.status == 422
                assert "no audio m-line" in (await resp.json())["error"]
        finally:
            await client.pc.close()

    run(scenario)


def test_size_type_and_unknown_ids() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        async with http.post(f"{url}/v1/sessions", data=b"v=0\r\n" + b"a" * 5000, headers=SDP) as resp:
            assert resp.status == 413
            assert "exceeds 4096 bytes" in (await resp.json())["error"]
        async with http.post(f"{url}/v1/sessions", json={"sdp": "v=0"}) as resp:
            assert resp.status == 415
            assert "application/sdp" in (await resp.json())["error"]
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{url}/v1/sessions/feedfacefeedface") as resp:
                assert resp.status == 404
        # PATCH (ICE restart, trickle: RFC 9725 §4.3) of a session that does not exist.
        fragment = b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
        async with http.patch(f"{url}/v1/sessions/feedfacefeedface", data=fragment, headers=headers) as resp:
            assert resp.status == 404

    run(scenario, max_offer_bytes=4096)


def test_draining_refuses_new_sessions_with_retry_after() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        service.drain()
        client, offer = await client_offer()
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "5"
                assert "draining" in (await resp.json())["error"]
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 503 and (await resp.json())["draining"] is True
        finally:
            await client.pc.close()
        await asyncio.wait_for(service.wait(), 2)  # nothing live: the drain completes at once

    run(scenario)


def test_bearer_token_guards_the_session_api_only() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            async with http.get(f"{url}/v1/sessions", headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(f"{url}/v1/sessions", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200
        for path in ("/livez", "/readyz", "/metrics"):
            async with http.get(f"{url}{path}") as resp:
                assert resp.status == 200, path

    run(scenario, auth_token="s3cret")


def test_health_and_metrics() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(f"{url}/livez") as resp:
            assert resp.status == 200
        async with http.get(f"{url}/readyz") as resp:
            detail = await resp.json()
            assert resp.status == 200 and detail["status"] == "ready" and detail["route_key"] is True
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        for name in (
            "icegate_transceiver_sessions_active 0.0",
            'icegate_transceiver_sessions_total{outcome="reaped"} 0.0',
            "icegate_transceiver_setup_seconds_bucket",
            "icegate_transceiver_turn_latency_seconds_bucket",
            "icegate_transceiver_rtt_seconds_bucket",
            "icegate_transceiver_redis_up 1.0",
            "icegate_transceiver_agent_unreachable_total 0.0",
            'icegate_transceiver_http_responses_total{code="200",path="/readyz"} 1.0',
            'icegate_build_info{component="transceiver"',
            "process_start_time_seconds",
        ):
            assert name in text, name

    run(scenario)


def test_a_client_that_never_connects_is_reaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="transceiver.session")

    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        client, offer = await client_offer()
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                assert resp.status == 201
            assert len(service.sessions) == 1
            await asyncio.wait_for(service.sessions.wait_empty(), 3)
            assert service.mux.routes == 0
        finally:
            await client.pc.close()
        async with http.get(f"{url}/metrics") as resp:
            assert 'icegate_transceiver_sessions_total{outcome="reaped"} 1.0' in await resp.text()

    run(scenario, connect_timeout_s=0.5)
    created, ended = (r.getMessage() for r in caplog.records if r.name == "transceiver.session")
    session_id = created.split("id=")[1].split()[0]
    assert created == f"session created id={session_id} live=1"
    assert ended.startswith(f"session ended id={session_id} outcome=reaped age_s=0.") and ended.endswith(
        " turns=0"
    )


def test_a_task_started_while_a_session_closes_does_not_hold_up_the_close() -> None:
    """A client that hangs up as soon as it is connected: the transceiver's side can reach
    "connected" while the DELETE tears the session down, and start the stats task then.
    The DELETE still returns, and that task is cancelled."""

    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        client, offer = await client_offer()
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                location = resp.headers["Location"]
            session = service.sessions.get(location.rsplit("/", 1)[1])
            assert session is not None
            late: list[asyncio.Task[None]] = []
            close_bridge = session.bridge.close

            async def close_while_connecting(reason: str) -> None:
                late.append(asyncio.create_task(asyncio.sleep(3600)))  # as on_state("connected") does
                session.tasks.append(late[0])
                await close_bridge(reason)

            session.bridge.close = close_while_connecting
            async with asyncio.timeout(5), http.delete(f"{url}{location}") as resp:
                assert resp.status == 204
            assert late[0].cancelled()
            assert len(service.sessions) == 0
        finally:
            await client.pc.close()

    run(scenario)


def test_offer_preparation_drops_candidates_a_relayed_session_cannot_use() -> None:
    async def make() -> str:
        client = VoiceClient("unused")
        try:
            return await client.offer()
        finally:
            await client.pc.close()

    offer = asyncio.run(make())
    extra = (
        "a=candidate:1 1 udp 2122260223 0b7cbd39-0b1e-4a5e-8a1c-6c2e0f7d1a1b.local 50000 typ host\r\n"
        "a=candidate:2 1 tcp 1518280447 100.64.1.2 9 typ host tcptype active\r\n"
    )
    at = offer.index("a=candidate:")
    prepared = prepare_offer((offer[:at] + extra + offer[at:]).encode())
    assert prepared.dropped_candidates == 2
    assert ".local" not in prepared.sdp and " tcp " not in prepared.sdp
    assert prepared.sdp.count("a=candidate:") == offer.count("a=candidate:")
    assert prepared.audio_lines == 1


def test_redis_down_is_degraded_but_ready() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(f"{url}/readyz") as resp:
            detail = await resp.json()
        assert resp.status == 200 and detail["status"] == "degraded" and detail["redis"] is False
        client, offer = await client_offer()  # still answering: the configured key mints tokens
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers=SDP) as resp:
                assert resp.status == 201
        finally:
            await client.pc.close()

    run(scenario, redis_url=f"redis://127.0.0.1:{free_port()}/0")


def test_admin_listener_holds_the_session_list_and_metrics(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12, finding 9: with ``admin_port`` the public port lists nothing and exports
    no metrics; a session is reached only through its Location (128 random bits), which
    a guess or another session's id does not match; the admin listener has it all."""
    admin_port = free_port()

    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        admin = f"http://127.0.0.1:{admin_port}"
        assert service.admin_address == ("127.0.0.1", admin_port)
        client, offer = await client_offer()
        auth = {"Authorization": "Bearer t0ken"}
        try:
            async with http.post(f"{url}/v1/sessions", data=offer, headers={**SDP, **auth}) as resp:
                assert resp.status == 201
                location = resp.headers["Location"]
            for path in ("/v1/sessions", "/metrics"):
                async with http.get(f"{url}{path}", headers=auth) as resp:
                    assert resp.status in (404, 405), path  # not on the public port
            session_id = location.rsplit("/", 1)[1]
            guessed = session_id[:-1] + ("0" if session_id[-1] != "0" else "1")
            async with http.delete(f"{url}/v1/sessions/{guessed}", headers=auth) as resp:
                assert resp.status == 404
            async with http.get(f"{admin}/v1/sessions") as resp:
                assert [s["id"] for s in await resp.json()] == [session_id]
            async with http.get(f"{admin}/metrics") as resp:
                assert resp.status == 200 and "icegate_transceiver" in await resp.text()
            async with http.get(f"{url}{location}", headers=auth) as resp:
                assert resp.status == 200
            async with http.delete(f"{url}{location}", headers=auth) as resp:
                assert resp.status == 204
        finally:
            await client.hangup()

    with caplog.at_level(logging.WARNING):
        run(scenario, admin_port=admin_port, auth_token="t0ken", cors_origins=["https://app.example"])
    assert "signaling open" not in caplog.text


def test_open_signaling_is_warned_about_at_start(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, url: str) -> None:
        return None

    with caplog.at_level(logging.WARNING):
        run(scenario)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("signaling open")]
    assert len(warned) == 3
    assert any("no auth_token" in w for w in warned) and any("cors_origins '*'" in w for w in warned)
    assert any("no admin_port" in w for w in warned)
