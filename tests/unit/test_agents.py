"""The built-in agents over a real WebSocket (aiohttp test server, real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from transceiver.agent_protocol import FRAME_BYTES, FROM_AGENT, Event, EventType, decode_event, event
from transceiver.agents import PREROLL_FRAMES, TAIL_FRAMES, AgentKind, make_app, tone_frames

WS = aiohttp.ClientWebSocketResponse


def numbered(i: int) -> bytes:
    """A frame whose samples all carry ``i``: replayed audio shows which frames came back."""
    return np.full(FRAME_BYTES // 2, i, "<i2").tobytes()


def run(kind: AgentKind, scenario: Callable[[WS], Awaitable[None]]) -> None:
    async def main() -> None:
        server = TestServer(make_app(kind, tone_hz=1000.0, tone_ms=100))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(server.make_url("/")) as ws:
                await scenario(ws)
        finally:
            await server.close()

    asyncio.run(main())


async def response(ws: WS) -> tuple[list[Event], list[bytes]]:
    events: list[Event] = []
    frames: list[bytes] = []
    while not events or events[-1].type is not EventType.RESPONSE_DONE:
        msg = await asyncio.wait_for(ws.receive(), 3)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
        else:
            events.append(decode_event(msg.data, FROM_AGENT))
    return events, frames


def test_echo_replays_the_utterance_trimmed_to_speech() -> None:
    async def scenario(ws: WS) -> None:
        await ws.send_str(event(EventType.SESSION_STARTED, session="s1").encode())
        for i in range(10):  # silence before
            await ws.send_bytes(numbered(i))
        for i in range(10, 13):  # 3 frames of onset, then the VAD decides
            await ws.send_bytes(numbered(i))
        await ws.send_str(event(EventType.SPEECH_STARTED, onset_frames=3).encode())
        for i in range(13, 60):  # speech up to frame 39, then 20 frames of silence
            await ws.send_bytes(numbered(i))
        await ws.send_str(event(EventType.SPEECH_STOPPED, trailing_frames=20).encode())
        events, frames = await response(ws)
        assert [e.type for e in events] == [EventType.RESPONSE_STARTED, EventType.RESPONSE_DONE]
        assert events[1].fields == {"response": 1, "interrupted": False}
        got = [int(np.frombuffer(f, "<i2")[0]) for f in frames]
        assert got == list(range(10 - PREROLL_FRAMES, 40 + TAIL_FRAMES))

    run("echo", scenario)


def test_tone_answers_every_utterance() -> None:
    async def scenario(ws: WS) -> None:
        for turn in (1, 2):
            await ws.send_str(event(EventType.SPEECH_STARTED, onset_frames=3).encode())
            await ws.send_str(event(EventType.SPEECH_STOPPED, trailing_frames=25).encode())
            events, frames = await response(ws)
            assert events[0].fields == {"response": turn}
            assert frames == tone_frames(1000.0, 100)
        spectrum = np.abs(np.fft.rfft(np.frombuffer(b"".join(frames), "<i2")))
        assert np.argmax(spectrum) * 48000 / (len(frames) * 960) == 1000.0

    run("tone", scenario)


def test_protocol_violation_closes_the_socket() -> None:
    async def scenario(ws: WS) -> None:
        await ws.send_bytes(b"\x00\x01")
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1003

    run("echo", scenario)


def test_session_ended_closes_cleanly() -> None:
    async def scenario(ws: WS) -> None:
        await ws.send_str(event(EventType.SESSION_ENDED, reason="bye").encode())
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1000

    run("tone", scenario)


def test_agent_metrics_count_connections_and_responses() -> None:
    """issue 16: the agent has /metrics like every component (process_*, build info)."""

    async def scrape(http: aiohttp.ClientSession, server: TestServer) -> str:
        async with http.get(server.make_url("/metrics")) as reply:
            assert reply.status == 200
            return await reply.text()

    async def main() -> None:
        server = TestServer(make_app("echo"))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(server.make_url("/")):
                    for _ in range(50):  # the handler counts the connection once it runs
                        if "icegate_agent_connections 1.0" in await scrape(http, server):
                            break
                        await asyncio.sleep(0.02)
                    else:
                        raise AssertionError("connection not counted")
                for _ in range(50):
                    text = await scrape(http, server)
                    if "icegate_agent_connections 0.0" in text:
                        break
                    await asyncio.sleep(0.02)
                assert "icegate_agent_connections 0.0" in text and "icegate_agent_sessions_total 1.0" in text
                assert 'icegate_build_info{component="agent"' in text and "process_open_fds" in text
                assert 'icegate_agent_http_responses_total{code="200",path="/metrics"}' in text
        finally:
            await server.close()

    asyncio.run(main())
