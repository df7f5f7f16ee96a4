"""transceiver.bridge with the real built-in agents over a real WebSocket.

Client audio is fed frame by frame (faster than real time); the playout queue is read
the way the outbound track reads it. Turn events for the client are collected by a
stand-in for the data channel.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from transceiver import agents
from transceiver.agent_protocol import FRAME_SAMPLES, Event, EventType, event
from transceiver.agents import PREROLL_FRAMES, TAIL_FRAMES, AgentKind, make_app, tone_frames
from transceiver.bridge import SILENCE, MediaBridge
from transceiver.client import dominant_frequency, silence, tone
from transceiver.config import VadConfig

VAD = VadConfig(threshold_db=-40.0, start_ms=60, hangover_ms=100, silence_ms=400)
FIRST_RESPONSE = 41  # the recording agent's first response id: not a count the bridge could make up


class Channel:
    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]


class Harness:
    def __init__(self, bridge: MediaBridge, channel: Channel) -> None:
        self.bridge = bridge
        self.channel = channel
        self.latencies: list[float] = []
        self.barge_ins = 0

    async def say(self, pcm: np.ndarray) -> None:
        for chunk in pcm.reshape(-1, FRAME_SAMPLES):
            await self.bridge.input_frame(chunk.astype("<i2").tobytes())

    async def until(
        self, predicate: Callable[[], bool], timeout: float = 3.0, show: Callable[[], object] = lambda: None
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; {show()}"
            await asyncio.sleep(0.01)

    def play(self, frames: int) -> list[bytes]:
        return [self.bridge.next_playout_frame() for _ in range(frames)]


@pytest.fixture
def agent_received(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Serve the real tone agent, recording every event it receives, responses numbered from 41."""
    received: list[Event] = []

    class RecordingToneAgent(agents.ToneAgent):
        def __init__(self, ws: web.WebSocketResponse, frames: Sequence[bytes]) -> None:
            super().__init__(ws, frames)
            self._ids = itertools.count(FIRST_RESPONSE)

        async def on_event(self, ev: Event) -> None:
            received.append(ev)
            await super().on_event(ev)

    monkeypatch.setattr(agents, "ToneAgent", RecordingToneAgent)
    return received


def run(kind: AgentKind, scenario: Callable[[Harness], Awaitable[None]], tone_ms: int = 300) -> Harness:
    holder: list[Harness] = []

    async def main() -> None:
        server = TestServer(make_app(kind, tone_hz=440.0, tone_ms=tone_ms))
        await server.start_server()
        async with aiohttp.ClientSession() as http:
            h: Harness
            bridge = MediaBridge(
                "s1",
                VAD,
                agent_url=str(server.make_url("/")).replace("http", "ws"),
                http=http,
                on_turn_latency=lambda s: h.latencies.append(s),
                on_barge_in=lambda: setattr(h, "barge_ins", h.barge_ins + 1),
            )
            h = Harness(bridge, Channel())
            bridge.events = h.channel
            holder.append(h)
            await bridge.connect_agent()
            try:
                await scenario(h)
            finally:
                await bridge.close("test over")
                await server.close()

    asyncio.run(main())
    return holder[0]


def test_echo_turn_through_the_bridge() -> None:
    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([silence(200), tone(600.0, 500), silence(800)]))
        assert h.channel.types() == ["speech_started", "speech_stopped"]
        await h.until(lambda: h.bridge.agent_speaking)
        heard: list[bytes] = []  # what plays between response_started and response_done
        while "response_done" not in h.channel.types():
            frame = h.bridge.next_playout_frame()
            if "response_started" in h.channel.types() and "response_done" not in h.channel.types():
                heard.append(frame)
            await asyncio.sleep(0)
        pcm = np.frombuffer(b"".join(heard), "<i2")
        assert dominant_frequency(pcm) == 600.0
        assert len(heard) == 25 + PREROLL_FRAMES + TAIL_FRAMES
        assert h.channel.types() == ["speech_started", "speech_stopped", "response_started", "response_done"]
        assert h.channel.sent[-1] == {"type": "response_done", "response": 1, "interrupted": False}
        assert len(h.latencies) == 1 and 0 <= h.latencies[0] < 1.0
        assert not h.bridge.agent_speaking and h.bridge.turns == 1

    run("echo", scenario)


