"""Voice calls through a relay fleet in the lab, and node events in the middle of them.

:class:`FleetRun` is the demo's stack (:class:`labkit.demo.Demo`: route key, transceivers,
agents, one ``transceiver.client`` process per call) with N relay nodes behind the VIP
(``lab up --relays N``, :mod:`labkit.lab.fleet`), each its own ``icegate relay run`` (XDP)
sharing the lab's Redis. While the calls run, the caller kills, adds or drains nodes; the
clients report every pause in the audio they heard (``gaps``: wall-clock start and length),
so the gap each event caused is read at the clients, where it matters.

Used by ``tests/e2e/test_fleet.py`` and ``bench/fleet_node_loss.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from icegate.errors import DemoError, LinkError
from labkit import demo_report
from labkit.demo import (
    CLIENT_SLACK_S,
    READY_TIMEOUT_S,
    Demo,
    Options,
    Progress,
    http_get,
    log_tail,
    read_json,
    wait_until,
)
from labkit.lab import Lab, LabConfig
from labkit.lab import fleet as routing

RELAY_OVERRIDES = {"mode": "xdp", "sync_interval_s": 0.5}
# A caller says a turn once more when the agent did not hear it: an utterance spoken wholly
# inside a node event's media gap is lost, as it would be on a real network. A call whose
# repeat is lost too fails (a path that stays broken fails every repeat).
REPEAT_UNHEARD = 1


class FleetRun(Demo):
    def __init__(self, options: Options, say: Progress, *, relays: int = 3, ecmp: str = "threshold") -> None:
        super().__init__(options, say)
        self.lab = Lab(LabConfig(name=options.lab_name, relays=relays, ecmp=ecmp))  # type: ignore[arg-type]
        self.relay_http = self.lab.relay_config().http
        self.outputs: dict[int, Path] = {}
        self.plans: list[demo_report.Plan] = []

    # ---- nodes ------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[int]:
        return list(range(1, self.lab.config.relays + 1))

    def host(self, node: int) -> str:
        return self.lab.config.relay_host(node)

    def start_relay(self, node: int) -> None:
        path = self.lab.write_relay_config(RELAY_OVERRIDES, node=node)
        argv = [*self.icegate, "relay", "run", "--config", str(path), "--log-json"]
        self.lab.start_process(self.host(node), self.host(node), argv)

    def node_get(self, node: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
        http = self.relay_http
        return http_get(
            self.lab.namespace(self.host(node)), f"http://{http.address}:{http.port}{path}", timeout
        )

    def ready(self, node: int) -> bool:
        return self.node_get(node, "/readyz")[0] == 200

    def wait_ready(self, node: int) -> None:
        def up() -> bool:
            self.alive(self.host(node))
            return self.ready(node) and self.active_backends_of(node) == len(self.lab.transceivers())

        wait_until(up, READY_TIMEOUT_S, f"relay node {node} ready", self.log(self.host(node)))

    def active_backends_of(self, node: int) -> int:
        return int(self.metric(node, 'icegate_relay_backends{state="active"}'))

    def metric(self, node: int, series: str) -> float:
        status, body = self.node_get(node, "/metrics")
        for line in body.splitlines() if status == 200 else []:
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def live_flows(self, node: int, idle_s: float = 1.0) -> int:
        """Flows of ``node`` that carried a packet in the last ``idle_s`` (``GET /v1/drain``)."""
        status, body = self.node_get(node, f"/v1/drain?idle_s={idle_s:g}")
        return int(json.loads(body)["live"]) if status == 200 else 0

    def spread(self, nodes: list[int] | None = None) -> dict[int, int]:
        return {k: self.live_flows(k) for k in (nodes or self.nodes)}

    def clients_on(self, node: int, idle_s: float = 1.0) -> set[str]:
        """``addr:port`` of the clients whose flows on ``node`` carried packets in the last
        ``idle_s`` (``icegate flows ls --json`` on the node, over its pinned maps)."""
        path = self.lab.dir / f"{self.host(node)}.yaml"
        out = self.lab.run(self.host(node), [*self.icegate, "flows", "ls", "--json", "--config", str(path)])
        rows = json.loads(out) if out.strip() else []
        return {demo_report.addr_of(r) for r in rows if float(r["idle_s"]) < idle_s}

    def recoveries(self, node: int) -> dict[str, int]:
        """``icegate_relay_recoveries_total`` of ``node`` by result (recovered, miss, degraded...)."""
        status, body = self.node_get(node, "/metrics")
        prefix = 'icegate_relay_recoveries_total{result="'
        out = {}
        for line in body.splitlines() if status == 200 else []:
            if line.startswith(prefix):
                result, _, value = line[len(prefix) :].partition('"} ')
                out[result] = int(float(value))
        return out

    def recovered(self, node: int) -> int:
        return int(self.metric(node, 'icegate_relay_recoveries_total{result="recovered"}'))

    # ---- the stack --------------------------------------------------------------------------
    def start_components(self) -> None:
        lab = self.lab
        lab.run("dc", [*self.icegate, "token", "init", "--redis-url", lab.redis_url,
                       "--region", lab.config.region])  # fmt: skip
        for node in self.nodes:
            self.start_relay(node)
        self.say(f"{len(self.nodes)} relay nodes starting (XDP; bcc compiles the program in each)")
        for tx in lab.transceivers():
            self.start_transceiver(tx, {})
        for tx in lab.transceivers():

            def tx_ready(name: str = tx.name, url: str = tx.signaling_url) -> bool:
                self.alive(name)
                return http_get(lab.namespace(name), f"{url}/readyz")[0] == 200

            wait_until(tx_ready, READY_TIMEOUT_S, f"{tx.name}'s /readyz", self.log(tx.name))
        for node in self.nodes:
            self.wait_ready(node)
        self.say(f"relay nodes {self.nodes} ready, ECMP {lab.config.ecmp} over {routing.members(lab)}")

    def launch(self) -> None:
        """Start one client process per planned call (``options.sessions``)."""
        self.plans = self.plan()
        results_dir = self.lab.dir / "results"
        results_dir.mkdir(exist_ok=True)
        for p in self.plans:
            out = results_dir / f"client-{p.index}.json"
            argv = [sys.executable, "-m", "transceiver.client", p.url, "--hz", str(p.tone_hz),
                    "--duration", str(self.options.duration_s), "--out", str(out),
                    "--repeat-unheard", str(REPEAT_UNHEARD)]  # fmt: skip
            self.lab.start_process(f"client-{p.index}", p.client, argv)
            self.outputs[p.index] = out

    def wait_connected(self, timeout: float = 60.0) -> dict[int, int]:
        """Until every call's flow carries packets somewhere in the fleet; returns flows per node."""
        want = len(self.plans)
        seen: dict[int, int] = {}

        def all_live() -> bool:
            nonlocal seen
            seen = self.spread([k for k in self.nodes if self.exists(k)])
            return sum(seen.values()) >= want

        wait_until(all_live, timeout, f"{want} calls carrying media through the fleet")
        return seen

    def exists(self, node: int) -> bool:
        return Path(f"/run/netns/{self.lab.namespace(self.host(node))}").exists()

    def collect(self) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + self.options.duration_s + CLIENT_SLACK_S + len(self.plans)
        running = {p.index for p in self.plans}
        while running and time.monotonic() < deadline:
            for index in sorted(running):
                record = self.lab.process(f"client-{index}")
                if record is None or not record.alive:
                    running.discard(index)
            time.sleep(0.1)
        results = {}
        for p in self.plans:
            result = read_json(self.outputs[p.index])
            if result is None:
                result = {"error": f"no result:\n{log_tail(self.log(f'client-{p.index}'))}"}
            results[p.index] = result
        for index in running:
            self.lab.stop_process(f"client-{index}")
        return results

    # ---- node events -------------------------------------------------------------------------
    def kill(self, node: int) -> float:
        """Kill ``node`` (control plane SIGKILLed, namespace and links gone); returns the wall time."""
        at = time.time()
        routing.kill(self.lab, node)
        return at

    def add(self) -> tuple[int, float]:
        """Plumb and start one more node, then route to it once ready; returns (node, wall time routed)."""
        node = routing.add_node(self.lab)
        self.start_relay(node)
        self.wait_ready(node)
        routing.restore(self.lab, node)
        return node, time.time()

    def drain(self, node: int, timeout: float = 60.0) -> dict[str, Any]:
        """``icegate relay drain --wait --json`` on ``node`` while this process plays the routing
        layer (withdraw the node once its ``/readyz`` fails). Returns the drain's JSON and timings."""
        path = self.lab.dir / f"{self.host(node)}.yaml"
        argv = [*self.icegate, "relay", "drain", "--wait", "--idle", "2", "--json",
                "--timeout", str(timeout), "--config", str(path)]  # fmt: skip
        started = time.time()
        proc = self.lab.start_process(f"drain-{node}", self.host(node), argv)
        wait_until(lambda: not self.ready(node), 10, f"node {node} to fail readiness")
        routing.withdraw(self.lab, node)
        withdrawn = time.time()
        wait_until(lambda: not proc.alive, timeout + 10, f"drain of node {node}")
        text = (self.lab.dir / f"drain-{node}.log").read_text()
        try:
            report = json.loads(text[text.index("{") :])
        except ValueError as exc:
            raise DemoError(f"drain of node {node} printed no report: {exc}\n{text[-2000:]}") from None
        return {"report": report, "started": started, "withdrawn": withdrawn, "done": time.time()}


