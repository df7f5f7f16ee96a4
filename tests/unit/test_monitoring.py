"""The observability pack (deploy/monitoring/): promtool checks the rules and runs their
unit tests (one per alert, firing and silent); every alert docs/OPERATIONS.md names is
there; the Grafana dashboard is well formed and graphs only series that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "icegate.rules.yml"
RULE_TESTS = MONITORING / "icegate.rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "icegate.json"
PRODUCT = ("icegate", "controlplane", "transceiver", "geo")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_promtool_test_fails_when_an_alert_is_broken(tmp_path: Path) -> None:
    """The unit tests can fail: a threshold moved past the test's series is caught."""
    (tmp_path / RULES.name).write_text(
        RULES.read_text().replace("icegate_relay_redis_up == 0", "icegate_relay_redis_up == 2")
    )
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and "IcegateRelayRedisDown" in result.stdout + result.stderr


def test_every_alert_in_operations_md_is_a_rule() -> None:
    """docs/OPERATIONS.md "Alerts" lists each alert by name; both lists are the same."""
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    documented = set(re.findall(r"^\| `(Icegate\w+)` \|", text, re.M))
    assert documented == {r["alert"] for r in rules() if "alert" in r}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(icegate(?::[a-z0-9_]+)+|icegate_[a-z0-9_]+|process_[a-z_]+)\b", expr))
    return {n for n in names if not n.endswith("_")}  # `icegate_.+_http...` regex parts


def exported_stems() -> str:
    """The product's source, where every exported metric name (or its stem) is spelt."""
    return "\n".join(p.read_text() for pkg in PRODUCT for p in (REPO / pkg).rglob("*.py"))


def known(name: str, recorded: set[str], source: str) -> bool:
    if name in recorded or name.startswith("process_"):
        return True
    base = re.sub(r"_(total|bucket|sum|count)$", "", name)
    for prefix in ("icegate_relay_", "icegate_transceiver_", "icegate_agent_"):
        if base.startswith(prefix) and f'"{base.removeprefix(prefix)}"' in source:
            return True  # declared with the PREFIX constant: _gauge("redis_up", ...)
    return f'"{base}"' in source or f'_{base.split("_", 2)[-1]}"' in source or base in source


def test_rules_and_dashboard_use_only_exported_series() -> None:
    source = exported_stems()
    recorded = {r["record"] for r in rules() if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules()]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    unknown = sorted({n for e in exprs for n in metric_names(e) if not known(n, recorded, source)})
    assert unknown == []


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["expr"] and target["refId"]
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables, target["expr"]
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Relay", "Transceivers", "Drops by reason (not_webrtc excluded)", "Targets up"} <= titles


def exposition(component: str) -> str:
    """What /metrics of ``component`` serves, built from the real collectors."""
    import asyncio

    import aiohttp
    from aiohttp.test_utils import TestServer
    from prometheus_client import CollectorRegistry, generate_latest

    if component == "relay":
        from controlplane.config import RelayLimits
        from controlplane.datapath.layout import Stat
        from controlplane.datapath.store import MemoryStore
        from controlplane.node.metrics import ListCounters, RelayCollector
        from icegate.observe import http_responses, register_process

        registry = CollectorRegistry(auto_describe=False)
        registry.register(RelayCollector(MemoryStore(), ListCounters([[1, 100]] * len(Stat)), RelayLimits()))
        register_process(registry, "relay")
        http_responses(registry, "icegate_relay")
        return generate_latest(registry).decode()
    if component == "transceiver":
        from transceiver.metrics import TransceiverMetrics

        return generate_latest(TransceiverMetrics().registry).decode()

    from transceiver.agent.builtin import EchoAgent
    from transceiver.agent.sdk import make_app

    async def fetch() -> str:
        server = TestServer(make_app(EchoAgent))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(2):  # the second scrape also has the first one's response count
                    async with http.get(server.make_url("/metrics")) as reply:
                        text = await reply.text()
            return text
        finally:
            await server.close()

    return asyncio.run(fetch())


@pytest.mark.parametrize("component", ["relay", "transceiver", "agent"])
def test_promtool_check_metrics_is_clean(component: str) -> None:
    """`promtool check metrics` (naming and help lint) finds nothing in any component's /metrics."""
    text = exposition(component)
    assert "icegate_build_info{" in text and "process_cpu_seconds_total" in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
