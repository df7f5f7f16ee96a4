"""B9: one of three XDP relay nodes killed mid-call; the media gap of every call, at the clients.

    .venv/bin/python -m bench.fleet_node_loss [--calls 12] [--ecmp threshold resilient] [--out bench/results]

Per ECMP flavour, in a lab of its own (``lab up --relays 3``): the demo's transceivers and
echo agents, ``--calls`` unmodified aiortc clients talking for ``--call-s`` seconds; once every
call carries media, the busiest killable node is SIGKILLed and withdrawn from the route at
once (BFD-like detection; add production's detection time). Reported: calls lost, flows
recovered from Redis by the survivors, how long until every call's flow was live on a survivor,
and per call the longest wait between two audio frames after the kill (the baseline: the
same in the quiet seconds before it) and the RTP packets it lost (RTCP, both ways). An aiortc
client's audio jitter buffer (16 packets) holds its output when a packet is missing until it
overruns, so one lost packet shows as ~300 ms without frames: the lost-packet count times 20 ms is
the network's share of the gap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench import report
from labkit.demo import Options, Progress
from labkit.fleet import FleetRun, calls_of, gap_after, repeated_turns, summarize
from labkit.lab import fleet as routing

NAME = "fleet_node_loss"
CONFIRMED = 'icegate_relay_packets_total{reason="confirm",verdict="forward"}'  # a flow made from a token


def one(ecmp: str, calls: int, call_s: float, lab_name: str, say: Progress) -> dict[str, Any]:
    run = FleetRun(
        Options(sessions=calls, agent="echo", mode="xdp", duration_s=call_s, lab_name=lab_name),
        say,
        relays=3,
        ecmp=ecmp,
    )
    try:
        run.up()
        run.launch()
        spread = run.wait_connected(timeout=120)
        time.sleep(3.0)
        victim = max((k for k in spread if k != 1), key=lambda k: spread[k])
        survivors = [k for k in run.nodes if k != victim]
        before = {k: run.recovered(k) for k in survivors}
        confirmed = {k: run.metric(k, CONFIRMED) for k in survivors}
        moving = run.clients_on(victim)
        killed_at = run.kill(victim)
        live: dict[int, int] = {}
        while time.time() - killed_at < 20:
            live = run.spread(survivors)
            if sum(live.values()) >= calls:
                break
        all_live_s = time.time() - killed_at
        recovered = sum(run.recovered(k) - before[k] for k in survivors)
        survivors_state = {
            k: {
                "readyz": run.node_get(k, "/readyz")[1].strip(),
                "recoveries": run.recoveries(k),
                "recreated_from_token": int(run.metric(k, CONFIRMED) - confirmed[k]),
            }
            for k in survivors
        }
        say(f"{ecmp}: node {victim} killed carrying {spread[victim]} calls; all live again after "
            f"{all_live_s:.2f} s (poll resolution ~0.1 s), {recovered} flows recovered")  # fmt: skip
        results = run.collect()
        after = routing.members(run.lab)
    finally:
        run.lab.down()
    lost = [i for i, r in results.items() if r.get("error") or r.get("connection_state") != "connected"]
    gaps = [gap_after(r, killed_at) for i, r in sorted(results.items()) if i not in lost]
    quiet = [gap_after(r, killed_at - 2.5, window_s=2.3) for i, r in sorted(results.items()) if i not in lost]
    moved = calls_of(results, moving) - set(lost)
    moved_gaps = [gap_after(results[i], killed_at) for i in sorted(moved)]

    def lost_packets(i: int, way: str) -> int:
        return int(results[i].get("rtp", {}).get(f"{way}_packets_lost") or 0)

    # RTP packets lost over the whole call (RTCP): the network's share of the gap, 20 ms each.
    lost_down = [lost_packets(i, "down") for i in sorted(moved)]
    lost_up = [lost_packets(i, "up") for i in sorted(moved)]
    lost_elsewhere = [lost_packets(i, "down") for i in sorted(set(results) - moved - set(lost))]
    return {
        "ecmp": ecmp,
        "calls": calls,
        "spread_before": spread,
        "killed": victim,
        "calls_on_killed_node": spread[victim],
        "route_after": after,
        "calls_lost": len(lost),
        "flows_recovered": recovered,
        "all_live_again_s": round(all_live_s, 2),
        "survivors": survivors_state,
        "gap_ms_per_call": gaps,
        "gap": summarize(gaps),
        "calls_moved_off_the_killed_node": sorted(moved),
        "gap_moved": summarize(moved_gaps),
        "rtp_lost_down_moved": lost_down,
        "rtp_lost_up_moved": lost_up,
        "rtp_lost_down_other_calls": lost_elsewhere,
        "quiet_gap": summarize(quiet),
        "turns_said_again": sum(repeated_turns(r) for r in results.values()),
    }


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        (r["ecmp"], r["calls"], r["calls_on_killed_node"], r["calls_lost"], r["flows_recovered"],
         r["all_live_again_s"], r["gap_moved"]["max_ms"], r["gap_moved"]["median_ms"], r["gap"]["max_ms"],
         r["gap"]["median_ms"], r["quiet_gap"]["max_ms"], r["quiet_gap"]["median_ms"],
         f"{max(r['rtp_lost_down_moved'], default=0)} / {max(r['rtp_lost_up_moved'], default=0)}",
         max(r["rtp_lost_down_other_calls"], default=0))
        for r in runs
    ]  # fmt: skip
    columns = ("ECMP", "calls", "on the killed node", "calls lost", "flows recovered", "all live again s",
               "killed node's calls: max gap ms", "median gap ms", "all calls: max gap ms", "median gap ms",
               "before the kill: max gap ms", "median gap ms",
               "killed node's calls: RTP lost down / up, max", "other calls: RTP lost down, max")  # fmt: skip
    return report.markdown_table(columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--call-s", type=float, default=25.0)
    parser.add_argument("--ecmp", nargs="+", default=["threshold", "resilient"])
    parser.add_argument("--lab-name", default="icgfleet")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    say = Progress()
    runs = [one(ecmp, args.calls, args.call_s, args.lab_name, say) for ecmp in args.ecmp]
    text = table(runs)
    report.write(NAME, {"runs": runs}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
