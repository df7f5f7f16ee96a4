"""Voice sessions through the relay against a plain aiortc answerer: set-up time and sessions per core (root).

    sudo .venv/bin/python -m bench.sessions [--mode xdp|userspace|both] [--sessions 64] [--seconds 8]
                                            [--rounds 10] [--out bench/results] [--lab-name icgb]

For each relay mode, a lab of its own started the way the demo starts it
(:meth:`labkit.demo.Demo.up`: namespaces, Redis, the relay, two transceivers with an
echo agent beside each), and beside transceiver tx1, in its namespace, the peer:
:mod:`bench.plain_answerer`, a plain aiortc process (one peer connection with sockets of
its own per session, the client's audio echoed back, no relay, no tunnel mux, no agent).
tx1 and the peer are pinned to one CPU, the first this process may use; everything
else (this process, which runs every client session, the relay, the agents, Redis) runs
on the others. The clients are one load client (:mod:`labkit.loadclient`: every session
a :class:`transceiver.client.VoiceClient` on one event loop in a thread of this process,
in namespace c1, one shared DTLS certificate, pre-encoded Opus, audio decoded on the
loop, its thread preferred by the scheduler), the same code against both answerers.

1. **Set-up time**: offer POSTed -> ``connected``, through the relay's VIP to tx1, and
   straight to the peer (HTTP to the same host, ICE to its host candidate through the
   same router). ``--rounds`` rounds after one warm-up of each, interleaved, the order
   alternating; medians, p90 and the ratio icegate/plain.
2. **Sessions per core**: ``--sessions`` concurrent two-way sessions on one answerer.
   Each client says 400 ms of tone every 1.6 s (tx1's echo agent answers each turn;
   the peer echoes all along). After ``SETTLE_S``, the answerer's CPU time over
   ``--seconds`` (user + system of all its threads, ``/proc/<pid>/stat``) is its share
   of a core, hence % of a core per session and sessions per core; the frames each
   client received in that window are its frames/s (50 is real time). Then the same on
   the other answerer, in the same lab; the ratio is icegate's share over the peer's. An
   answerer at ``SATURATED`` (90 %) of its core or more is marked: it may have needed more
   than it got (its frames/s say whether the audio suffered), so its cost is a lower bound.
   tx1's echo agent, a process of its own on the other CPUs, is not counted. For icegate
   the relay process's share in the window is reported too: in userspace mode that is
   the forwarding; with XDP the forwarding runs in softirqs, which no process's time shows.
   Sessions connect ``CONNECTING`` at a time. **The load client checks itself** over the
   same window (:class:`labkit.loadclient.SelfCheck`: its share of a core, its event
   loop's lag, its microphones' late frames, the time it waited for a busy CPU): a row
   whose client was a bottleneck says so, and its frames/s may be the client's, not the
   answerer's. An answerer whose clients received fewer than ``REAL_TIME_FPS`` frames/s
   did not hold its sessions in real time: its row says so.

Numbers are reported, never judged: speed is measured here, not asserted in tests
(``tests/e2e/test_bench_sessions.py`` only checks that this runs and what it writes).
Progress goes to stderr, the table to stdout and, with the numbers and the machine, to
``bench/results/sessions.{md,json}``. Each lab is removed when its mode is done, also
on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench import report
from bench.lab.exits import lab_exit_codes
from labkit import loadclient
from labkit.clients import run_in_namespace
from labkit.demo import Demo, Options, Progress, http_get, wait_until
from labkit.support import REPO
from transceiver.client import RATE, VoiceClient, loud, silence, tone

NAME = "sessions"
MODES = ("xdp", "userspace")
LAB_NAME = "icgb"
ANSWERERS = ("icegate", "plain")
LABELS = {"icegate": "icegate: relay VIP -> tx1", "plain": "plain aiortc process"}
PROCESSES = {"icegate": "tx1", "plain": "plain", "relay": "relay"}  # measured: role -> lab process
CLIENT_HOST = "c1"
PLAIN_PORT = 8081  # beside tx1's signaling port (8080), on tx1's address
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15.0)  # a signaling request that hangs fails the run
WARMUP_ROUNDS = 1
CONNECTING = 8  # sessions set up at once by the load client (the rest wait their turn)
SATURATED = 0.9  # of a core: the answerer may have wanted more than it got
REAL_TIME_FPS = 45.0  # every client must receive at least this many of the 50 frames/s
SETTLE_S = 2.0  # connected sessions talk this long before the window opens
# One turn: 400 ms of speech, then long enough for tx1's echo agent to endpoint (600 ms)
# and answer (~450 ms) before the next one, so no turn is cut short by a barge-in.
UTTERANCE = np.concatenate([tone(350.0, 400), silence(1200)])


# ---- the processes ---------------------------------------------------------------------------
def cpu_split() -> tuple[int, set[int]]:
    """The CPU the answerers get (the first this process may use) and the CPUs for the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], set(allowed[1:]) or {allowed[0]}


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (threads it starts later inherit that)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), {cpu})


