"""A real Pipecat pipeline as the agent, against the real bridge (issue 17).

Each test serves a bot through :func:`transceiver.agent.pipecat_transport.make_app` on
loopback and calls it with :class:`transceiver.bridge.MediaBridge`, the transceiver's own
half of the protocol (no WebRTC): the bridge's VAD decides the turns, its playout queue
is what the caller would hear. The pipelines are ``transport.input() -> processors ->
transport.output()``, with no external service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    LLMContextFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from examples import pipecat_echo
from icegate.errors import WireError
from labkit.support import REPO, Processes, free_port, http_get, metric_sample, wait_for
from transceiver.agent.check import check
from transceiver.agent.pipecat_transport import (
    Bot,
    IcegateParams,
    IcegateTransport,
    choose,
    make_app,
)
from transceiver.agent_protocol import FRAME_SAMPLES, AudioFormat, Event, EventType, event, hello_audio
from transceiver.bridge import SILENCE, MediaBridge
from transceiver.client import dominant_frequency, silence, tone
from transceiver.config import VadConfig

VAD = VadConfig(threshold_db=-40.0, silence_ms=400)  # as in test_agent_from_the_doc


@dataclass
class Record:
    """What the agent side saw: the frames in its pipeline, what it sent, how the call ended."""

    frames: list[Frame] = field(default_factory=list)
    heard: list[InputAudioRawFrame] = field(default_factory=list)  # the caller's audio, as Pipecat got it
    sent: list[dict[str, Any]] = field(default_factory=list)  # events the agent sent, with a time
    barge_ins: list[tuple[Any, int]] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def kinds(self) -> list[str]:
        return [type(f).__name__ for f in self.frames]

    def sent_types(self) -> list[str]:
        return [e["type"] for e in self.sent]


class Watch(FrameProcessor):
    """Passes everything on; records every frame but the caller's audio."""

    def __init__(self, record: Record) -> None:
        super().__init__()
        self._record = record

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._record.heard.append(frame)
        else:
            self._record.frames.append(frame)
        await self.push_frame(frame, direction)


