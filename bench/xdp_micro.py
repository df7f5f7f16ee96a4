"""Nanoseconds per packet of the XDP program, from BPF_PROG_TEST_RUN (root).

    .venv/bin/python -m bench.xdp_micro [--runs 100000] [--before REV] [--rounds 3]
                                        [--prefix P] [--out bench/results]

Builds the relay host of DATAPATH.md §9 in a namespace of its own, loads ``bpf/relay.c``
with the production loader into pins of its own (both removed afterwards), and times
each path on the CPU with the highest number.

BPF_PROG_TEST_RUN with ``repeat`` runs the program on the same buffer without
restoring it, so only paths that leave the packet as it was (drops, passes) can be
timed that way. A forwarded packet has been rewritten after the first run, so forward
paths are timed one run per syscall: the kernel's per-call duration (``repeat=1``),
median over ``runs`` calls, minus the median of a two-instruction program timed the same
way (the timer and run-context overhead). The drop path is timed both ways, which checks
the method: the two numbers should agree.

``--before REV`` loads ``bpf/`` as it was at git revision REV beside the working tree's
program (both on the same host, pins of their own) and measures them in alternating
rounds, so before/after figures come from the same minute of a shared machine.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report
from controlplane.kernel import libbpf as kernel
from icegate import netns
from labkit import packets as pb
from labkit.bpf_harness import RelayHost, XdpRelay, relay_config, vectors

NAME = "xdp_micro"
BPF_PROG_TYPE_XDP = 6


class _Insn(ctypes.Structure):
    """``struct bpf_insn``."""

    _fields_ = [
        ("code", ctypes.c_uint8),
        ("regs", ctypes.c_uint8),
        ("off", ctypes.c_int16),
        ("imm", ctypes.c_int32),
    ]


def load_xdp_pass() -> int:
    """``r0 = XDP_PASS; exit``: the baseline a test run costs without a program."""
    fn = kernel.libbpf().bpf_prog_load
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_int
    insns = (_Insn * 2)(_Insn(0xB7, 0, 0, 2), _Insn(0x95, 0, 0, 0))  # BPF_MOV64_IMM(R0, 2); BPF_EXIT
    fd = int(fn(BPF_PROG_TYPE_XDP, b"xdp_pass", b"GPL", ctypes.addressof(insns), 2, None))
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd))
    return fd


@dataclass(frozen=True)
class Timing:
    path: str
    stat: str
    ns: float
    method: str
    program: str = "current"
    round: int = 0


def single_runs(
    fd: int, frame: bytes, ifindex: int, runs: int, before: Callable[[], Any] | None = None
) -> float:
    """Median of the kernel-measured duration of ``runs`` one-shot test runs."""
    durations = []
    for _ in range(runs):
        if before is not None:
            before()
        durations.append(kernel.prog_test_run(fd, frame, ingress_ifindex=ifindex).duration_ns)
    return float(statistics.median(durations))


def measure(xdp: XdpRelay, runs: int = 100_000) -> list[Timing]:
    """Every path's cost; checks first that each frame takes the path it is named after."""
    state = vectors()["state"]
    flows = [pb.flow(pb.C1, pb.VIP4, pb.B11)]
    pub, priv = xdp.host.ifindex["public"], xdp.host.ifindex["private"]
    first_stun = pb.from_client(pb.client_packet(pb.C1, pb.VIP4, pb.check(pb.T11)))
    dtls = pb.from_client(pb.client_packet(pb.C1, pb.VIP4, pb.DTLS))
    ret = pb.returned(pb.B11, pb.reply(pb.VIP4, pb.C1, pb.RTP))
    forged = pb.from_client(pb.client_packet(pb.C2, pb.VIP4, pb.check(pb.T_FORGED)))
    junk = pb.from_client(pb.client_packet(pb.C2, pb.VIP4, bytes([99]) + bytes(100)))
    pending_key = (pb.inet.addr16(pb.C1[0]), pb.C1[1], 0)
    store = xdp.store
    baseline_fd = load_xdp_pass()
    results = []
    try:
        with netns.entered(xdp.host.ns):
            base = single_runs(baseline_fd, dtls, pub, runs)
            xdp.apply({**state, "flows": flows})
            cases = [
                ("flow hit, forward (DTLS, confirmed flow)", dtls, pub, "FWD_FLOW"),
                ("return, decapsulate (RTP, confirmed flow)", ret, priv, "FWD_RETURN"),
                ("drop: not WebRTC", junk, pub, "DROP_NOT_WEBRTC"),
            ]
            for path, frame, ifindex, stat in cases:
                assert xdp.run(frame, "private" if ifindex == priv else "public").stat == stat
                results.append(
                    Timing(path, stat, single_runs(xdp.prog_fd, frame, ifindex, runs) - base, "1-shot")
                )
            xdp.apply(state)
            assert xdp.run(first_stun).stat == "FWD_NEW_FLOW"
            ns = (
                single_runs(xdp.prog_fd, first_stun, pub, runs, lambda: store.delete_pending(pending_key))
                - base
            )
            results.append(Timing("first STUN (token check, new pending flow)", "FWD_NEW_FLOW", ns, "1-shot"))
            for path, frame in (("drop: not WebRTC", junk), ("drop: forged token (SipHash)", forged)):
                stat = xdp.run(frame).stat
                timed = kernel.prog_test_run(xdp.prog_fd, frame, ingress_ifindex=pub, repeat=runs)
                results.append(Timing(path, stat, float(timed.duration_ns), f"repeat={runs}"))
            results.append(Timing(BASELINE, "-", base, "1-shot"))
    finally:
        os.close(baseline_fd)
    return results