def pid_of(demo: Demo, process: str) -> int:
    demo.alive(process)  # raises, with the log's tail, if it is not running
    record = demo.lab.process(process)
    assert record is not None
    return record.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the measurements (coroutines run by the clients' thread in CLIENT_HOST) -------------------
async def setup_rounds(urls: Mapping[str, str], rounds: int) -> dict[str, list[float]]:
    """Seconds from offer POSTed to ``connected``, per answerer, interleaved; warm-ups dropped."""
    times: dict[str, list[float]] = {name: [] for name in urls}
    certificate = loadclient.shared_certificate()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for r in range(WARMUP_ROUNDS + rounds):
            for name in list(urls) if r % 2 == 0 else list(reversed(urls)):
                client = loadclient.load_voice_client(urls[name], certificate)
                try:
                    seconds = await client.connect(http)
                finally:
                    await client.hangup(http)
                if r >= WARMUP_ROUNDS:
                    times[name].append(seconds)
    return times


@dataclass(frozen=True)
class Window:
    """One measured window of :func:`talk`."""

    seconds: float
    cpu_shares: dict[str, float]  # per measured process: CPU seconds / window seconds
    frames_per_s: list[float]  # per client, received
    with_audio: int  # clients that heard a loud frame (their own echoed voice) in the window
    client: dict[str, Any]  # the load client's self-check over the window (labkit.loadclient)


async def talk(url: str, sessions: int, seconds: float, pids: Mapping[str, int]) -> Window:
    """``sessions`` clients of the answerer at ``url`` (one load client: this thread's event loop,
    a shared certificate, encoded audio), all talking; after ``SETTLE_S``, what they received
    over ``seconds``, the CPU time the processes ``pids`` (name -> pid) used, and whether the
    load client kept up (its self-check over the same window)."""
    loadclient.prefer_this_thread()
    certificate = loadclient.shared_certificate()
    clients = [loadclient.load_voice_client(url, certificate) for _ in range(sessions)]
    script = np.tile(UTTERANCE, math.ceil((SETTLE_S + seconds + 5.0) * RATE / UTTERANCE.size))
    gate = asyncio.Semaphore(CONNECTING)

    async def connect(client: VoiceClient) -> None:
        async with gate:
            await client.connect(http)
        client.mic.play(script)

    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        try:
            await asyncio.gather(*(connect(c) for c in clients))
            await asyncio.sleep(SETTLE_S)
            counts = [len(c.heard.frames) for c in clients]
            sent = [(c.mic.frames_sent, c.mic.frames_late) for c in clients]
            used = {name: cpu_seconds(pid) for name, pid in pids.items()}
            check = loadclient.SelfCheck()
            check.start()
            started = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - started
            shares = {name: (cpu_seconds(pid) - used[name]) / elapsed for name, pid in pids.items()}
            rates = [(len(c.heard.frames) - n) / elapsed for c, n in zip(clients, counts, strict=True)]
            audible = sum(
                any(loud(f) for f in c.heard.frames[n:]) for c, n in zip(clients, counts, strict=True)
            )
            frames = [
                {"frames_sent": c.mic.frames_sent - s, "frames_late": c.mic.frames_late - late}
                for c, (s, late) in zip(clients, sent, strict=True)
            ]
            client = await check.finish(frames)
        finally:
            await asyncio.gather(*(c.hangup(http) for c in clients), return_exceptions=True)
    return Window(elapsed, shares, rates, audible, client)


# ---- results ---------------------------------------------------------------------------------
def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def setup_summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "median_ms": ms(statistics.median(samples)),
        "p90_ms": ms(float(np.percentile(samples, 90))),
        "rounds": len(samples),
        "samples_ms": [ms(s) for s in samples],
    }


