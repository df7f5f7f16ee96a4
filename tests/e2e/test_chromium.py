"""An unmodified browser through the relay: headless Chromium in a lab client namespace.

The stack is the demo's (:meth:`labkit.demo.Demo.up`: lab, XDP relay, two transceivers,
echo agents). The test serves ``chromium_page.html`` on the client's loopback; the page
POSTs its offer cross-origin to the transceiver's signaling (CORS preflight included),
connects to the relay VIP, talks for a few seconds, and reports what ``getStats`` and the
``events`` data channel showed. Two runs:

- ``mic``: getUserMedia on Chromium's fake capture device (a WAV of tone bursts);
- ``tone``: WebAudio and no media permission, so Chromium offers only mDNS host
  candidates. The transceiver drops those, so it can only learn the browser from its
  connectivity checks through the relay (peer-reflexive), which is what must work.

Either way the relay's flows must show the browser's real address and port.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icegate import netns
from labkit.browser import CHROMIUM, FLAGS, MEDIA_FLAGS, PageServer, first_report
from labkit.demo import Demo, Options, Progress
from labkit.lab import Lab
from transceiver.client import RATE, silence, tone

PAGE = Path(__file__).with_name("chromium_page.html")
VIP = ("192.0.2.10", 3478)
TALK_S = 4
REPORT_TIMEOUT_S = 45


@dataclass
class Browser:
    report: dict[str, Any]
    log: str


def write_wav(path: Path) -> None:
    """Chromium's fake microphone: 600 ms at 523 Hz every 2 s (looped by Chromium)."""
    pcm = np.concatenate([silence(500), tone(523.3, 600), silence(900)]).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def run_browser(lab: Lab, client: str, audio: str, tmp: Path) -> Browser:
    """Load the page in a fresh headless Chromium inside ``client``'s namespace; return its report."""
    assert CHROMIUM, "chromium is not installed: run scripts/setup"
    namespace = lab.namespace(client)
    server = PageServer(namespace, PAGE)
    signaling = lab.transceiver(1).signaling_url
    url = f"http://127.0.0.1:{server.port}/?signaling={signaling}&audio={audio}&seconds={TALK_S}"
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    if audio == "mic":
        wav = tmp / "voice.wav"
        write_wav(wav)
        argv += [*MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}"]
    log = tmp / "chromium.log"
    report = first_report(namespace, [*argv, url], server, log, REPORT_TIMEOUT_S)
    return Browser(report, log.read_text())


@pytest.fixture(scope="module")
def stack() -> Iterator[Demo]:
    name = f"icgc{os.getpid() % 100000}"
    demo = Demo(Options(lab_name=name, mode="xdp", agent="echo"), Progress(quiet=True))
    try:
        demo.up()
        yield demo
    finally:
        Lab.load(name).down()
        netns.remove_prefixed(f"{name}-")


@pytest.mark.parametrize(("client", "audio"), [("c1", "mic"), ("c2", "tone")])
def test_chromium_talks_to_the_agent_through_the_relay(
    stack: Demo, client: str, audio: str, tmp_path: Path
) -> None:
    lab = stack.lab
    before = stack.relay_counters()
    browser = run_browser(lab, client, audio, tmp_path)
    r = browser.report
    assert "error" not in r, f"{r}\n{browser.log[-3000:]}"
    print(f"\n{client}/{audio}: {r['user_agent']}, setup {r['setup_ms']} ms, inbound {r['inbound']}")

    candidates = [line.split()[4] for line in r["offer_candidates"] if " udp " in line]
    client_ip = next(c.address for c in lab.clients() if c.name == client)
    if audio == "tone":
        # no media permission: every host candidate hidden behind an mDNS name
        assert candidates and all(c.endswith(".local") for c in candidates), candidates
    else:
        assert client_ip in candidates, candidates

    # signaling: cross-origin POST (CORS preflight), Location readable, DELETE at the end
    assert r["status"] == 201 and r["location"].startswith("/v1/sessions/")
    assert r["delete_status"] == 204
    assert r["connection_state"] == "connected"
    assert 0 < r["setup_ms"] < 5000

    # the selected pair ends at the relay VIP
    remote = r["pair"]["remote"]
    assert (remote["address"], remote["port"], remote["protocol"]) == (*VIP, "udp")
    port = r["pair"]["local"]["port"]

    # audio both ways: ~50 packets/s, and the agent's echo is not silence
    inbound, outbound = r["inbound"], r["outbound"]
    assert inbound["packetsReceived"] >= 40 * TALK_S and outbound["packetsSent"] >= 40 * TALK_S
    assert inbound["packetsLost"] <= 2
    assert inbound["totalAudioEnergy"] > 0.01, inbound  # silence decodes to ~0
    # a whole turn on the data channel: the transceiver's VAD heard the browser, the echo came back
    assert r["events"][:5] == [
        "speech_started",
        "speech_stopped",
        "end_of_turn",
        "response_started",
        "response_done",
    ]

    # the relay forwarded it in the kernel, and its flow carries the browser's real address
    flows = [f for f in stack.relay_flows() if (f["client"], f["client_port"]) == (client_ip, port)]
    assert len(flows) == 1, stack.relay_flows()
    flow = flows[0]
    assert (flow["vip"], flow["vip_port"], flow["backend"]) == (*VIP, "1:1")
    assert flow["packets_in"] >= 40 * TALK_S and flow["packets_out"] >= 40 * TALK_S, flow
    assert f"{client_ip}:{port}" in stack.cached_flows()
    counters = stack.relay_counters()
    forwarded = counters.get("forward/flow", 0) - before.get("forward/flow", 0)
    assert forwarded >= flow["packets_in"] - 20  # the flow's packets are the datapath's, bar a few pending
    assert counters.get("slow/no_flow", 0) == before.get("slow/no_flow", 0)
