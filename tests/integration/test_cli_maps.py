"""The operator CLI over real pinned maps (KernelStore), with no daemon running.

The program is loaded by the real loader (bcc) and its maps pinned, but nothing is
attached: the CLI must read and change the maps from their pins alone, sum per-CPU
counters, and say clearly when a relay is not there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from controlplane.config import RelayLimits
from controlplane.datapath import layout
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import Backend, Flow, Vip
from controlplane.kernel import libbpf as kernel
from controlplane.kernel.maps import KernelStore
from controlplane.operator import cli
from icegate.inet import addr16
from labkit.support import pinned_relay

S = 10**9


@pytest.fixture(scope="module")
def pinned() -> Iterator[KernelStore]:
    with pinned_relay(f"clitest{os.getpid()}", RelayLimits(max_flows=1024, max_pending=64)) as store:
        store.set_vips([Vip("192.0.2.10", 3478, 0), Vip("2001:db8::10", 3478, 1)])
        store.put_backend(Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 3))
        store.put_backend(Backend(1, 2, "10.70.0.12", 6081, BackendState.DRAINING, 1))
        yield store


def ago(now: int, seconds: float) -> int:
    """A timestamp ``seconds`` before ``now`` on the kernel's monotonic clock, which starts
    at boot: on a host up for less than that, the earliest representable instant (1 ns)."""
    return max(1, now - int(seconds * S))


def fill_flows(store: KernelStore) -> int:
    now = time.monotonic_ns()
    store.flush_flows()
    store.put_flows(
        [
            ((addr16("100.64.1.2"), 40000, 0), Flow(1, 1, 11, ago(now, 90), ago(now, 2), 10, 1000, 9, 900)),
            ((addr16("100.64.1.10"), 40002, 0), Flow(1, 2, 12, ago(now, 5), now, 3, 300, 0, 0)),
            (
                (addr16("2001:db8:100::2"), 40001, 1),
                Flow(1, 1, 13, ago(now, 7200), ago(now, 1), 1, 100, 1, 100),
            ),
        ]
    )
    store.put_pending(
        (addr16("100.64.1.2"), 40005, 0), Flow(1, 2, 14, ago(now, 1), ago(now, 1), 1, 120, 0, 0)
    )
    return now


def invoke(command: Any, args: list[str], store: KernelStore, **kw: Any) -> Result:
    args = [args[0], "--name", store.pin_dir.name, *args[1:]] if args and args[0] != "--" else args[1:]
    return CliRunner().invoke(command, args, **kw)


def test_flows_ls_show_flush_over_pinned_maps(pinned: KernelStore) -> None:
    now = fill_flows(pinned)
    result = invoke(cli.flows, ["ls", "--json"], pinned)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["client"], r["client_port"], r["vip"], r["backend"], r["packets_in"]) for r in rows] == [
        ("100.64.1.2", 40000, "192.0.2.10", "1:1", 10),
        ("100.64.1.10", 40002, "192.0.2.10", "1:2", 3),
        ("2001:db8:100::2", 40001, "2001:db8::10", "1:1", 1),
    ]
    age_s = (now - ago(now, 90)) / S  # 90 s, or the host's uptime if it is younger
    assert age_s - 1 < rows[0]["age_s"] < age_s + 10 and 1.5 < rows[0]["idle_s"] < 10

    table = invoke(cli.flows, ["ls", "--backend", "1:1"], pinned).output.splitlines()
    assert [line.split()[:4] for line in table[1:]] == [
        ["100.64.1.2:40000", "192.0.2.10:3478", "1:1", "confirmed"],
        ["[2001:db8:100::2]:40001", "[2001:db8::10]:3478", "1:1", "confirmed"],
    ]
    pending = json.loads(invoke(cli.flows, ["ls", "--pending", "--json"], pinned).output)
    assert [(r["client_port"], r["state"]) for r in pending] == [(40005, "pending")]
    shown = json.loads(invoke(cli.flows, ["show", "100.64.1.2", "--json"], pinned).output)
    assert [(r["client_port"], r["state"]) for r in shown] == [(40000, "confirmed"), (40005, "pending")]

    assert invoke(cli.flows, ["flush", "--yes"], pinned).output == "flushed 4 flows\n"
    assert sum(1 for _ in pinned.flows()) == 0 and sum(1 for _ in pinned.pending()) == 0


def test_stats_sum_per_cpu_counters(pinned: KernelStore) -> None:
    ncpu = kernel.possible_cpus()
    counters = pinned.maps["counters"]
    per_cpu = [layout.Counter(10 * (cpu + 1), 1000 * (cpu + 1)) for cpu in range(ncpu)]
    counters.update(kernel.U32(Stat.FWD_FLOW), per_cpu)
    counters.update(kernel.U32(Stat.DROP_TOKEN_MAC), [layout.Counter(1, 100)] * ncpu)
    try:
        result = invoke(cli.stats, ["--", "--name", pinned.pin_dir.name, "--json"], pinned)
        assert result.exit_code == 0, result.output
        rows = {r["stat"]: (r["packets"], r["bytes"]) for r in json.loads(result.output)["stats"]}
        total = sum(range(1, ncpu + 1))
        assert rows == {"FWD_FLOW": (10 * total, 1000 * total), "DROP_TOKEN_MAC": (ncpu, 100 * ncpu)}
    finally:
        for stat in (Stat.FWD_FLOW, Stat.DROP_TOKEN_MAC):
            counters.update(kernel.U32(stat), [layout.Counter(0, 0)] * ncpu)


def test_relay_status_and_backends_from_pins(pinned: KernelStore) -> None:
    fill_flows(pinned)
    result = invoke(cli.relay, ["status", "--json"], pinned)
    assert result.exit_code == 1, result.output  # attached nowhere, no control plane: unhealthy
    status = json.loads(result.output)
    assert status["healthy"] is False and status["netns"]  # the namespace is named, never "-"
    assert status["program"]["id"] > 0 and (status["mode"], status["attached"]) == ("detached", [])
    assert status["maps"]["flows"] == {"entries": 3, "capacity": 1024}  # as pinned, not the defaults
    assert status["maps"]["vips"]["entries"] == 2 and status["maps"]["backends"]["entries"] == 2
    assert status["control_plane"] == "not running"
    text = invoke(cli.relay, ["status"], pinned).output.splitlines()
    assert f"program: id={status['program']['id']} pinned={status['program']['pinned']}" in text
    assert "attached: -" in text and "control_plane: not running" in text

    result = invoke(cli.backends, ["ls", "--json", "--redis-url", "redis://127.0.0.1:1/0"], pinned)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["cluster"], r["index"], r["map_state"], r["flows"]) for r in rows] == [
        (1, 1, "active", 2),
        (1, 2, "draining", 1),
    ]
    assert "redis view unavailable" in result.stderr


def test_a_relay_that_is_not_there() -> None:
    result = CliRunner().invoke(cli.flows, ["ls", "--name", "nosuchrelay"])
    assert result.exit_code == 1
    assert result.output == (
        "icegate: relay 'nosuchrelay' is not running: nothing pinned at /sys/fs/bpf/icegate/nosuchrelay\n"
    )
    result = CliRunner().invoke(cli.flows, ["ls", "--name", "x", "--bpffs", "/tmp"])
    assert result.exit_code == 1 and "bpffs is not mounted at /tmp" in result.output


def test_status_names_the_namespace_it_runs_in(ns_prefix: str) -> None:
    """issue 16: `relay status` run inside the relay's namespace printed `netns: -`."""
    from controlplane.kernel import loader
    from icegate import netns

    name = f"{ns_prefix}relay"
    netns.create(name)
    with netns.entered(name):
        assert loader._this_namespace() == name
    outside = loader._this_namespace()  # "host" where init's namespace is readable, else its inode
    assert outside == "host" or outside == f"net:[{netns.identity()[1]}]"
