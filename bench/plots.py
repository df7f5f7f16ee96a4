"""Plots of the last results (matplotlib, PNG) into docs/img for docs/BENCHMARKS.md.

    .venv/bin/python -m bench.plots [--results bench/results] [--out docs/img]

B1: cost per forwarded packet against offered load, one line per relay (log scale).
profile_xdp: the XDP program's in-place ns per packet against offered load, per path.
B2: p50 and p99 one-way latency per relay at each rate.
B5: CDFs of mouth-to-ear (relay vs direct, Chromium and aiortc) and of turn latency over
the configured endpointing. A missing result is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench import report

IMG = Path(__file__).parents[1] / "docs" / "img"


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def b1(data: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    cells = data["summary"]["cells"]
    for ax, size in zip(axes, sorted({c["size"] for c in cells}), strict=False):
        for peer in sorted({c["peer"] for c in cells}):
            pts = sorted(
                (c["pps"], c["ns_per_pkt"]) for c in cells if c["peer"] == peer and c["size"] == size
            )
            pts = [(x, y) for x, y in pts if y]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (pps)")
        ax.set_title(f"B1: CPU per forwarded packet, {size} B payload")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ns per packet (XDP: bpf_stats; others: process CPU)")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "b1_cpu.png")


def profile(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    rows = data["rows"]

    def program(r: dict[str, Any]) -> str:  # older results have only the cache flag
        return str(r.get("program") or ("current" if r.get("nexthop_cache", True) else "no next-hop cache"))

    colors = {"flow hit": "tab:blue", "return": "tab:orange", "first STUN": "tab:green", "drop": "tab:red"}
    for n, name in enumerate(dict.fromkeys(program(r) for r in rows)):
        style = ("-", ":", "--")[n % 3]
        for path_name, color in colors.items():
            by_rate: dict[int, list[float]] = {}
            for r in rows:
                if r["path"] == path_name and program(r) == name and r["ns_per_pkt"]:
                    by_rate.setdefault(r["offered_pps"], []).append(r["ns_per_pkt"])
            pts = sorted((rate, statistics.median(v)) for rate, v in by_rate.items())
            if pts:
                label = path_name + ("" if name == "current" else f" ({name})")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, marker="o", label=label)
    ax.axhline(200, color="grey", linestyle="--", linewidth=1, label="target 200 ns (flow hit)")
    ax.set_xscale("log")
    ax.set_yscale("log")  # 100 pps costs tens of times 100 kpps; the targets sit at the bottom
    ax.set_xlabel("offered load (pps)")
    ax.set_ylabel("ns per packet in place (bpf_stats)")
    ax.set_title("XDP program cost in place, per path")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, out / "profile_xdp.png")


def b2(data: dict[str, Any], out: Path) -> Path:
    summary = data["summary"]
    rates = sorted({s["pps"] for s in summary})
    peers = list(dict.fromkeys(s["peer"] for s in summary))
    fig, axes = plt.subplots(1, len(rates), figsize=(5.5 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        rows = [next(s for s in summary if s["peer"] == p and s["pps"] == rate) for p in peers]
        xs = range(len(peers))
        ax.bar([x - 0.2 for x in xs], [r["p50_us"] for r in rows], width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_us"] for r in rows], width=0.4, label="p99")
        ax.set_xticks(list(xs), peers, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("one-way µs, generator to sink")
        ax.set_title(f"B2: latency at {rate:,} pps")
        ax.legend(fontsize=8)
    return _save(fig, out / "b2_latency.png")


def _cdf(ax: Any, values: list[float], label: str) -> None:
    v = sorted(values)
    if v:
        ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=f"{label} (n={len(v)})")


def b5(data: dict[str, Any], out: Path) -> Path:
    fig, (m2e, turn) = plt.subplots(1, 2, figsize=(11, 4.2))
    for client in ("chromium", "aiortc"):
        for target in ("relay", "direct"):
            sessions = data["mouth_to_ear"][client]["sessions"][target]
            _cdf(m2e, [x for s in sessions for x in s["samples"] if x is not None], f"{client}, {target}")
    m2e.set_xlabel("mouth-to-ear ms (burst sent -> heard back, loopback agent)")
    m2e.set_ylabel("fraction of bursts")
    m2e.set_title("B5: mouth-to-ear, relay vs direct")
    m2e.legend(fontsize=8)
    t = data["turn"]
    configured = t["configured_ms"]
    for target in ("relay", "direct"):
        turns = [x["turn_ms"] for s in t["chromium_samples"][target] for x in s["turns"]]
        _cdf(turn, [x - configured for x in turns], f"Chromium, {target}")
    for key, label in (("aiortc_prefetch4", "aiortc as shipped"), ("aiortc_prefetch1", "aiortc prefetch 1")):
        samples = t.get(key, {}).get("samples", [])
        _cdf(turn, [x["turn_ms"] - configured for x in samples], f"{label}, relay")
    turn.axvline(100, color="grey", linestyle="--", linewidth=1)
    turn.set_xlabel(f"turn latency - configured endpointing ({configured} ms), ms; target <= 100")
    turn.set_title("B5: end of speech -> first agent audio")
    turn.legend(fontsize=8)
    return _save(fig, out / "b5_voice.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=report.RESULTS)
    parser.add_argument("--out", type=Path, default=IMG)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("b1_cpu", b1), ("profile_xdp", profile), ("b2_latency", b2), ("b5_voice", b5)):
        data = _load(args.results, name)
        if data is None:
            print(f"{name}: no results, skipped")
            continue
        print(fn(data, args.out))


if __name__ == "__main__":
    main()