def source_at(rev: str, into: Path) -> Path:
    """``bpf/`` as it was at git revision ``rev``, extracted under ``into``: the "before"."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "bpf"], cwd=repo, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "bpf"


BASELINE = "baseline: 2-instruction program"


def common_baseline(measured: Sequence[tuple[str, int, list[Timing]]]) -> list[Timing]:
    """Each measure() subtracted its own baseline from the 1-shot paths; across programs
    and rounds, subtract the median of all of them instead, so the baseline's own noise
    does not show as a difference between programs."""
    bases = [t.ns for _, _, ts in measured for t in ts if t.path == BASELINE]
    common = float(statistics.median(bases))
    out = []
    for label, rnd, ts in measured:
        own = next(t.ns for t in ts if t.path == BASELINE)
        for t in ts:
            ns = t.ns + own - common if t.method == "1-shot" and t.path != BASELINE else t.ns
            out.append(Timing(t.path, t.stat, ns, t.method, label, rnd))
    return out


def medians(timings: Sequence[Timing]) -> list[Timing]:
    """One row per (program, path, method): the median over rounds."""
    keys = list(dict.fromkeys((t.program, t.path, t.method) for t in timings))
    out = []
    for program, path, method in keys:
        same = [t for t in timings if (t.program, t.path, t.method) == (program, path, method)]
        ns = float(statistics.median(t.ns for t in same))
        out.append(Timing(path, same[0].stat, ns, method, program, len(same)))
    return out


def table(timings: Sequence[Timing]) -> str:
    """Median over rounds; with a "before" program, one column each and their difference."""
    rows_in = medians(timings)
    programs = list(dict.fromkeys(t.program for t in rows_in))
    if len(programs) == 1:
        rows = [(t.path, t.stat, f"{t.ns:.1f}", t.method) for t in rows_in]
        return report.markdown_table(("path", "counter", "ns/packet", "method"), rows)
    by = {(t.program, t.path, t.method): t for t in rows_in}
    rows2 = []
    for t in rows_in:
        if t.program != programs[0]:
            continue
        cells = [
            f"{by[(p, t.path, t.method)].ns:.1f}" if (p, t.path, t.method) in by else "-" for p in programs
        ]
        after = by.get((programs[1], t.path, t.method))
        delta = after.ns - t.ns if after else 0.0
        rows2.append((t.path, t.stat, *cells, f"{delta:+.1f}", t.method))
    return report.markdown_table(("path", "counter", *programs, "difference", "method"), rows2)


def write_results(
    timings: Sequence[Timing], runs: int, out_dir: Path = report.RESULTS, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    data = {"runs": runs, **(extra or {}), "timings": [asdict(t) for t in timings]}
    return report.write(NAME, data, table(timings), out_dir)


def run(runs: int, before: str | None = None, rounds: int = 1, prefix: str = "icgt") -> list[Timing]:
    """Build the host, load the program(s), measure in alternating rounds, remove everything."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    host = RelayHost(f"{prefix}{os.getpid() % 10000}-", vectors()["topology"])
    relays: list[tuple[str, XdpRelay]] = []
    with tempfile.TemporaryDirectory(prefix="xdp-micro-") as tmp:
        try:
            host.build()
            if before is not None:
                old = XdpRelay(host, relay_config(f"bench-xdp-{os.getpid()}-b", vectors()["state"]))
                old.loader.source = source_at(before, Path(tmp))
                relays.append((f"before ({before})", old))
            relays.append(
                ("current", XdpRelay(host, relay_config(f"bench-xdp-{os.getpid()}", vectors()["state"])))
            )
            for _, xdp in relays:
                xdp.load()
            measured = [(label, rnd, measure(xdp, runs)) for rnd in range(rounds) for label, xdp in relays]
            return common_baseline(measured)
        finally:
            for _, xdp in relays:
                xdp.close()
            host.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="test runs per path (default 100000)")
    parser.add_argument("--before", help="also time bpf/ at this git revision, alternating rounds")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per program (default 1)")
    parser.add_argument("--prefix", default="icgt", help="namespace name prefix (default icgt)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    load_before = report_load()
    timings = run(args.runs, args.before, args.rounds, args.prefix)
    extra = {"before": args.before, "rounds": args.rounds, "loadavg": [load_before, report_load()]}
    write_results(timings, args.runs, args.out, extra)
    print(table(timings), end="")
    print(f"load average before/after: {extra['loadavg']}")


def report_load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


if __name__ == "__main__":
    main()
