"""Geo steering end to end in the two-region lab (``Demo.up`` with ``regions=2``).

Region ``lab`` (Frankfurt): the XDP relay, cluster 1 (tx1, tx2), clients c1 and c2.
Region ``lab2`` (Singapore, dual-stack): relays r2a (XDP, primary) and r2b (the userspace
twin, backup), cluster 2 (tx3), client c3. Each region has its own Redis; the front door
runs on the router and locates clients with the lab's .mmdb.

1. A client in each region POSTs to the front door, follows the 307, and its media flows
   through the relay the decision named (the relay's flow counters prove it); the IPv6
   client reaches an IPv6 VIP and the relay and transceiver see its real IPv6 address.
2. ``icegate probe`` reports a real session through every VIP of the second region.
3. With the primary relay's VIPs unreachable at set-up, the session connects through the backup.
4. When the second region's last transceiver stops, the next session from there goes to the
   first region (failover); the time from SIGTERM to the front door's new decision is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from icegate import netns
from labkit import demo_report
from labkit.demo import Demo, Options, Progress, http_get, icegate_argv
from labkit.lab import Lab
from labkit.lab.geofiles import CATALOG_FILE

SINGAPORE = "lat=1.35&lon=103.82"


@pytest.fixture(scope="module")
def stack() -> Iterator[Demo]:
    name = f"icgg{os.getpid() % 100000}"
    options = Options(lab_name=name, mode="xdp", agent="echo", regions=2, sessions=3, duration_s=1.0)
    demo = Demo(options, Progress(quiet=True))
    try:
        demo.up()
        yield demo
    finally:
        Lab.load(name).down()
        netns.remove_prefixed(f"{name}-")


def talk(stack: Demo, plans: list[demo_report.Plan]) -> list[dict[str, Any]]:
    before = stack.relay_counters()
    summary = stack.conclude(plans, stack.run_clients(plans), before)
    return list(summary["sessions"])


def c3_plan(stack: Demo, index: int) -> demo_report.Plan:
    plan = next(p for p in stack.plan() if p.client == "c3")
    return demo_report.Plan(index, plan.client, plan.transceiver, plan.url, plan.tone_hz, plan.expect_hz)


def route(stack: Demo, query: str) -> dict[str, Any]:
    status, body = http_get(stack.lab.namespace("inet"), f"{stack.lab.front_door_urls()[0]}/v1/route?{query}")
    data: dict[str, Any] = json.loads(body) if body else {}
    data["status"] = status
    return data


def test_each_region_is_steered_to_its_own_region_and_relay(stack: Demo) -> None:
    sessions = talk(stack, stack.plan())
    for s in sessions:
        assert s["ok"], s["problems"]
    by_client = {s["client"]: s for s in sessions}
    for client in ("c1", "c2"):
        assert by_client[client]["decision"]["region"] == "lab"
        assert by_client[client]["relay"] == "relay"
        assert by_client[client]["decision"]["source"] == "mmdb"
    c3 = by_client["c3"]
    assert c3["decision"]["region"] == "lab2" and c3["decision"]["cluster"] == "lab2-c2"
    assert (c3["decision"]["primary"], c3["decision"]["backup"]) == ("r2a", "r2b")
    assert c3["relay"] == "r2a"
    # IPv6 client -> IPv6 VIP: the relay's flow (whose backend is tx3: cluster 2, index 1)
    # holds the client's real IPv6 address, the one the transceiver's sockets see inside Geneve.
    flow = c3["relay_flow"]
    assert flow["client"] == "2001:db8:c3::2" and flow["vip"] == "2001:db8:2a::10"
    assert flow["backend"] == "2:1" and flow["packets_in"] > 20 and flow["packets_out"] > 20
    # `lab status` shows that IPv6 path too: c3's address and its IPv6 default route.
    host = stack.lab.status()["hosts"]["c3"]
    eth0 = next(i for i in host["interfaces"] if i["name"] == "eth0")
    assert "2001:db8:c3::2/64" in eth0["addresses"]
    assert any(r["dst"] == "default" and ":" in (r["gateway"] or "") for r in host["routes"]), host["routes"]


def test_probe_reports_every_relay_vip(stack: Demo) -> None:
    catalog = stack.lab.dir / CATALOG_FILE
    argv = [*icegate_argv(), "probe", "--config", str(catalog), "--cluster", "lab2-c2", "--json"]
    results = json.loads(stack.lab.run("c3", argv, timeout=120))
    print("\nprobe:", json.dumps(results, indent=1), file=sys.stderr)
    assert [(r["relay"], r["vip"]) for r in results] == [
        ("r2a", "198.51.100.10"),
        ("r2a", "2001:db8:2a::10"),
        ("r2b", "198.51.101.10"),
        ("r2b", "2001:db8:2b::10"),
    ]
    for r in results:
        assert r["ok"], r
        assert r["setup_ms"] > 0 and r["packets_sent"] > 10 and r["packets_received"] > 10


def test_backup_relay_when_the_primary_is_down_at_setup(stack: Demo) -> None:
    r2 = stack.lab.config.second_region
    assert r2 is not None
    primary = r2.relays[0]
    down = [f"{primary.vip4}/32", f"{primary.vip6}/128"]
    for dst in down:  # the primary PoP is unreachable from the internet
        stack.lab.run("inet", ["ip", "route", "add", "blackhole", dst])
    try:
        [session] = talk(stack, [c3_plan(stack, 11)])
    finally:
        for dst in down:
            stack.lab.run("inet", ["ip", "route", "del", "blackhole", dst])
    assert session["ok"], session["problems"]
    assert session["decision"]["primary"] == "r2a" and session["decision"]["backup"] == "r2b"
    assert session["relay"] == "r2b"
    assert session["relay_flow"]["vip"] in ("198.51.101.10", "2001:db8:2b::10")


def stop_and_time_failover(stack: Demo, sig: signal.Signals) -> float:
    """Send ``sig`` to tx3; seconds until the front door steers Singapore to the first region."""
    record = stack.lab.process("tx3")
    assert record is not None and record.alive
    started = time.monotonic()
    os.kill(record.pid, sig)
    deadline = started + 30
    while route(stack, SINGAPORE).get("region") != "lab":
        assert time.monotonic() < deadline, "the front door did not fail over"
        time.sleep(0.01)
    return time.monotonic() - started


def restart_tx3(stack: Demo) -> None:
    stack.lab.stop_process("tx3")
    config = stack.lab.dir / "tx3.yaml"
    stack.lab.start_process("tx3", "tx3", [*icegate_argv(), "transceiver", "run", "--config", str(config)])
    deadline = time.monotonic() + 60
    while route(stack, SINGAPORE).get("region") != "lab2":
        assert time.monotonic() < deadline, "tx3 did not come back"
        time.sleep(0.05)


def test_a_relay_that_fails_its_probe_is_avoided_while_transceivers_heartbeat(stack: Demo) -> None:
    """A second front door with periodic probes: when r2a's path breaks (its VIPs blackholed at
    the router, where the front door runs), r2a leaves the answers though tx3 keeps heartbeating."""
    lab = stack.lab
    document = yaml.safe_load((lab.dir / CATALOG_FILE).read_text())
    document["geo"] |= {"listen_port": 8444, "probe_interval_s": 0.5, "probe_timeout_s": 4.0}
    path = lab.dir / "probing.yaml"
    path.write_text(yaml.safe_dump(document))
    lab.start_process("frontdoor-probing", "inet", [*icegate_argv(), "geo", "serve", "--config", str(path)])
    url = f"http://{lab.config.front_door4}:8444"

    def relays() -> list[str]:
        status, body = http_get(lab.namespace("inet"), f"{url}/v1/route?{SINGAPORE}")
        return [r["name"] for r in json.loads(body)["relays"]] if status == 200 else []

    def probe_ok(relay: str) -> str | None:
        status, body = http_get(lab.namespace("inet"), f"{url}/metrics")
        match = re.search(rf'^icegate_geo_probe_ok{{relay="{relay}"}} (\S+)$', body, re.M) if status else None
        return match.group(1) if match else None

    try:
        deadline = time.monotonic() + 90
        while probe_ok("r2a") != "1.0":
            assert time.monotonic() < deadline, "no passing probe of r2a"
            time.sleep(0.2)
        assert relays() == ["r2a", "r2b"]
        r2a = lab.config.second_region.relays[0]  # type: ignore[union-attr]
        down = [f"{r2a.vip4}/32", f"{r2a.vip6}/128"]
        for dst in down:
            lab.run("inet", ["ip", "route", "add", "blackhole", dst])
        try:
            while relays() != ["r2b"]:
                assert time.monotonic() < deadline + 60, "r2a stayed in the answers"
                time.sleep(0.2)
            assert probe_ok("r2a") == "0.0" and probe_ok("r2b") == "1.0"
            assert route(stack, SINGAPORE)["region"] == "lab2"  # the cluster is still healthy
        finally:
            for dst in down:
                lab.run("inet", ["ip", "route", "del", "blackhole", dst])
        while relays() != ["r2a", "r2b"]:
            assert time.monotonic() < deadline + 120, "r2a did not come back after passing a probe"
            time.sleep(0.2)
    finally:
        lab.stop_process("frontdoor-probing")


def test_failover_to_the_other_region_when_the_cluster_stops(stack: Demo) -> None:
    seconds = stop_and_time_failover(stack, signal.SIGTERM)
    print(
        f"\nfailover after SIGTERM of the cluster's last transceiver: {seconds * 1000:.0f} ms",
        file=sys.stderr,
    )
    data = route(stack, SINGAPORE)
    assert data["reason"] == "failover" and data["cluster"] == "lab-c1"
    assert data["skipped"][0]["cluster"] == "lab2-c2"
    assert data["skipped"][0]["why"] in ("draining", "no_live_transceiver")
    plan = c3_plan(stack, 21)
    plan = demo_report.Plan(
        plan.index, plan.client, plan.transceiver, plan.url, plan.tone_hz, plan.expect_hz, "lab"
    )
    [session] = talk(stack, [plan])
    assert session["ok"], session["problems"]
    assert session["decision"]["region"] == "lab" and session["decision"]["reason"] == "failover"
    assert session["relay"] == "relay"  # c3 reaches the first region's IPv4 VIP
    assert session["relay_flow"]["client"] == "100.64.3.2"
    status, metrics = http_get(stack.lab.namespace("inet"), f"{stack.lab.front_door_urls()[0]}/metrics")
    assert (
        status == 200 and 'icegate_geo_failovers_total{from_cluster="lab2-c2",to_cluster="lab-c1"}' in metrics
    )

    restart_tx3(stack)
    seconds = stop_and_time_failover(stack, signal.SIGKILL)
    print(f"failover after SIGKILL (heartbeat TTL expiry): {seconds * 1000:.0f} ms", file=sys.stderr)