def load_summary(answerer: str, sessions: int, window: Window) -> dict[str, Any]:
    share, relay = window.cpu_shares[answerer], window.cpu_shares.get("relay")
    rates = window.frames_per_s
    return {
        "sessions": sessions,
        "window_s": round(window.seconds, 2),
        "cpu_share": round(share, 4),
        "core_pct": round(share * 100, 1),
        "core_pct_per_session": round(share * 100 / sessions, 2),
        "sessions_per_core": round(sessions / share, 1) if share > 0 else None,
        "frames_per_s_min": round(min(rates), 1),
        "frames_per_s_median": round(statistics.median(rates), 1),
        "sessions_with_audio_back": window.with_audio,
        "saturated": share >= SATURATED,
        "real_time": min(rates) >= REAL_TIME_FPS,
        "relay_core_pct": None if relay is None else round(relay * 100, 1),
        "client": {k: v for k, v in window.client.items() if k not in ("limits", "stalls", "pid")},
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# ---- one mode: a lab, both answerers, both measurements -------------------------------------------
def measure(
    demo: Demo, sessions: int, seconds: float, rounds: int, cpu: int, say: Progress
) -> dict[str, Any]:
    lab = demo.lab
    tx = lab.transceiver(PROCESSES["icegate"])
    plain_url = f"http://{tx.address}:{PLAIN_PORT}"
    argv = [sys.executable, "-m", "bench.plain_answerer", "--listen", f"{tx.address}:{PLAIN_PORT}"]
    lab.start_process("plain", tx.name, argv, cwd=REPO)

    def plain_ready() -> bool:
        demo.alive("plain")
        return http_get(tx.namespace, f"{plain_url}/v1/sessions")[0] == 200

    wait_until(plain_ready, 30, "the plain answerer", demo.log("plain"))
    pids = {name: pid_of(demo, process) for name, process in PROCESSES.items()}
    for name in ANSWERERS:
        pin(pids[name], cpu)
    say(f"tx1 (pid {pids['icegate']}) and the plain answerer (pid {pids['plain']}) pinned to CPU {cpu}")
    urls = {"icegate": tx.signaling_url, "plain": plain_url}
    client_ns = lab.namespace(CLIENT_HOST)

    say(f"set-up time: {WARMUP_ROUNDS} warm-up + {rounds} interleaved rounds against each answerer")
    times = run_in_namespace(client_ns, functools.partial(setup_rounds, urls, rounds))
    setup: dict[str, Any] = {name: setup_summary(times[name]) for name in ANSWERERS}
    setup["ratio"] = ratio(statistics.median(times["icegate"]), statistics.median(times["plain"]))
    say("set-up medians: " + ", ".join(f"{n} {setup[n]['median_ms']} ms" for n in ANSWERERS))

    load: dict[str, Any] = {}
    for name in ANSWERERS:
        say(f"{sessions} sessions on {name}: connecting, {SETTLE_S:g} s to settle, {seconds:g} s measured")
        measured = {name: pids[name]} | ({"relay": pids["relay"]} if name == "icegate" else {})
        window = run_in_namespace(client_ns, functools.partial(talk, urls[name], sessions, seconds, measured))
        load[name] = result = load_summary(name, sessions, window)
        say(
            f"{name}: {result['core_pct']}% of a core, {result['core_pct_per_session']}% per session, "
            f"frames/s min {result['frames_per_s_min']}; load client: {loadclient.describe(window.client)}"
        )

        def drained(url: str = urls[name]) -> bool:
            status, body = http_get(tx.namespace, f"{url}/v1/sessions")
            return status == 200 and body.strip() == "[]"

        wait_until(drained, 15, f"{name}'s sessions to end")
    load["ratio"] = ratio(load["icegate"]["cpu_share"], load["plain"]["cpu_share"])
    return {"mode": demo.options.mode, "datapath": demo.datapath, "setup": setup, "load": load}


def run_mode(
    mode: str, sessions: int, seconds: float, rounds: int, lab_name: str, cpu: int, say: Progress
) -> dict[str, Any]:
    """Build the lab for relay ``mode``, measure, and remove the lab (whatever happens)."""
    with Demo(Options(agent="echo", mode=mode, lab_name=lab_name), say).running() as demo:
        return measure(demo, sessions, seconds, rounds, cpu, say)


def run(
    modes: Sequence[str], sessions: int, seconds: float, rounds: int, lab_name: str, say: Progress
) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: say how busy it was
    cpu, others = cpu_split()
    if others == {cpu}:
        say(f"only CPU {cpu} available: the answerers share it with the clients and the relay")
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, others)  # inherited by the lab's processes and the client threads
    try:
        results = [run_mode(mode, sessions, seconds, rounds, lab_name, cpu, say) for mode in modes]
    finally:
        os.sched_setaffinity(0, mask)
    return {
        "sessions": sessions,
        "seconds": seconds,
        "rounds": rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "settle_s": SETTLE_S,
        "answerer_cpu": cpu,
        "other_cpus": sorted(others),
        "modes": results,
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
    }