# ---- reading the clients' gaps ----------------------------------------------------------------
def gap_after(result: dict[str, Any], at: float, window_s: float = 5.0) -> float:
    """The longest wait (ms) between two audio frames that began in ``[at - 0.1, at + window_s]``;
    20 ms (the frame interval) when no wait was longer than 30 ms."""
    found = [g for t, g in result.get("gaps", []) if at - 0.1 <= t <= at + window_s]
    return max(found, default=20.0)


def calls_of(results: dict[int, dict[str, Any]], clients: set[str]) -> set[int]:
    """The calls (indices) one of whose local candidates is in ``clients``."""
    return {i for i, r in results.items() if any(local in clients for local in r.get("local", []))}


def heard_after(result: dict[str, Any], at: float) -> bool:
    """True if the call heard audio after wall time ``at``."""
    until = result.get("heard_until")
    return until is not None and float(until) > at


def repeated_turns(result: dict[str, Any]) -> int:
    """How many of the call's turns were said again because the agent did not hear them."""
    return sum(int(turn.get("repeated", 0)) for turn in result.get("turns", []))


def summarize(gaps_ms: list[float]) -> dict[str, float]:
    if not gaps_ms:
        return {"max_ms": 0.0, "median_ms": 0.0, "calls": 0}
    return {
        "max_ms": round(max(gaps_ms), 1),
        "median_ms": round(statistics.median(gaps_ms), 1),
        "calls": len(gaps_ms),
    }


__all__ = ["FleetRun", "LinkError", "calls_of", "gap_after", "heard_after", "repeated_turns", "summarize"]
