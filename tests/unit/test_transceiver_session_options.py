"""Per-session endpointing and agent metadata from the offer (docs/AGENT_PROTOCOL.md §3), over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from icegate.config import load
from icegate.errors import SignalingError
from labkit.support import run_transceiver
from transceiver import session_options
from transceiver.agent import sdk
from transceiver.client import VoiceClient
from transceiver.config import TransceiverConfig, VadConfig
from transceiver.service import Transceiver

SDP = {"Content-Type": "application/sdp"}


def config(**overrides: Any) -> TransceiverConfig:
    base: dict[str, Any] = {
        "cluster": 1,
        "index": 1,
        "relays": [{"address": "192.0.2.10"}],
        "tunnel_bind": "127.0.0.1",
        "route_key": "00112233445566778899aabbccddeeff",
        "agent": {"metadata_headers": ["X-Caller-Id"]},
    } | overrides
    return load(TransceiverConfig, None, "transceiver", base)


def test_offer_sets_endpointing_and_passes_only_allowed_headers_to_the_agent() -> None:
    hellos: list[sdk.Hello] = []

    class Recorder(sdk.Agent):
        async def on_start(self, hello: sdk.Hello) -> None:
            hellos.append(hello)

    async def main() -> None:
        agent = TestServer(sdk.make_app(Recorder))
        await agent.start_server()
        url = str(agent.make_url("/")).replace("http", "ws")

        async def scenario(service: Transceiver, http: aiohttp.ClientSession, base: str) -> None:
            client = VoiceClient("unused")
            offer = await client.offer()
            headers = SDP | {"X-Caller-Id": "alice", "X-Secret": "not for the agent"}
            query = "vad.detector=webrtc&vad.silence_ms=300&vad.webrtc_mode=3&other=ignored"
            try:
                async with http.post(f"{base}/v1/sessions?{query}", data=offer, headers=headers) as resp:
                    assert resp.status == 201, await resp.text()
                    location = resp.headers["Location"]
                deadline = asyncio.get_running_loop().time() + 5
                while not hellos:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)
                async with http.get(f"{base}{location}") as resp:
                    described = (await resp.json())["agent"]
                assert described["state"] == "connected"
                assert described["endpointing"] == {
                    "vad": "webrtc",
                    "silence_ms": 300,
                    "hangover_ms": 100,
                    "mode": 3,
                }
                assert described["input"] == {"rate": 16000, "frame_ms": 20}
            finally:
                await client.hangup()

        try:
            run_in = config(agent_url=url)
            await asyncio.to_thread(run_transceiver, run_in, scenario)
        finally:
            await agent.close()

    asyncio.run(main())
    assert len(hellos) == 1
    assert hellos[0].metadata == {"X-Caller-Id": "alice"}
    assert hellos[0].endpointing["vad"] == "webrtc" and hellos[0].endpointing["silence_ms"] == 300


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"vad.silence_ms": "soon"}, "vad.silence_ms: expected a int, got 'soon'"),
        ({"vad.silence_ms": "310"}, "vad.silence_ms: expected a multiple of 20"),
        ({"vad.detector": "psychic"}, "vad.detector: expected one of energy, webrtc, silero"),
        ({"vad.loudness": "3"}, "vad.loudness: unknown endpointing field"),
    ],
)
def test_bad_endpointing_is_a_400_naming_the_field(query: dict[str, str], problem: str) -> None:
    with pytest.raises(SignalingError, match=problem) as caught:
        session_options.endpointing(VadConfig(), query)
    assert caught.value.status == 400


def test_bad_endpointing_is_refused_over_http() -> None:
    async def scenario(service: Transceiver, http: aiohttp.ClientSession, base: str) -> None:
        client = VoiceClient("unused")
        offer = await client.offer()
        try:
            async with http.post(f"{base}/v1/sessions?vad.start_ms=0", data=offer, headers=SDP) as resp:
                assert resp.status == 400
                assert "vad.start_ms" in (await resp.json())["error"]
        finally:
            await client.hangup()
        assert len(service.sessions) == 0

    run_transceiver(config(), scenario)


def test_metadata_headers_are_bounded() -> None:
    assert session_options.metadata(("X-A",), {"X-A": "1", "X-B": "2"}) == {"X-A": "1"}
    with pytest.raises(SignalingError, match="header X-A: longer than 1024"):
        session_options.metadata(("X-A",), {"X-A": "a" * 1025})