SETUP_COLUMNS = ("relay mode", "answerer", "median ms", "p90 ms", "rounds", "icegate/plain")
LOAD_COLUMNS = ("relay mode", "answerer", "% of a core", "% core/session", "sessions/core", "frames/s min",
                "frames/s median", "audio back", "relay % core", "icegate/plain", "load client")  # fmt: skip


def mode_label(m: Mapping[str, Any]) -> str:
    return str(m["mode"]) if m["datapath"] == m["mode"] else f"{m['mode']} ({m['datapath']})"


def setup_row(m: Mapping[str, Any], name: str) -> list[Any]:
    s = m["setup"][name]
    shown_ratio = m["setup"]["ratio"] if name == "icegate" else ""
    return [mode_label(m), LABELS[name], s["median_ms"], s["p90_ms"], s["rounds"], shown_ratio]


def load_row(m: Mapping[str, Any], name: str) -> list[Any]:
    r = m["load"][name]
    shown_ratio = m["load"]["ratio"] if name == "icegate" else ""
    relay = "" if r["relay_core_pct"] is None else r["relay_core_pct"]
    audio = f"{r['sessions_with_audio_back']}/{r['sessions']}"
    return [mode_label(m), LABELS[name], r["core_pct"], r["core_pct_per_session"], r["sessions_per_core"],
            r["frames_per_s_min"], r["frames_per_s_median"], audio, relay, shown_ratio,
            client_cell(r["client"])]  # fmt: skip


def client_cell(check: Mapping[str, Any]) -> str:
    """The load client's self-check over the window, in one cell."""
    figures = (
        f"{check['cpu_share'] * 100:.0f}% core, lag p99 {check['loop_lag_ms_p99']} ms, "
        f"late {check['frames_late_share'] * 100:.1f}%"
    )
    return f"BOTTLENECK: {figures}" if check["bottleneck"] else f"kept up: {figures}"