def test_barge_in_cuts_agent_audio_at_once_and_tells_the_agent(agent_received: list[Event]) -> None:
    cut, next_response = FIRST_RESPONSE, FIRST_RESPONSE + 1

    def agent_got() -> list[tuple[str, dict[str, Any]]]:
        return [(e.type.value, e.fields) for e in agent_received]

    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
        await h.until(lambda: h.bridge._queued == 100)  # the whole 2 s answer is queued
        assert all(f != SILENCE for f in h.play(10))  # the client is hearing it
        assert h.bridge.agent_speaking
        await h.say(tone(300.0, 60))  # the user talks over it: detected on the third frame
        assert h.barge_ins == 1
        assert not h.bridge.agent_speaking
        assert h.play(5) == [SILENCE] * 5  # cut immediately
        assert h.channel.sent[-2:] == [
            {"type": "response_done", "response": cut, "interrupted": True},
            {"type": "barge_in", "response": cut},
        ]
        # The agent hears of it, naming the response it is told was cut.
        await h.until(lambda: len(agent_received) == 5, timeout=1.0, show=agent_got)
        assert agent_got() == [
            ("session_started", {"session": "s1", "sample_rate": 48000, "channels": 1, "frame_ms": 20}),
            ("speech_started", {"onset_frames": 3}),
            ("speech_stopped", {"trailing_frames": 25}),
            ("speech_started", {"onset_frames": 3}),
            ("barge_in", {"response": cut}),
        ]
        await asyncio.sleep(0.2)  # the agent's own response_done for the cut response is not replayed
        assert h.play(3) == [SILENCE] * 3
        assert h.channel.types().count("response_done") == 1
        # The next turn is answered normally.
        await h.say(np.concatenate([tone(300.0, 240), silence(600)]))
        await h.until(lambda: h.bridge.agent_speaking)
        assert all(f != SILENCE for f in h.play(5))
        assert h.channel.sent[-1] == {"type": "response_started", "response": next_response}

    run("tone", scenario, tone_ms=2000)
    assert [e.type.value for e in agent_received].count("barge_in") == 1
    assert agent_got()[-1] == ("session_ended", {"reason": "test over"})


def test_barge_in_before_the_answer_starts_playing_names_the_cut_response() -> None:
    """The whole answer arrived but its first frame has not been played yet: it is the one cut."""

    async def main() -> None:
        bridge = MediaBridge("s4", VAD)
        channel = Channel()
        bridge.events = channel
        try:
            bridge.agent_event(event(EventType.RESPONSE_STARTED, response=7))
            for _ in range(5):
                bridge.agent_frame(tone_frames(440.0, 20)[0])
            bridge.agent_event(event(EventType.RESPONSE_DONE, response=7, interrupted=False))
            assert bridge.agent_speaking
            for chunk in tone(300.0, 60).reshape(-1, FRAME_SAMPLES):
                await bridge.input_frame(chunk.tobytes())
            # Never started for the client, so no response_done; the agent gets this same event.
            assert channel.sent == [
                {"type": "speech_started", "onset_frames": 3},
                {"type": "barge_in", "response": 7},
            ]
            assert not bridge.agent_speaking and bridge.next_playout_frame() is SILENCE
        finally:
            await bridge.close("done")

    asyncio.run(main())


def test_without_an_agent_turn_events_still_reach_the_client() -> None:
    async def main() -> None:
        bridge = MediaBridge("s2", VAD)
        channel = Channel()
        bridge.events = channel
        await bridge.connect_agent()
        for chunk in np.concatenate([tone(300.0, 200), silence(600)]).reshape(-1, FRAME_SAMPLES):
            await bridge.input_frame(chunk.tobytes())
        assert channel.types() == ["speech_started", "speech_stopped"]
        assert bridge.next_playout_frame() == SILENCE
        await bridge.close("done")

    asyncio.run(main())


def test_unreachable_agent_leaves_the_session_agentless(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens at the agent URL: one warning, no agent link, turns still reach the client."""
    with socket.socket() as closed:  # bound, never listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/"
        speech = np.concatenate([tone(300.0, 200), silence(600)]).reshape(-1, FRAME_SAMPLES)

        async def main() -> None:
            async with aiohttp.ClientSession() as http:
                bridge = MediaBridge(
                    "s3", VAD, agent_url=url, http=http, on_agent_unreachable=lambda: unreachable.append(1)
                )
                channel = Channel()
                bridge.events = channel
                try:
                    await asyncio.wait_for(bridge.connect_agent(), 1.0)
                    assert bridge._ws is None and not bridge._tasks  # no link, no reader task
                    for chunk in speech:
                        await bridge.input_frame(chunk.tobytes())
                    assert channel.types() == ["speech_started", "speech_stopped"]
                    assert (bridge.frames_in, bridge.turns) == (len(speech), 1)
                    assert not bridge.agent_speaking
                    assert bridge.next_playout_frame() is SILENCE
                finally:
                    await bridge.close("done")
                assert bridge.track.readyState == "ended"

        unreachable: list[int] = []
        with caplog.at_level(logging.WARNING, logger="transceiver.bridge"):
            asyncio.run(main())
    assert unreachable == [1]  # counted once: icegate_transceiver_agent_unreachable_total
    warnings = [r for r in caplog.records if r.name == "transceiver.bridge"]
    assert len(warnings) == 1  # once at connect, not once per frame sent to no agent
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].getMessage().startswith(f"agent unreachable session=s3 url={url} error=")
