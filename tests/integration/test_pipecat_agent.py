"""A Pipecat pipeline as the agent of a real call: aiortc client -> relay -> transceiver -> Pipecat.

The lab (``labkit.lab``) with the relay as the userspace twin, one transceiver (``icegate
transceiver run``) whose agent is ``examples/pipecat_echo.py`` run as a script on the
transceiver host's loopback, and an unmodified aiortc client (``transceiver/client.py``)
in a client namespace. The client speaks 440 Hz and hears it back through Pipecat
(16 kHz in, 24 kHz out), with the events on its data channel.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml

from icegate import netns
from labkit.clients import run_in_namespace
from labkit.lab import Lab, LabConfig
from labkit.lab.config import PublicConfig
from labkit.support import Processes, alive, http_get, metric_sample, put_route_key, wait_for
from transceiver.client import VoiceClient, dominant_frequency, silence, tone

pytestmark = [pytest.mark.root, pytest.mark.slow]

ICEGATE = [sys.executable, "-c", "from icegate.cli import main; main()"]
KEY = bytes(range(48, 64))
VIPS = ("192.0.2.10", "192.0.2.20")
AGENT_PORT = 8091


def start(procs: Processes, namespace: str, argv: list[str], log: Path) -> subprocess.Popen[Any]:
    return procs.start_logged([*argv], log, ns=namespace)


def test_a_call_answered_by_a_pipecat_pipeline(ns_prefix: str, procs: Processes, tmp_path: Path) -> None:
    lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), public=PublicConfig(vips=VIPS)))
    lab.up()
    try:
        put_route_key(lab, KEY)
        relay_cfg = lab.write_relay_config({"mode": "userspace", "sync_interval_s": 0.2})
        relay_log = tmp_path / "relay.log"
        relay = start(procs, lab.namespace("relay"), [*ICEGATE, "relay", "run", "--config", str(relay_cfg)],
                      relay_log)  # fmt: skip
        settings = lab.transceivers()[0]
        agent_log = tmp_path / "pipecat.log"
        agent = start(procs, settings.namespace,
                      [sys.executable, "examples/pipecat_echo.py", "--listen", f"127.0.0.1:{AGENT_PORT}"],
                      agent_log)  # fmt: skip
        section = settings.config_section() | {
            "agent_url": f"ws://127.0.0.1:{AGENT_PORT}/",
            "connect_timeout_s": 4.0,
        }
        section["relays"][0]["priority"] = 1
        config = tmp_path / "tx.yaml"
        config.write_text(yaml.safe_dump({"transceiver": section}))
        tx_log = tmp_path / "tx.log"
        tx = start(
            procs, settings.namespace, [*ICEGATE, "transceiver", "run", "--config", str(config)], tx_log
        )
        url = settings.signaling_url

        def ready() -> bool:
            with netns.entered(settings.namespace):
                # The agent serves (importing Pipecat takes seconds on a busy machine): a call
                # before that would find no agent and hang up (agent_unreachable).
                serving = (
                    alive(agent, agent_log) and http_get(f"http://127.0.0.1:{AGENT_PORT}/metrics")[0] == 200
                )
                return serving and alive(tx, tx_log) and http_get(f"{url}/readyz")[0] == 200

        wait_for(ready, 30, what="the transceiver and the Pipecat agent")

        def synced() -> bool:
            with netns.entered(lab.namespace("relay")):
                text = http_get("http://127.0.0.1:9610/metrics")[1]
            return (
                alive(relay, relay_log)
                and (metric_sample(text, 'icegate_relay_backends{state="active"}') or 0) >= 1
            )

        wait_for(synced, 20, what="the relay to sync the transceiver")

        async def session() -> VoiceClient:
            client = VoiceClient(url)
            async with aiohttp.ClientSession() as http:
                await client.connect(http)
                await asyncio.sleep(0.3)
                client.mic.play(np.concatenate([tone(440.0, 600), silence(100)]))
                await client.wait_event("response_done", timeout=10)
                await asyncio.sleep(0.3)
                await client.hangup(http)
            return client

        client = run_in_namespace(lab.namespace("c1"), session)
        assert client.event_types() == [
            "speech_started",
            "speech_stopped",
            "end_of_turn",
            "data",
            "transcript",
            "response_started",
            "response_done",
        ], client.events
        data = next(e for _, e in client.events if e["type"] == "data")
        assert 600 <= data["payload"]["echo_ms"] <= 800
        started = next(t for t, e in client.events if e["type"] == "response_started")
        done = next(t for t, e in client.events if e["type"] == "response_done")
        echoed = client.heard.between(started, done)
        assert abs(dominant_frequency(echoed) - 440.0) < 5.0
        assert 0.55 < (done - started) < 2.0  # the utterance, paced in real time
        wait_for(lambda: json.loads(http_get_in(settings.namespace, f"{url}/v1/sessions")) == [], 5,
                 what="the session to end")  # fmt: skip
        assert alive(agent, agent_log)  # the agent serves the next call
    finally:
        lab.down()


def http_get_in(namespace: str, url: str) -> str:
    with netns.entered(namespace):
        return http_get(url)[1]
