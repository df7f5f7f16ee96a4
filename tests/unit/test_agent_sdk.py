"""transceiver.agent.sdk: loading an app, choosing formats, and the CLI that serves it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from icegate.errors import WireError
from transceiver.agent import builtin, sdk
from transceiver.agent_protocol import AudioFormat, EventType, event, hello_audio
from transceiver.cli import agent


def test_load_app_names_what_is_wrong() -> None:
    assert sdk.load_app("transceiver.agent.builtin:EchoAgent") is builtin.EchoAgent
    for spec, problem in [
        ("nocolon", "expected module:Class"),
        ("no.such.module:X", "cannot import no.such.module"),
        ("transceiver.agent.builtin:tone", "tone is not an Agent subclass"),
    ]:
        with pytest.raises(ValueError, match=problem):
            sdk.load_app(spec)


def test_choose_takes_the_agents_formats_or_falls_back_to_48k() -> None:
    class Wants(sdk.Agent):
        input_rate, output_rate, frame_ms = 16000, 24000, 10

    hello = event(EventType.HELLO, version=1, session="s", audio=hello_audio())
    accepted, wanted = sdk.choose(hello, Wants)
    assert (accepted.input, accepted.output) == (AudioFormat(16000, 10), AudioFormat(24000, 10))
    narrow = event(EventType.HELLO, version=1, session="s",
                   audio=hello_audio() | {"input_rates": [48000], "frame_ms": [20]})  # fmt: skip
    accepted, wanted = sdk.choose(narrow, Wants)
    assert (accepted.input, wanted.input) == (AudioFormat(48000, 20), AudioFormat(16000, 10))  # SDK resamples
    with pytest.raises(WireError, match=r"hello\.version: this SDK speaks version 1, got 2"):
        sdk.choose(event(EventType.HELLO, version=2, session="s", audio=hello_audio()), Wants)


def test_agent_run_needs_exactly_one_of_kind_and_app() -> None:
    runner = CliRunner()
    for args in ([], ["--kind", "echo", "--app", "x:Y"]):
        result = runner.invoke(agent, ["run", *args])
        assert result.exit_code == 2 and "exactly one of --kind and --app" in result.output
    result = runner.invoke(agent, ["run", "--app", "transceiver.agent.builtin:tone"])
    assert result.exit_code == 2 and "tone is not an Agent subclass" in result.output


def test_agent_check_passes_a_good_agent_and_names_a_broken_ones_problem() -> None:
    import asyncio

    from aiohttp.test_utils import TestServer

    from transceiver.agent.check import check

    class WrongSize(sdk.Agent):
        output_rate = 48000

        async def on_end_of_turn(self, ev: sdk.EndOfTurn) -> None:
            assert self._link is not None
            await self._link.ws.send_str(event(EventType.RESPONSE_STARTED, response=1).encode())
            await self._link.ws.send_bytes(bytes(1000))  # not one 20 ms frame at 48 kHz

    class Tone24k(builtin.tone_agent(500.0, 200)):  # type: ignore[misc]
        output_rate = 24000

    async def main() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        reports = []
        for app in (builtin.tone_agent(500.0, 200), WrongSize, Tone24k):
            server = TestServer(sdk.make_app(app))
            await server.start_server()
            try:
                reports.append(await check(str(server.make_url("/")).replace("http", "ws"), timeout=3.0))
            finally:
                await server.close()
        return reports[0], reports[1], reports[2]

    good, broken, at24k = asyncio.run(main())
    assert good["ok"] is True and good["problems"] == []
    assert good["events"] == [
        "speech_started",
        "speech_stopped",
        "end_of_turn",
        "response_started",
        "response_done",
    ]
    assert good["response_ms"] == 200
    assert good["negotiated"] == {
        "input": {"rate": 16000, "frame_ms": 20},
        "output": {"rate": 48000, "frame_ms": 20},
    }
    # Resampled by the transceiver (24 -> 48 kHz): every millisecond of the answer is played,
    # the resampler's delay and last partial frame flushed at response_done.
    assert at24k["ok"] is True and at24k["negotiated"]["output"] == {"rate": 24000, "frame_ms": 20}  # type: ignore[index]
    assert at24k["response_ms"] == 200
    assert broken["ok"] is False
    assert "agent_bad_message: 1" in broken["problems"]
    assert any("audio frame of 1000 bytes, expected 1920" in p for p in broken["problems"])


def test_agent_metrics_count_connections_and_responses() -> None:
    """issue 16: the agent has /metrics like every component (process_*, build info)."""
    import asyncio

    import aiohttp
    from aiohttp.test_utils import TestServer

    async def scrape(http: aiohttp.ClientSession, server: TestServer) -> str:
        async with http.get(server.make_url("/metrics")) as reply:
            assert reply.status == 200
            return await reply.text()

    async def main() -> None:
        server = TestServer(sdk.make_app(builtin.EchoAgent))
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
