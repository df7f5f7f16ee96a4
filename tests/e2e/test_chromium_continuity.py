"""An unmodified browser keeps its session through an ICE restart, and a vanished one is ended.

The demo's stack (:class:`labkit.demo.Demo`: lab, XDP relay, two transceivers, echo
agents) with the continuity windows shortened: the transceivers' consent window to
``CONSENT_S`` and the relay's idle-flow expiry to ``EXPIRY_S`` (30 s each in production).
Headless Chromium in client c1 loads ``chromium_continuity.html``, which talks to tx1
through the relay, restarts ICE over WHIP PATCH (RFC 9725 §4.3) mid-call, keeps talking,
reports, and then stays silent: the test kills the whole browser (SIGKILL, so no DELETE,
no DTLS close_notify, no RTCP BYE) as a phone that lost its network would vanish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.config import FlowCacheConfig
from icegate import netns
from labkit.browser import CHROMIUM, FLAGS, MEDIA_FLAGS, PageServer, end_session
from labkit.demo import Demo, Options, Progress, http_get
from labkit.lab import Lab
from labkit.support import metric_sample
from tests.e2e.test_chromium import REPORT_TIMEOUT_S, write_wav

PAGE = Path(__file__).with_name("chromium_continuity.html")
CONSENT_S = 5.0
EXPIRY_S = 4.0
BEFORE_S, AFTER_S = 4, 6


@dataclass
class Observed:
    report: dict[str, Any]
    log: str
    client_ip: str
    sessions_before: list[dict[str, Any]]
    ended_after_s: float | None  # SIGKILL -> the session gone from tx1's list
    outcomes: dict[str, float]
    flows_gone_after_s: float | None  # SIGKILL -> the browser's relay flows gone
    expired: float
    cached: dict[str, int]  # the client's flow-cache records -> TTL left


def tx_sessions(demo: Demo) -> list[dict[str, Any]]:
    tx = demo.lab.transceiver(1)
    status, body = http_get(demo.lab.namespace(tx.name), f"{tx.signaling_url}/v1/sessions", 2.0)
    assert status == 200, body
    return list(json.loads(body))


def tx_metrics(demo: Demo) -> str:
    tx = demo.lab.transceiver(1)
    return http_get(demo.lab.namespace(tx.name), f"{tx.signaling_url}/metrics", 2.0)[1]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    assert CHROMIUM, "chromium is not installed: run scripts/setup"
    name = f"icgk{os.getpid() % 100000}"
    windows = {"consent_window_s": CONSENT_S, "flow_idle_s": EXPIRY_S}
    demo = Demo(Options(lab_name=name, mode="xdp", agent="echo", **windows), Progress(quiet=True))
    tmp = tmp_path_factory.mktemp("continuity")
    try:
        demo.up()
        lab = demo.lab
        client_ip = next(c.address for c in lab.clients() if c.name == "c1")
        namespace = lab.namespace("c1")
        server = PageServer(namespace, PAGE)
        signaling = lab.transceiver(1).signaling_url
        url = f"http://127.0.0.1:{server.port}/?signaling={signaling}&before={BEFORE_S}&after={AFTER_S}"
        wav = tmp / "voice.wav"
        write_wav(wav)
        argv = [CHROMIUM, *FLAGS, *MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}"]
        argv.append(f"--user-data-dir={tmp / 'profile'}")
        log = tmp / "chromium.log"
        with log.open("w") as out:
            proc = netns.spawn(namespace, [*argv, url], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            report = server.reports.get(timeout=REPORT_TIMEOUT_S + BEFORE_S + AFTER_S)
            sessions_before = tx_sessions(demo)
            # Vanish: every process of the browser at once, nothing said to anyone.
            os.killpg(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            end_session(proc)
            server.close()
        ended_after = flows_gone_after = None
        sid = (report.get("location") or "/").rsplit("/", 1)[1]
        deadline = killed + CONSENT_S + 15
        while time.monotonic() < deadline:
            now = time.monotonic()
            if ended_after is None and not any(s["id"] == sid for s in tx_sessions(demo)):
                ended_after = now - killed
            if flows_gone_after is None and not [f for f in demo.relay_flows() if f["client"] == client_ip]:
                flows_gone_after = now - killed
            if ended_after is not None and flows_gone_after is not None:
                break
            time.sleep(0.1)
        text = tx_metrics(demo)
        outcomes = {
            o: metric_sample(text, f'icegate_transceiver_sessions_total{{outcome="{o}"}}') or 0.0
            for o in ("completed", "failed", "consent_expired")
        }
        expired = metric_sample(demo.relay_metrics(), 'icegate_relay_flows_expired_total{state="confirmed"}')
        yield Observed(
            report,
            log.read_text(),
            client_ip,
            sessions_before,
            ended_after,
            outcomes,
            flows_gone_after,
            expired or 0.0,
            {f: ttl for f, ttl in demo.cached_flow_ttls().items() if f.startswith(f"{client_ip}:")},
        )
    finally:
        Lab.load(name).down()
        netns.remove_prefixed(f"{name}-")


def test_chromium_ice_restart_over_patch_keeps_the_session(observed: Observed) -> None:
    r = observed.report
    assert "error" not in r, f"{r}\n{observed.log[-3000:]}"
    print(
        f"\nICE restart: audio gap {r['restart_gap_ms']} ms (steady-state max {r['steady_gap_ms']} ms), "
        f"PATCH {r['patch_ms']} ms, ufrag seen {r['ufrag_seen_ms']}, pairs {r['pair_before']} -> "
        f"{r['pair_after']}; vanished session ended after {observed.ended_after_s} s, "
        f"flows gone after {observed.flows_gone_after_s} s"
    )
    # The same session: same Location, same id, one restart, a new ufrag minted for the same
    # transceiver, a new ETag.
    assert r["status"] == 201 and r["patch_status"] == 200
    sid = r["location"].rsplit("/", 1)[1]
    shown = r["session_after"]
    assert shown["id"] == sid and shown["ice_restarts"] == 1 and shown["state"] == "connected", shown
    assert shown["ufrags"] == [r["server_ufrag_after"]] and r["server_ufrag_after"] != r["server_ufrag"]
    assert r["etag"] and r["etag_after"] and r["etag"] != r["etag_after"]
    assert [s["id"] for s in observed.sessions_before] == [sid]  # no second session was made
    # The browser's ICE agent runs on its new credentials.
    assert r["client_ufrag_after"] in [u for _, u in r["ufrag_seen_ms"]], r["ufrag_seen_ms"]
    # Audio and the events channel continue: the same data channel, whole turns after the restart.
    assert r["connection_state"] == "connected" and r["channel_state"] == "open"
    received = r["inbound_after"]["packetsReceived"] - r["inbound_before"]["packetsReceived"]
    assert received >= 40 * (AFTER_S - 1), r
    assert r["inbound_after"]["totalAudioEnergy"] > r["inbound_before"]["totalAudioEnergy"]
    assert "response_done" in r["events_before"] and "response_done" in r["events_after"], r
    assert r["restart_gap_ms"] < 1000, r


def test_a_vanished_browser_is_ended_by_consent_and_its_flow_expires(observed: Observed) -> None:
    assert "error" not in observed.report
    # Ended by consent freshness, after the window (plus a check interval), not by anything else.
    assert observed.ended_after_s is not None, "the session outlived its consent window"
    assert CONSENT_S - 0.5 < observed.ended_after_s < CONSENT_S + 4, observed.ended_after_s
    assert observed.outcomes["consent_expired"] == 1, observed.outcomes
    assert observed.outcomes["completed"] == observed.outcomes["failed"] == 0, observed.outcomes
    # The relay expired the browser's flow(s) and removed them from the Redis flow cache.
    assert observed.flows_gone_after_s is not None, "the vanished browser's flows stayed"
    # The removal is published: the records keep only the short removal TTL (two flow-cache
    # refresh intervals), as no other relay node carries the call.
    removal_ttl_s = int(2 * FlowCacheConfig().refresh_s) + 1
    assert observed.expired >= 1, observed.expired
    assert all(0 < ttl <= removal_ttl_s for ttl in observed.cached.values()), observed.cached
