"""labkit.demo_report: the demo's verdict per session, relay totals, the table."""

from __future__ import annotations

from typing import Any

import pytest

from labkit.demo import datapath_of, describe_datapath
from labkit.demo_report import Plan, Session, judge, match_flows, table, totals

VIPS = ["192.0.2.10:3478"]


def good_result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "error": None,
        "setup_ms": 60.0,
        "local": ["100.64.1.2:40000"],
        "remote": ["192.0.2.10:3478"],
        "turns": [{"rtt_ms": 790.0, "heard_hz": 391.0, "answer_ms": 600}],
        "frames_sent": 100,
        "frames_received": 95,
        "rtp": {"up_packets_lost": 0, "down_packets_lost": 0},
        "events": ["speech_started", "speech_stopped", "end_of_turn", "response_started", "response_done"],
    }
    return result | changes


def flow(**changes: Any) -> dict[str, Any]:
    return {"client": "100.64.1.2", "client_port": 40000, "packets_in": 120, "packets_out": 118} | changes


def session(result: dict[str, Any], rows: list[dict[str, Any]], cached: bool = True) -> Session:
    s = Session(Plan(1, "c1", "tx1", "http://10.70.0.11:8080", 392.0, 392.0), result)
    match_flows([s], rows)
    s.cached = cached
    judge(s, VIPS)
    return s


def test_a_good_session_passes_and_reports_its_relay_packets() -> None:
    s = session(good_result(), [flow(client_port=1), flow()])
    assert s.ok, s.problems
    assert s.to_json()["fast_path_packets"] == 238
    assert s.to_json()["rtt_ms"] == 790.0


@pytest.mark.parametrize(
    ("result", "rows", "cached", "problem"),
    [
        (good_result(error="session failed", setup_ms=None), [flow()], True, "never connected"),
        (good_result(remote=["10.70.0.11:6081"]), [flow()], True, "not all relay VIPs"),
        (good_result(turns=[]), [flow()], True, "no turn completed"),
        (good_result(turns=[{"rtt_ms": None, "heard_hz": 0.0}]), [flow()], True, "no agent audio"),
        (good_result(turns=[{"rtt_ms": 700.0, "heard_hz": 349.0}]), [flow()], True, "expected 392.0 Hz"),
        (good_result(frames_received=0), [flow()], True, "no audio frames"),
        (good_result(), [], True, "no relay flow"),
        (good_result(), [flow(packets_out=0)], True, "120 in / 0 out"),
        (good_result(), [flow()], False, "did not record"),
    ],
)  # fmt: skip
def test_a_session_fails_with_a_reason(
    result: dict[str, Any], rows: list[dict[str, Any]], cached: bool, problem: str
) -> None:
    s = session(result, rows, cached)
    assert not s.ok
    assert any(problem in p for p in s.problems), s.problems
    assert "FAILED" in table([s])


def test_totals_are_the_difference_per_verdict() -> None:
    before = {"forward/flow": 10, "pass/not_ip": 3}
    after = {
        "forward/flow": 110,
        "forward/return": 90,
        "slow/no_flow": 2,
        "drop/token_mac": 1,
        "pass/not_ip": 3,
    }
    t = totals(after, before)
    assert (t["fast_path_packets"], t["slow_path_packets"], t["dropped_packets"]) == (190, 2, 1)
    assert t["passed_packets"] == 0
    assert list(t["counters"]) == ["forward/flow", "forward/return", "slow/no_flow", "drop/token_mac"]


XDP_NATIVE = [{"interface": "pub0", "mode": "native"}, {"interface": "priv0", "mode": "native"}]
NO_BCC = "bcc is not available (no module bcc)"


@pytest.mark.parametrize(
    ("status", "mode", "said"),
    [
        (
            {"mode": "xdp-native", "attached": XDP_NATIVE},
            "xdp-native",
            "XDP native (in-kernel fast path; pub0:",
        ),
        (
            {"mode": "xdp-generic", "attached": [{"interface": "pub0", "mode": "generic"}]},
            "xdp-generic",
            "XDP generic (in-kernel fast path; pub0:generic)",
        ),
        ({"mode": "userspace", "reason": "requested", "detail": ""}, "userspace", "twin (requested)"),
        (
            {"mode": "userspace", "reason": "xdp_unavailable", "detail": NO_BCC},
            "userspace",
            f"userspace twin (xdp_unavailable: {NO_BCC})",
        ),
        ({}, "unknown", "datapath unknown"),
    ],
)
def test_the_demo_says_which_datapath_and_why(status: dict[str, Any], mode: str, said: str) -> None:
    found, reason = datapath_of(status)
    assert found == mode
    assert said in describe_datapath(found, reason)


def test_render_shows_the_load_clients_the_transceivers_and_cpu() -> None:
    from labkit.demo import render

    check = {"sessions": 2, "cpu_share": 0.06, "waited_for_cpu_share": 0.04, "loop_lag_ms_p99": 2.3,
             "frames_late": 0, "frames_sent": 393, "over_limits": [], "bottleneck": False}  # fmt: skip
    busy = check | {"waited_for_cpu_share": 0.5, "cpu_share": 0.3, "loop_lag_ms_p99": 120.0,
                    "over_limits": ["loop_lag_ms_p99"], "bottleneck": True}  # fmt: skip
    summary = {
        "agent": "echo",
        "datapath": "xdp-native",
        "relay": totals({"forward/flow": 10}),
        "stats": {"setup_ms_median": 48.4, "rtt_ms_median": 739.1},
        "sessions": [],
        "load_clients": {"c1": check, "c2": busy},
        "transceivers": {
            "tx1": {"in/delivered": 447, "in/closed": 3, "out/sent": 450, "session/completed": 2}
        },
        "cpu_s": {"tx1": 0.4, "relay": 0.0},
        "timings": {"clients_s": 4.6},
    }
    text = render(summary, "TABLE")
    assert "load client c1: 2 sessions, 6% of a core, waited for a CPU 4% of the time" in text
    assert "not the bottleneck" in text.split("load client c2")[0]
    assert (
        "load client c2:" in text and "BOTTLENECK (loop_lag_ms_p99" in text and "machine is saturated" in text
    )
    assert "transceiver tx1: in/closed 3, in/delivered 447, session/completed 2" in text  # out/* not shown
    assert "relay 0.0, tx1 0.4" in text and "4.6 s the clients ran" in text
