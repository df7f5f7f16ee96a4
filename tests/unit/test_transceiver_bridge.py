"""transceiver.bridge with agents written on the SDK, over a real WebSocket (protocol v1).

Client audio is fed frame by frame (faster than real time); the playout queue is read
the way the outbound track reads it. Events for the client are collected by a stand-in
for the data channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from transceiver.agent import builtin, sdk
from transceiver.agent_protocol import FRAME_SAMPLES, NATIVE, AudioFormat, EventType, event
from transceiver.audio import PcmConverter
from transceiver.bridge import SILENCE, MediaBridge
from transceiver.client import dominant_frequency, silence, tone
from transceiver.config import AgentLinkConfig, VadConfig

VAD = VadConfig(threshold_db=-40.0, start_ms=60, hangover_ms=100, silence_ms=400)


class Channel:
    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.times: list[float] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))
        self.times.append(time.monotonic())

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]


class Harness:
    def __init__(self, bridge: MediaBridge, channel: Channel) -> None:
        self.bridge = bridge
        self.channel = channel
        self.latencies: list[float] = []
        self.barge_ins = 0
        self.hangups: list[tuple[float, str]] = []

    async def say(self, pcm: np.ndarray) -> None:
        for chunk in pcm.reshape(-1, FRAME_SAMPLES):
            await self.bridge.input_frame(chunk.astype("<i2").tobytes())

    async def until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; client got {self.channel.sent}"
            await asyncio.sleep(0.01)

    def play(self, frames: int) -> list[bytes]:
        return [self.bridge.next_playout_frame() for _ in range(frames)]

    async def play_response(self) -> list[bytes]:
        """Play until the next response_done; the frames between response_started and it."""
        heard: list[bytes] = []
        done = self.channel.types().count("response_done")
        await self.until(lambda: self.bridge.agent_speaking)
        while self.channel.types().count("response_done") == done:
            if not self.bridge._playout:  # the agent paces its sending: wait for it, play nothing
                await asyncio.sleep(0.005)
                continue
            started = self.channel.types().count("response_started") > done
            frame = self.bridge.next_playout_frame()
            if started:
                heard.append(frame)
        return heard


Received = list[tuple[str, Any]]


def recording(cls: type[sdk.Agent], received: Received) -> type[sdk.Agent]:
    """``cls`` that also records its typed events (and its hello) into ``received``."""

    class Recording(cls):  # type: ignore[valid-type,misc]
        async def on_start(self, hello: sdk.Hello) -> None:
            received.append(("hello", hello))
            await super().on_start(hello)

        async def _dispatch(self, ev: Any) -> None:
            received.append((ev.type.value, ev.fields))
            await super()._dispatch(ev)

    return Recording


def run(
    factory: Callable[[], sdk.Agent] | None,
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    link: AgentLinkConfig | None = None,
    url: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Harness:
    holder: list[Harness] = []

    async def main() -> None:
        server = None
        agent_url = url
        if factory is not None:
            server = TestServer(sdk.make_app(factory))
            await server.start_server()
            agent_url = str(server.make_url("/")).replace("http", "ws")
        async with aiohttp.ClientSession() as http:
            h: Harness
            bridge = MediaBridge(
                "s1",
                VAD,
                agent_url=agent_url,
                http=http,
                link=link,
                metadata=metadata,
                on_turn_latency=lambda s: h.latencies.append(s),
                on_barge_in=lambda: setattr(h, "barge_ins", h.barge_ins + 1),
                on_hangup=lambda reason: h.hangups.append((time.monotonic(), reason)),
            )
            h = Harness(bridge, Channel())
            bridge.events = h.channel
            holder.append(h)
            await bridge.connect_agent()
            try:
                await scenario(h)
            finally:
                await bridge.close("test over")
                if server is not None:
                    await server.close()

    asyncio.run(main())
    return holder[0]


def test_echo_turn_through_the_bridge() -> None:
    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([silence(200), tone(600.0, 500), silence(800)]))
        assert h.channel.types() == ["speech_started", "speech_stopped", "end_of_turn"]
        heard = await h.play_response()
        pcm = np.frombuffer(b"".join(heard), "<i2")
        assert dominant_frequency(pcm) == 600.0
        # speech (25 frames) + pre-roll + tail, as the echo agent trims it
        assert len(heard) == 25 + (builtin.PREROLL_MS + builtin.TAIL_MS) // 20
        assert h.channel.types()[-2:] == ["response_started", "response_done"]
        assert h.channel.sent[-1] == {"type": "response_done", "response": 1, "interrupted": False}
        assert len(h.latencies) == 1 and 0 <= h.latencies[0] < 1.0
        assert not h.bridge.agent_speaking and h.bridge.turns == 1

    run(builtin.EchoAgent, scenario)


class Negotiator(sdk.Agent):
    """Listens at 16 kHz, speaks at 24 kHz in 10 ms frames; answers with the pitch it heard."""

    input_rate = 16000
    output_rate = 24000
    frame_ms = 10

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[np.ndarray] = []

    async def on_audio(self, samples: np.ndarray) -> None:
        assert samples.size == 160  # 10 ms at 16 kHz, as accepted
        self.heard.append(samples)

    async def on_end_of_turn(self, ev: sdk.EndOfTurn) -> None:
        hz = dominant_frequency(np.concatenate(self.heard), self.input_rate)
        self.heard.clear()
        await self.transcript(f"heard {hz:.0f} Hz")
        await self.data({"hz": round(hz)})
        self.respond(builtin.tone(hz, 400, self.output_rate))


def test_handshake_negotiates_rates_and_frames_and_passes_metadata() -> None:
    received: Received = []

    async def scenario(h: Harness) -> None:
        neg = h.bridge.negotiated
        assert neg is not None
        assert (neg.input, neg.output) == (AudioFormat(16000, 10), AudioFormat(24000, 10))
        await h.say(np.concatenate([tone(500.0, 600), silence(600)]))
        heard = await h.play_response()
        # 48 kHz -> 16 kHz to the agent, its 24 kHz answer -> 48 kHz to the client: pitch kept
        assert dominant_frequency(np.frombuffer(b"".join(heard[2:-2]), "<i2")) == pytest.approx(500, abs=5)
        assert 19 <= len(heard) <= 21
        # transcript and data reach the client in order with the audio (before it)
        types = h.channel.types()
        assert types[3:6] == ["response_started", "transcript", "data"] or types[3:6] == [
            "transcript",
            "data",
            "response_started",
        ]
        assert {
            "type": "transcript",
            "role": "agent",
            "text": "heard 500 Hz",
            "final": True,
        } in h.channel.sent
        assert {"type": "data", "payload": {"hz": 500}} in h.channel.sent
        # and the client's own data reaches the agent
        h.bridge.client_message(event(EventType.DATA, payload={"cart": 3}).encode())
        h.bridge.client_message('{"type": "end_of_turn", "turn": 9}')  # not the client's to send
        await h.until(lambda: any(kind == "data" for kind, _ in received))
        assert h.bridge.counters["client_bad_event"] == 1

    run(recording(Negotiator, received), scenario, metadata={"X-Caller": "alice"})
    hello = received[0][1]
    assert received[0][0] == "hello" and hello.session == "s1" and hello.metadata == {"X-Caller": "alice"}
    assert hello.endpointing == {
        "vad": "energy",
        "silence_ms": 400,
        "hangover_ms": 100,
        "threshold_db": -40.0,
    }
    assert ("data", {"payload": {"cart": 3}}) in received
    assert not any(kind == "end_of_turn" and f.get("turn") == 9 for kind, f in received)


def test_barge_in_cuts_at_once_and_tells_the_agent_how_much_was_heard() -> None:
    received: Received = []
    agent = recording(builtin.tone_agent(300.0, 2000), received)

    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
        await h.until(lambda: h.bridge._queued >= 30)
        assert all(f != SILENCE for f in h.play(17))  # the client has heard 340 ms of it
        assert h.bridge.agent_speaking
        await h.say(tone(300.0, 60))  # the user talks over it: detected on the third frame
        assert h.barge_ins == 1 and not h.bridge.agent_speaking
        assert h.play(5) == [SILENCE] * 5  # cut immediately
        assert h.channel.sent[-2:] == [
            {"type": "response_done", "response": 1, "interrupted": True},
            {"type": "barge_in", "turn": 2, "response": 1, "heard_ms": 340},
        ]
        await h.until(lambda: any(kind == "barge_in" for kind, _ in received), timeout=1.0)
        await asyncio.sleep(0.2)  # frames still in flight from the cut response are dropped
        assert h.play(3) == [SILENCE] * 3
        await h.say(silence(600))
        heard = await h.play_response()  # the next turn is answered normally
        assert len(heard) == 100 and h.channel.sent[-1]["response"] == 2

    run(agent, scenario)
    assert ("barge_in", {"turn": 2, "response": 1, "heard_ms": 340}) in received


class Flood(sdk.Agent):
    """Ignores the pacing the SDK offers: 3 s of audio as fast as the socket takes it."""

    output_rate = 48000

    async def on_end_of_turn(self, ev: sdk.EndOfTurn) -> None:
        link = self._link
        assert link is not None
        await link.ws.send_str(event(EventType.RESPONSE_STARTED, response="r1").encode())
        for _ in range(150):
            await link.ws.send_bytes(tone(200.0, 20).tobytes())
        await link.ws.send_str(event(EventType.RESPONSE_DONE, response="r1").encode())


def test_back_pressure_bounds_the_playout_queue_and_tells_the_agent() -> None:
    received: Received = []
    link = AgentLinkConfig(max_queued_ms=1000)

    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
        await h.until(lambda: h.bridge.counters["output_dropped"] == 100)
        assert h.bridge._queued == 50  # 1 s held, the rest dropped and counted
        await h.until(lambda: any(kind == "error" for kind, _ in received))
        heard = await h.play_response()
        assert len(heard) == 50

    run(recording(Flood, received), scenario, link=link)
    errors = [f for kind, f in received if kind == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "overflow"  # once per response


def test_sdk_paces_long_responses_within_the_queue() -> None:
    link = AgentLinkConfig(max_queued_ms=400)

    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
        heard: list[bytes] = []
        await h.until(lambda: h.bridge.agent_speaking)
        while "response_done" not in h.channel.types():
            heard.append(h.bridge.next_playout_frame())
            await asyncio.sleep(0.02)  # real-time playout
        assert h.bridge.counters["output_dropped"] == 0
        assert sum(f != SILENCE for f in heard) == 50

    run(builtin.tone_agent(440.0, 1000), scenario, link=link)


def test_unreachable_agent_is_reported_and_the_call_hangs_up() -> None:
    with socket.socket() as closed:  # bound, never listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/"

        async def scenario(h: Harness) -> None:
            assert h.bridge.agent_state == "failed"
            assert h.bridge.counters == {"agent_unreachable": 1}  # once, not once per frame
            assert h.channel.sent[0]["type"] == "error" and h.channel.sent[0]["code"] == "agent_unreachable"
            fallback = h.play(20)
            assert all(f != SILENCE for f in fallback)  # the fallback tone (400 ms)
            assert h.play(1) == [SILENCE]  # then the hang-up
            assert h.channel.types() == ["error", "hangup"] and h.hangups
            await h.say(np.concatenate([tone(300.0, 200), silence(600)]))  # turns still counted
            assert h.bridge.turns == 1

        run(None, scenario, url=url)


def test_failure_policy_continue_keeps_the_session_without_an_agent() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))

        async def scenario(h: Harness) -> None:
            await asyncio.sleep(0.8)
            assert h.channel.types() == ["error"] and not h.hangups
            assert h.play(3) == [SILENCE] * 3

        run(
            None,
            scenario,
            url=f"ws://127.0.0.1:{closed.getsockname()[1]}/",
            link=AgentLinkConfig(on_failure="continue"),
        )


def test_agent_hangup_plays_its_goodbye_first() -> None:
    class Bye(sdk.Agent):
        output_rate = 48000

        async def on_end_of_turn(self, ev: sdk.EndOfTurn) -> None:
            self.respond(builtin.tone(350.0, 200, self.output_rate))
            await self.hangup("goodbye said")

    async def scenario(h: Harness) -> None:
        await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
        heard = await h.play_response()
        assert len(heard) == 10  # all of the goodbye, then the hang-up
        assert h.channel.types()[-2:] == ["response_done", "hangup"]
        assert [reason for _, reason in h.hangups] == ["agent: goodbye said"]

    run(Bye, scenario)


AGENT_PROCESS = """
import asyncio, sys
from transceiver.agent import builtin, sdk
async def main():
    await sdk.serve(builtin.tone_agent(440.0, 5000), "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_agent_that_dies_mid_call_is_reported_within_a_second(how: str) -> None:
    """A real agent process: SIGKILL (the socket closes) or SIGSTOP (nothing answers the pings)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_PROCESS, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        async def scenario(h: Harness) -> None:
            await h.say(np.concatenate([tone(300.0, 300), silence(600)]))
            await h.until(lambda: h.bridge.agent_speaking)
            died = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            await h.until(lambda: "error" in h.channel.types(), timeout=5.0)
            reported = h.channel.times[h.channel.types().index("error")] - died
            assert reported < 1.0, f"{how} agent reported after {reported:.3f} s"
            assert h.channel.sent[h.channel.types().index("error")]["code"] == "agent_lost"
            await h.until(lambda: bool(h.hangups), timeout=2.0)
            print(f"{how}: reported after {reported * 1000:.0f} ms")

        run(None, scenario, url=f"ws://127.0.0.1:{port}/", link=AgentLinkConfig(heartbeat_s=0.4))
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_speech_agent_recognises_espeak_phrases_and_answers_in_words() -> None:
    """espeak-ng speaks, pocketsphinx (in the agent) recognises, the answer is recognised back."""
    from transceiver.agent import speech
    from transceiver.agent.voice import synthesize

    listener = speech.Recognizer([*speech.DIALOGUE.values(), speech.NOT_UNDERSTOOD])
    script = ["what is the weather", "tell me a joke"]

    async def scenario(h: Harness) -> None:
        for n, phrase in enumerate(script, 1):
            voice = synthesize(phrase, 48000, voice=speech.SpeechAgent.voice, wpm=speech.SpeechAgent.wpm)
            pcm = np.concatenate([silence(200), voice, silence(800)])
            pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, np.int16)])
            await h.say(pcm)
            heard = await h.play_response()
            said = [e for e in h.channel.sent if e["type"] == "transcript"][-2:]
            assert said == [
                {"type": "transcript", "role": "user", "text": phrase, "final": True},
                {"type": "transcript", "role": "agent", "text": speech.DIALOGUE[phrase], "final": True},
            ]
            at16k = PcmConverter(NATIVE, AudioFormat(16000, 20)).push(b"".join(heard))
            assert listener.recognize(np.frombuffer(b"".join(at16k), "<i2")) == speech.DIALOGUE[phrase]
            assert h.bridge.turns == n

    run(speech.SpeechAgent, scenario)


def test_a_failure_before_the_data_channel_opens_reaches_the_client_when_it_does() -> None:
    """The agent fails at connect, before the client's data channel exists; speaking over the
    fallback tone is no barge-in and does not cancel the hang-up."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/"

        async def main() -> tuple[list[str], list[str]]:
            hangups: list[str] = []
            async with aiohttp.ClientSession() as http:
                bridge = MediaBridge("s5", VAD, agent_url=url, http=http, on_hangup=hangups.append)
                await bridge.connect_agent()
                channel = Channel()
                bridge.events = channel  # opens after the failure
                try:
                    assert channel.types() == ["error"]
                    for chunk in tone(300.0, 100).reshape(-1, FRAME_SAMPLES):
                        await bridge.input_frame(chunk.tobytes())
                        bridge.next_playout_frame()
                    while not hangups:
                        bridge.next_playout_frame()
                        await asyncio.sleep(0.001)
                finally:
                    await bridge.close("done")
                return channel.types(), hangups

        types, hangups = asyncio.run(main())
    assert types == ["error", "speech_started", "hangup"]  # no barge_in over the fallback
    assert hangups == ["agent failed: agent_unreachable"]


def raw_agent(reply: Callable[[dict[str, Any]], Awaitable[str | None]], seen: list[Any]) -> web.Application:
    """An agent answering ``hello`` with ``reply(hello)`` (None: never answers), recording what it gets."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        hello = json.loads((await ws.receive()).data)
        answer = await reply(hello)
        if answer is not None:
            await ws.send_str(answer)
        async for msg in ws:
            seen.append(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg.type)
        seen.append(("closed", ws.close_code))
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    return app


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (
            '{"type": "accept", "version": 1, "input_rate": 44100, "output_rate": 16000, '
            '"input_frame_ms": 20, "output_frame_ms": 20}',
            "accept.input_rate: expected one of",
        ),
        ('{"type": "accept", "version": 2}', "accept: missing field 'input_rate'"),
        ('{"type": "response_started", "response": 1}', "expected accept, got response_started"),
        (None, "handshake timed out"),
    ],
)
def test_a_failed_handshake_is_reported_to_both_sides(reply: str | None, problem: str) -> None:
    seen: list[Any] = []

    async def answer(hello: dict[str, Any]) -> str | None:
        assert hello["version"] == 1 and hello["session"] == "s1"
        # An agent can know its time budgets (§1, §2): the link's timers are in hello.
        assert hello["link"] == {"handshake_timeout_s": 0.5, "heartbeat_s": 0.4, "pong_timeout_s": 0.2}
        return reply

    async def main() -> Channel:
        server = TestServer(raw_agent(answer, seen))
        await server.start_server()
        channel = Channel()
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("/")).replace("http", "ws")
            link = AgentLinkConfig(handshake_timeout_s=0.5)
            bridge = MediaBridge("s1", VAD, agent_url=url, http=http, link=link)
            bridge.events = channel
            try:
                await bridge.connect_agent()
                assert bridge.agent_state == "failed" and bridge.counters["agent_unreachable"] == 1
                deadline = time.monotonic() + 3
                while not seen or seen[-1][0] != "closed":
                    assert time.monotonic() < deadline, seen
                    await asyncio.sleep(0.01)
            finally:
                await bridge.close("done")
                await server.close()
        return channel

    channel = asyncio.run(main())
    assert channel.sent[0]["type"] == "error" and channel.sent[0]["code"] == "agent_unreachable"
    assert problem in channel.sent[0]["message"]
    if reply is not None:  # the agent is told why, and the socket closes with 1002
        assert (
            seen[0]["type"] == "error" and seen[0]["code"] == "negotiation" and problem in seen[0]["message"]
        )
        assert seen[-1] == ("closed", 1002)