def table(data: Mapping[str, Any]) -> str:
    setup_rows = [setup_row(m, name) for m in data["modes"] for name in ANSWERERS]
    load_rows = [load_row(m, name) for m in data["modes"] for name in ANSWERERS]
    saturated = [
        f"\n{mode_label(m)}, {LABELS[name]}: {m['load'][name]['core_pct']}% of its core, saturated: "
        "its cost per session is a lower bound (fewer --sessions measure it unsaturated)\n"
        for m in data["modes"]
        for name in ANSWERERS
        if m["load"][name]["saturated"]
    ]
    saturated += [
        f"\n{mode_label(m)}, {LABELS[name]}: did not hold real time (a client received "
        f"{m['load'][name]['frames_per_s_min']} of 50 frames/s): its sessions per core are not "
        "sessions it held\n"
        for m in data["modes"]
        for name in ANSWERERS
        if not m["load"][name].get("real_time", True)
    ]
    saturated += [
        f"\n{mode_label(m)}, {LABELS[name]}: the load client was a bottleneck "
        f"({', '.join(m['load'][name]['client']['over_limits'])} over its limits): the frames/s "
        "may be its own, not the answerer's\n"
        for m in data["modes"]
        for name in ANSWERERS
        if m["load"][name]["client"]["bottleneck"]
    ]
    others = ",".join(map(str, data["other_cpus"]))
    setup_title = (
        f"Set-up time, offer POSTed -> connected, from {CLIENT_HOST}: rounds interleaved, "
        f"after {data['warmup_rounds']} warm-up round\n\n"
    )
    load_title = (
        f"\n{data['sessions']} two-way voice sessions on one answerer pinned to CPU {data['answerer_cpu']} "
        f"(clients, relay, agents, Redis on CPU {others}): {data['seconds']:g} s measured after "
        f"{data['settle_s']:g} s; load average {load_line(data)}\n\n"
    )
    return (
        setup_title
        + report.markdown_table(SETUP_COLUMNS, setup_rows)
        + load_title
        + report.markdown_table(LOAD_COLUMNS, load_rows)
        + "".join(saturated)
    )


def load_line(data: Mapping[str, Any]) -> str:
    """The 1-minute load average before and after the run (older results have none)."""
    load = data.get("load_average")
    return "not recorded" if not load else f"{load['before'][0]} before, {load['after'][0]} after"


def write_results(data: Mapping[str, Any], out_dir: Path = report.RESULTS) -> tuple[Path, Path]:
    return report.write(NAME, dict(data), table(data), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mode", choices=[*MODES, "both"], default="both", help="relay datapath (default both)"
    )
    parser.add_argument("--sessions", type=int, default=64, help="concurrent sessions (default 64)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window (default 8)")
    parser.add_argument("--rounds", type=int, default=10, help="set-up rounds per answerer (default 10)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    parser.add_argument(
        "--lab-name", default=LAB_NAME, help=f"lab name, namespace prefix (default {LAB_NAME})"
    )
    args = parser.parse_args()
    if args.sessions < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--sessions and --rounds must be at least 1, --seconds positive")
    modes = MODES if args.mode == "both" else (args.mode,)
    say = Progress()
    say(
        f"bench.sessions: relay modes {', '.join(modes)}, {args.sessions} sessions, "
        f"{args.seconds:g} s window, {args.rounds} set-up rounds, lab {args.lab_name}"
    )
    with lab_exit_codes(say):
        data = run(modes, args.sessions, args.seconds, args.rounds, args.lab_name, say)
    json_path, md_path = write_results(data, args.out)
    say(f"wrote {json_path} and {md_path}")
    print(table(data), end="")


if __name__ == "__main__":
    main()