class Speaker(FrameProcessor):
    """Answers each turn with a tone spoken as TTS; answers data with data; may end the call."""

    def __init__(self, hz: float, ms: int, rate: int, goodbye: str | None = None) -> None:
        super().__init__()
        self._hz, self._ms, self._rate, self._goodbye = hz, ms, rate, goodbye

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame):
            await self.push_frame(TTSStartedFrame())
            await self.push_frame(TTSTextFrame(text=f"{self._hz:g} hertz", text_type="sentence"))
            pcm = tone(self._hz, self._ms)[:: 48000 // self._rate].tobytes()  # 48 kHz -> the TTS rate
            step = self._rate // 10 * 2  # 100 ms chunks, as a TTS streams
            for i in range(0, len(pcm), step):
                audio = pcm[i : i + step]
                await self.push_frame(TTSAudioRawFrame(audio=audio, sample_rate=self._rate, num_channels=1))
            await self.push_frame(TTSStoppedFrame())
            if self._goodbye is not None:
                await self.push_frame(EndWorkerFrame(reason=self._goodbye))
        elif isinstance(frame, InputTransportMessageFrame):
            await self.push_frame(OutputTransportMessageFrame(message={"got": frame.message}))
            await self.push_frame(OutputTransportMessageFrame(message={"label": "rtvi-ai", "type": "x"}))
            await self.push_frame(OutputTransportMessageFrame(message={"big": "x" * 9000}))  # over 8 KiB
        elif isinstance(frame, TranscriptionFrame):
            await self.push_frame(OutputTransportMessageFrame(message={"heard": frame.text}))


def recording_bot(
    record: Record,
    make: Callable[[], list[FrameProcessor]],
    after: Callable[[], list[FrameProcessor]] = list,
) -> Bot:
    async def bot(transport: IcegateTransport) -> None:
        send_event = transport.send_event

        async def sending(ev: Event) -> bool:
            record.sent.append({"type": ev.type.value, **ev.fields, "at": time.monotonic()})
            return await send_event(ev)

        transport.send_event = sending  # type: ignore[method-assign]

        @transport.event_handler("on_barge_in")
        async def on_barge_in(_: IcegateTransport, response: Any, heard_ms: int) -> None:
            record.barge_ins.append((response, heard_ms))

        @transport.event_handler("on_client_disconnected")
        async def on_disconnected(_: IcegateTransport, reason: str) -> None:
            record.disconnected.append(reason)

        pipeline = Pipeline([transport.input(), Watch(record), *make(), transport.output(), *after()])
        worker = PipelineWorker(
            pipeline, params=transport.pipeline_params(), enable_rtvi=False, idle_timeout_secs=None
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        try:
            await runner.run()
        finally:
            record.done.set()

    return bot


class Channel:
    """The client's ``events`` data channel."""

    readyState = "open"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.events.append(json.loads(data))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@contextlib.asynccontextmanager
async def served(bot: Bot, params: IcegateParams) -> AsyncIterator[str]:
    server = TestServer(make_app(bot, params))
    await server.start_server()
    try:
        yield str(server.make_url("/")).replace("http", "ws")
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def bridged(url: str, hangups: list[str] | None = None) -> AsyncIterator[tuple[MediaBridge, Channel]]:
    channel = Channel()
    async with aiohttp.ClientSession() as http:
        on_hangup = hangups.append if hangups is not None else None
        bridge = MediaBridge("pipecat", VAD, agent_url=url, http=http, on_hangup=on_hangup)
        bridge.events = channel
        await bridge.connect_agent()
        assert bridge.agent_state == "connected", channel.events
        try:
            yield bridge, channel
        finally:
            await bridge.close("completed")


async def speak(bridge: MediaBridge, pcm: np.ndarray) -> None:
    for chunk in pcm.reshape(-1, FRAME_SAMPLES):
        await bridge.input_frame(chunk.tobytes())


async def hear_until(bridge: MediaBridge, channel: Channel, kind: str, timeout: float = 5.0) -> list[bytes]:
    """The playout, drained as fast as it fills, until the client has seen ``kind``."""
    heard: list[bytes] = []
    deadline = time.monotonic() + timeout
    while kind not in channel.types():
        assert time.monotonic() < deadline, channel.events
        if bridge._playout:
            heard.append(bridge.next_playout_frame())
        else:
            await asyncio.sleep(0.005)
    return [f for f in heard if f is not SILENCE]


def test_the_echo_example_at_16k_in_24k_out_through_the_bridge() -> None:
    """examples/pipecat_echo.py: the caller hears their 300 Hz tone back, at its pitch and
    length; the data and the agent's transcript arrive before the response; the caller's
    hang-up cancels the pipeline and the bot returns."""
    record = Record()

    def echo() -> list[FrameProcessor]:
        return [pipecat_echo.Echo()]

    async def main() -> tuple[Channel, list[bytes], dict[str, Any]]:
        async with served(recording_bot(record, echo), pipecat_echo.PARAMS) as url:
            async with bridged(url) as (bridge, channel):
                negotiated = bridge.describe()
                await speak(bridge, np.concatenate([tone(300.0, 400), silence(600)]))
                heard = await hear_until(bridge, channel, "response_done")
            await asyncio.wait_for(record.done.wait(), 5)
        return channel, heard, negotiated

    channel, heard, negotiated = asyncio.run(main())
    assert (negotiated["input"], negotiated["output"]) == (
        {"rate": 16000, "frame_ms": 20},
        {"rate": 24000, "frame_ms": 20},
    )
    assert channel.types() == [
        "speech_started",
        "speech_stopped",
        "end_of_turn",
        "data",
        "transcript",
        "response_started",
        "response_done",
    ]
    echo_ms = channel.events[3]["payload"]["echo_ms"]
    assert channel.events[4] == {"type": "transcript", "role": "agent", "text": f"echoing {echo_ms} ms"}
    assert channel.events[-1]["interrupted"] is False
    # 400 ms of tone, the 40 ms pre-roll and the 100 ms hangover before speech_stopped
    assert 480 <= echo_ms <= 600, echo_ms
    assert abs(len(heard) * 20 - echo_ms) <= 40, (len(heard), echo_ms)
    pcm = np.frombuffer(b"".join(heard), "<i2")
    assert abs(dominant_frequency(pcm) - 300) < 5
    loud = [f for f in heard if np.abs(np.frombuffer(f, "<i2")).max() > 3000]
    assert 18 <= len(loud) <= 22  # the 400 ms of tone, 20 ms frames, through two resamplers
    # the caller's voice reached Pipecat as 20 ms frames at 16 kHz, at its pitch
    assert {(f.sample_rate, len(f.audio)) for f in record.heard} == {(16000, 640)}
    caller = np.frombuffer(b"".join(f.audio for f in record.heard[:20]), "<i2")
    assert abs(dominant_frequency(caller, rate=16000) - 300) < 5
    # turns as the transceiver decided them, then its hang-up as a cancellation
    kinds = record.kinds()
    assert kinds.index("VADUserStartedSpeakingFrame") < kinds.index("UserStartedSpeakingFrame")
    assert kinds.index("VADUserStoppedSpeakingFrame") < kinds.index("UserStoppedSpeakingFrame")
    assert record.disconnected == ["completed"]
    assert kinds[-1] == "CancelFrame"
    assert "hangup" not in record.sent_types()  # the transceiver ended the call; nothing to tell it


def test_barge_in_interrupts_the_pipecat_response() -> None:
    """The caller speaks over a 3 s answer: the pipeline gets an interruption, stops its
    audio and ends the response at once; the client hears the cut; the next turn is answered."""
    record = Record()
    params = IcegateParams(input_rate=16000, output_rate=24000)

    def speaker() -> list[FrameProcessor]:
        return [Speaker(500.0, 3000, 24000)]

    async def main() -> tuple[Channel, list[float], float]:
        async with served(recording_bot(record, speaker), params) as url:
            async with bridged(url) as (bridge, channel):
                await speak(bridge, np.concatenate([tone(300.0, 400), silence(600)]))
                played = 0
                while played < 25:  # 500 ms of the answer, heard in real time
                    await asyncio.sleep(0.02)
                    if bridge.next_playout_frame() is not SILENCE:
                        played += 1
                barged = time.monotonic()
                await speak(bridge, np.concatenate([tone(300.0, 200), silence(800)]))  # a second turn
                deadline = time.monotonic() + 5
                while channel.types().count("response_started") < 2:
                    assert time.monotonic() < deadline, channel.events
                    await asyncio.sleep(0.02)
                    bridge.next_playout_frame()
            await asyncio.wait_for(record.done.wait(), 5)
        done_at = [e["at"] for e in record.sent if e["type"] == "response_done"]
        return channel, done_at, barged

    channel, done_at, barged = asyncio.run(main())
    types = channel.types()
    cut = types.index("barge_in")
    assert types[cut - 1] == "response_done" and channel.events[cut - 1]["interrupted"] is True
    assert channel.events[cut]["response"] == 1 and channel.events[cut]["heard_ms"] >= 500
    assert "InterruptionFrame" in record.kinds()
    assert record.barge_ins and record.barge_ins[0][0] == 1 and record.barge_ins[0][1] >= 500
    # the agent ended response 1 at the barge-in, long before its 3 s were sent
    assert done_at[0] - barged < 0.3, done_at[0] - barged
    sent_frames = record.sent_types()
    assert sent_frames.count("response_started") == 2 and types.count("response_started") == 2


def test_the_agent_hangs_up_after_its_goodbye() -> None:
    """``EndWorkerFrame`` after the answer: the caller hears the whole answer, then the
    hang-up with the bot's reason, and the call ends."""
    record = Record()
    hangups: list[str] = []
    params = IcegateParams(input_rate=8000, output_rate=16000, frame_ms=40)

    def speaker() -> list[FrameProcessor]:
        return [Speaker(700.0, 400, 16000, goodbye="goodbye")]

    async def main() -> tuple[Channel, list[bytes], dict[str, Any]]:
        async with served(recording_bot(record, speaker), params) as url:
            async with bridged(url, hangups) as (bridge, channel):
                negotiated = bridge.describe()
                await speak(bridge, np.concatenate([tone(300.0, 400), silence(600)]))
                heard = await hear_until(bridge, channel, "hangup")
            await asyncio.wait_for(record.done.wait(), 5)
        return channel, heard, negotiated

    channel, heard, negotiated = asyncio.run(main())
    assert (negotiated["input"], negotiated["output"]) == (
        {"rate": 8000, "frame_ms": 40},
        {"rate": 16000, "frame_ms": 40},
    )
    assert channel.types()[3:] == ["transcript", "response_started", "response_done", "hangup"]
    assert channel.events[-1] == {"type": "hangup", "reason": "goodbye"}
    assert hangups == ["agent: goodbye"]
    assert abs(len(heard) - 20) <= 2  # 400 ms at 20 ms frames
    assert abs(dominant_frequency(np.frombuffer(b"".join(heard[2:-2]), "<i2")) - 700) < 5
    assert record.sent_types()[-1] == "hangup"
    assert "EndFrame" in record.kinds()


def test_data_and_transcripts_both_ways() -> None:
    """The client's data and words reach the pipeline as frames; its messages come back as
    data; Pipecat's RTVI messages and a payload over 8 KiB are not sent (the call goes on)."""
    record = Record()
    params = IcegateParams()

    def speaker() -> list[FrameProcessor]:
        return [Speaker(500.0, 200, 24000)]

    async def main() -> tuple[Channel, str]:
        async with served(recording_bot(record, speaker), params) as url, bridged(url) as (bridge, channel):
            bridge.client_message(event(EventType.DATA, payload={"button": "yes"}).encode())
            bridge.client_message(event(EventType.TRANSCRIPT, role="user", text="hello there").encode())
            bridge.client_message(event(EventType.TRANSCRIPT, role="note", text="aside").encode())
            deadline = time.monotonic() + 5
            while len([e for e in channel.events if e["type"] == "data"]) < 3:
                assert time.monotonic() < deadline, channel.events
                await asyncio.sleep(0.02)
                bridge.next_playout_frame()  # the agent's data reaches the client at playout
            await asyncio.sleep(0.2)
            bridge.next_playout_frame()
            state = bridge.agent_state
        return channel, state

    channel, state = asyncio.run(main())
    payloads = [e["payload"] for e in channel.events if e["type"] == "data"]
    # (Pipecat hands system frames such as InputTransportMessageFrame on ahead of data frames)
    assert sorted(payloads, key=json.dumps) == sorted(
        [
            {"got": {"button": "yes"}},
            {"heard": "hello there"},
            {"got": {"type": "transcript", "role": "note", "text": "aside"}},
        ],
        key=json.dumps,
    )
    assert state == "connected"
    transcripts = [f for f in record.frames if isinstance(f, TranscriptionFrame)]
    assert [t.text for t in transcripts] == ["hello there"]
    messages = [f.message for f in record.frames if isinstance(f, InputTransportMessageFrame)]
    assert messages[0] == {"button": "yes"}


def test_icegate_agent_check_passes_the_pipecat_echo() -> None:
    async def main() -> dict[str, Any]:
        async with served(pipecat_echo.bot, pipecat_echo.PARAMS) as url:
            return await check(url, timeout=5.0)

    report = asyncio.run(main())
    assert report["ok"] is True, report["problems"]
    assert report["negotiated"] == {
        "input": {"rate": 16000, "frame_ms": 20},
        "output": {"rate": 24000, "frame_ms": 20},
    }
    assert report["events"][-2:] == ["response_started", "response_done"]
    assert 600 <= report["response_ms"] <= 720  # 600 ms of speech, pre-roll and hangover


def test_the_handshake_takes_the_bots_formats_or_falls_back() -> None:
    hello = event(EventType.HELLO, version=1, session="s", audio=hello_audio())
    got = choose(hello, IcegateParams(input_rate=8000, output_rate=24000, frame_ms=10))
    assert (got.input, got.output) == (AudioFormat(8000, 10), AudioFormat(24000, 10))
    narrow = event(EventType.HELLO, version=1, session="s",
                   audio=hello_audio() | {"output_rates": [48000], "frame_ms": [20]})  # fmt: skip
    got = choose(narrow, IcegateParams(input_rate=16000, output_rate=24000, frame_ms=40))
    assert (got.input, got.output) == (AudioFormat(16000, 20), AudioFormat(48000, 20))
    with pytest.raises(WireError, match=r"hello\.version: this agent speaks version 1, got 2"):
        choose(event(EventType.HELLO, version=2, session="s", audio=hello_audio()), IcegateParams())
    for kwargs, problem in [
        ({"input_rate": 44100}, r"input_rate: expected one of \[8000, 16000, 24000, 48000\], got 44100"),
        ({"frame_ms": 30}, r"frame_ms: expected one of \[10, 20, 40\], got 30"),
        ({"lead_ms": 5000}, r"lead_ms: expected 0-1000, got 5000"),
    ]:
        with pytest.raises(ValueError, match=problem):
            IcegateParams(**kwargs)


def test_a_bad_hello_is_refused_with_negotiation() -> None:
    async def never(transport: IcegateTransport) -> None:
        raise AssertionError("no call without a handshake")

    async def main() -> tuple[dict[str, Any], int | None]:
        async with (
            served(never, IcegateParams()) as url,
            aiohttp.ClientSession() as http,
            http.ws_connect(url) as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "version": 2, "session": "s", "audio": {}}))
            reply = json.loads((await ws.receive()).data)
            await ws.receive()
            return reply, ws.close_code

    reply, code = asyncio.run(main())
    assert reply["type"] == "error" and reply["code"] == "negotiation"
    assert "hello.version" in reply["message"]
    assert code == 1002


