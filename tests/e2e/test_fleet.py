"""A relay fleet in the lab: calls spread over three XDP relay nodes by ECMP; a node killed,
a node added and a node drained in the middle of the calls. No call breaks.

Real parts only: the lab's router with an L4-hash ECMP route to the VIP, one ``icegate relay
run`` (XDP) per node sharing the lab's Redis, the demo's transceivers and echo agents, and
one unmodified aiortc client process per call. Each client records every pause in the audio
it heard (wall-clock start, length); the test reads the pause each event caused. A turn the
agent did not hear (spoken inside an event's media gap) is said once more, as a caller
would; the test reports how many were, and fails a call that lost more than one per event.

Default: 6 calls, hash-threshold ECMP (the harder case: a lost node re-cuts every range, so
calls on surviving nodes move too). ``ICEGATE_LONG=1``: 12 calls, both threshold and
resilient hashing (bench/fleet_node_loss.py measures the same with more repeats).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from labkit.demo import Options, Progress
from labkit.fleet import FleetRun, gap_after, heard_after, repeated_turns, summarize
from labkit.lab import fleet as routing

LONG = os.environ.get("ICEGATE_LONG") == "1"
CALLS = 12 if LONG else 6
MODES = ["threshold", "resilient"] if LONG else ["threshold"]
CALL_S = 60.0  # each client keeps taking turns this long: connect, kill, add, drain all fit
CONFIRMED = 'icegate_relay_packets_total{reason="confirm",verdict="forward"}'  # a flow made from a token


def wait(seconds: float) -> None:
    time.sleep(seconds)


@pytest.mark.parametrize("ecmp", MODES)
def test_kill_add_drain_nodes_under_calls(lab_name: str, ecmp: str) -> None:
    say = Progress()
    run = FleetRun(
        Options(sessions=CALLS, agent="echo", mode="xdp", duration_s=CALL_S, lab_name=lab_name),
        say,
        relays=3,
        ecmp=ecmp,
    )
    try:
        run.up()
        run.launch()
        spread = run.wait_connected(timeout=90)
        say(f"{CALLS} calls connected, live flows per node {spread}")
        assert sum(1 for n in spread.values() if n) >= 2, f"ECMP put every call on one node: {spread}"
        wait(2.0)

        # 1. kill the busiest node that can be killed (node 1 is the lab's relay host)
        victim = max((k for k in spread if k != 1), key=lambda k: spread[k])
        moved = spread[victim]
        before = {k: run.recovered(k) for k in run.nodes if k != victim}
        confirmed_before = {k: run.metric(k, CONFIRMED) for k in run.nodes if k != victim}
        killed_at = run.kill(victim)
        say(f"killed node {victim} carrying {moved} calls; route now {routing.members(run.lab)}")
        wait(4.0)
        survivors = [k for k in run.nodes if k != victim]
        recovered = sum(run.recovered(k) - before[k] for k in survivors)
        # A moved call whose next packet was a consent check is re-created from its token instead.
        from_token = sum(int(run.metric(k, CONFIRMED) - confirmed_before[k]) for k in survivors)
        after_kill = run.spread(survivors)
        say(f"after the kill: live flows {after_kill}, flows recovered from Redis {recovered}, "
            f"re-created from a consent check's token {from_token}")  # fmt: skip
        assert recovered + from_token >= moved, (
            f"{moved} calls moved: {recovered} recovered, {from_token} re-created"
        )
        assert sum(after_kill.values()) >= CALLS

        # 2. add a node: ECMP moves some calls to it (resilient: only idle buckets), none breaks
        added, added_at = run.add()
        wait(3.0)
        say(f"added node {added}; live flows {run.spread([*survivors, added])}")

        # 3. drain node 1: readiness fails, the router withdraws it, it empties
        drain = run.drain(1, timeout=30)
        report = drain["report"]
        say(f"drained node 1 in {drain['done'] - drain['started']:.1f}s: {json.dumps(report)}")
        assert report["draining"] and report["empty"] and report["live"] == 0
        assert routing.members(run.lab) == sorted(k for k in [*survivors, added] if k != 1)
        drained_at = drain["withdrawn"]
        wait(3.0)
        assert run.live_flows(1, idle_s=2.0) == 0

        results = run.collect()
    finally:
        run.lab.down()

    problems = []
    kill_gaps, add_gaps, drain_gaps, quiet_gaps = [], [], [], []
    repeats = {index: repeated_turns(result) for index, result in sorted(results.items())}
    for index, result in sorted(results.items()):
        if result.get("error") or result.get("connection_state") != "connected":
            problems.append(f"call {index}: {result.get('error')} ({result.get('connection_state')})")
            continue
        # Each node event may cost a call one utterance (said again); more means the media
        # path stayed broken longer than the events explain.
        if repeats[index] > 3:
            problems.append(f"call {index}: {repeats[index]} turns unheard and said again")
        if not heard_after(result, drained_at + 2.0):
            problems.append(
                f"call {index}: no audio after the drain (heard until {result.get('heard_until')})"
            )
        kill_gaps.append(gap_after(result, killed_at))
        add_gaps.append(gap_after(result, added_at, window_s=3.0))
        drain_gaps.append(gap_after(result, drained_at))
        quiet_gaps.append(gap_after(result, killed_at - 2.0, window_s=1.8))  # before anything happened
    assert not problems, "\n".join(problems)
    say(
        f"ECMP {ecmp}, {CALLS} calls, node {victim} killed carrying {moved}: longest wait between audio "
        f"frames per call after the kill {kill_gaps} ms {summarize(kill_gaps)}; after the add "
        f"{summarize(add_gaps)}; after the drain "
        f"{summarize(drain_gaps)}; in the quiet 2 s before the kill {summarize(quiet_gaps)}; "
        f"flows recovered from Redis {recovered}; turns said again (unheard) per call {repeats}"
    )