class Bare(FrameProcessor):
    """Answers with plain ``OutputAudioRawFrame``s (no TTS framing), in two bursts 1 s apart."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame):
            pcm = tone(400.0, 200).tobytes()  # 48 kHz: the output transport resamples to 24 kHz
            await self.push_frame(OutputAudioRawFrame(audio=pcm, sample_rate=48000, num_channels=1))
            self.create_task(self._later(pcm))

    async def _later(self, pcm: bytes) -> None:
        await asyncio.sleep(1.0)
        await self.push_frame(OutputAudioRawFrame(audio=pcm, sample_rate=48000, num_channels=1))


def test_bare_output_audio_is_a_response_per_burst() -> None:
    """Audio that no TTS announced still arrives as responses: each pause of
    ``RESPONSE_IDLE_S`` ends one, so the client's response_done comes after each burst."""
    record = Record()

    async def main() -> Channel:
        async with served(recording_bot(record, lambda: [Bare()]), IcegateParams()) as url:
            async with bridged(url) as (bridge, channel):
                await speak(bridge, np.concatenate([tone(300.0, 400), silence(600)]))
                deadline = time.monotonic() + 5
                while channel.types().count("response_done") < 2:
                    assert time.monotonic() < deadline, channel.events
                    await asyncio.sleep(0.02)
                    bridge.next_playout_frame()
            await asyncio.wait_for(record.done.wait(), 5)
        return channel

    channel = asyncio.run(main())
    assert channel.types()[3:] == ["response_started", "response_done", "response_started", "response_done"]
    assert [e["response"] for e in channel.events[3:]] == [1, 1, 2, 2]
    assert not any(e["interrupted"] for e in channel.events if e["type"] == "response_done")


ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "examples/pipecat_echo.py"],
        [*ICEGATE, "agent", "run", "--pipecat", "examples.pipecat_echo:bot"],
    ],
    ids=["script", "icegate-agent-run"],
)
def test_the_example_runs_and_icegate_agent_check_passes(procs: Processes, argv: list[str]) -> None:
    """``python examples/pipecat_echo.py --listen`` (or ``icegate agent run --pipecat``), then
    ``icegate agent check``, as docs/PIPECAT.md says."""
    port = free_port()
    procs.start([*argv, "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"ws://127.0.0.1:{port}/"

    def listening() -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 30, what="the example to listen")
    out = subprocess.run(
        [*ICEGATE, "agent", "check", url, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["negotiated"]["output"] == {"rate": 24000, "frame_ms": 20}
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert metric_sample(text, "icegate_agent_sessions_total") == 1
    assert metric_sample(text, "icegate_agent_connections") == 0


class ParrotLLM(FrameProcessor):
    """Stands in for an LLM and a TTS: answers the user's last message with it, spoken as a tone."""

    def __init__(self, heard: list[list[dict[str, Any]]]) -> None:
        super().__init__()
        self._heard = heard

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        messages = list(frame.context.get_messages())
        self._heard.append(messages)
        await self.push_frame(TTSStartedFrame())
        await self.push_frame(TTSTextFrame(text=f"you said: {messages[-1]['content']}", text_type="sentence"))
        pcm = tone(600.0, 300)[::2].tobytes()  # 24 kHz
        await self.push_frame(TTSAudioRawFrame(audio=pcm, sample_rate=24000, num_channels=1))
        await self.push_frame(TTSStoppedFrame())


def test_pipecats_context_aggregators_take_the_transceivers_turns() -> None:
    """The usual Pipecat shape, user aggregator -> LLM -> TTS -> output -> assistant aggregator,
    with ``ExternalUserTurnStrategies``: the transceiver's turn and the client's words (standing
    in for an STT) make one user message; the answer reaches the caller with its transcript."""
    record = Record()
    heard: list[list[dict[str, Any]]] = []
    pair: list[LLMContextAggregatorPair] = []

    def before() -> list[FrameProcessor]:
        strategies = LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
        pair.append(LLMContextAggregatorPair(LLMContext(), user_params=strategies))
        return [pair[0].user(), ParrotLLM(heard)]

    def after() -> list[FrameProcessor]:
        return [pair[0].assistant()]

    async def main() -> tuple[Channel, list[bytes]]:
        async with served(recording_bot(record, before, after), IcegateParams()) as url:
            async with bridged(url) as (bridge, channel):
                await speak(bridge, tone(300.0, 400))
                bridge.client_message(
                    event(EventType.TRANSCRIPT, role="user", text="what time is it").encode()
                )
                await speak(bridge, silence(600))
                heard_audio = await hear_until(bridge, channel, "response_done")
            await asyncio.wait_for(record.done.wait(), 5)
        return channel, heard_audio

    channel, audio = asyncio.run(main())
    assert heard == [[{"role": "user", "content": "what time is it"}]]
    assert channel.types()[3:] == ["transcript", "response_started", "response_done"]
    assert channel.events[3] == {"type": "transcript", "role": "agent", "text": "you said: what time is it"}
    assert abs(len(audio) - 15) <= 1  # 300 ms
    assert abs(dominant_frequency(np.frombuffer(b"".join(audio[1:-1]), "<i2")) - 600) < 5


def test_a_bot_that_takes_its_time_to_start_keeps_the_call() -> None:
    """A bot that spends 1 s before its pipeline runs (loading models): the transceiver's
    pings are answered meanwhile (it would declare the agent lost within 0.6 s), and the
    turn spoken during that second is answered once the pipeline is up."""
    record = Record()
    inner = recording_bot(record, lambda: [pipecat_echo.Echo()])

    async def slow(transport: IcegateTransport) -> None:
        await asyncio.sleep(1.0)
        await inner(transport)

    async def main() -> tuple[Channel, list[bytes], str]:
        async with served(slow, pipecat_echo.PARAMS) as url:
            async with bridged(url) as (bridge, channel):
                await speak(bridge, np.concatenate([tone(300.0, 400), silence(600)]))
                await asyncio.sleep(1.2)
                state = bridge.agent_state
                heard = await hear_until(bridge, channel, "response_done")
            await asyncio.wait_for(record.done.wait(), 5)
        return channel, heard, state

    channel, heard, state = asyncio.run(main())
    assert state == "connected"
    assert channel.types()[3:] == ["data", "transcript", "response_started", "response_done"]
    assert abs(len(heard) * 20 - channel.events[3]["payload"]["echo_ms"]) <= 40


def test_icegate_agent_run_pipecat_names_what_is_wrong() -> None:
    from click.testing import CliRunner

    from transceiver.cli import agent

    runner = CliRunner()
    for args, problem in [
        (["--pipecat", "examples.pipecat_echo:bot", "--kind", "echo"], "give it without --kind and --app"),
        (["--pipecat", "nocolon"], "expected module:function"),
        (["--pipecat", "no.such.module:bot"], "cannot import no.such.module"),
        (["--pipecat", "examples.pipecat_echo:Echo"], "Echo is not an async function"),
        (["--pipecat", "examples.pipecat_echo:bot", "--input-rate", "44100"], "input_rate: expected one of"),
    ]:
        result = runner.invoke(agent, ["run", *args])
        assert result.exit_code == 2 and problem in result.output, result.output
