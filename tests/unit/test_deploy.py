"""The deployment kit (deploy/, examples/), checked with the tools that will consume it:
kustomize renders every overlay, every rendered object validates against the Kubernetes
schemas (kubernetes-validate, offline, strict), systemd-analyze verifies the units,
hadolint lints the Dockerfile, ruby parses the Vagrantfiles. Each check also gets a
broken copy, to show that it can fail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from icegate import configcheck
from icegate.cli import cli

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to run on (docs/DEPLOYMENT.md)
UNITS = REPO / "deploy" / "systemd"
VENV_BIN = Path(sys.executable).parent  # kubectl and hadolint come from PyPI (pyproject dev extras)
VENV_ICEGATE = VENV_BIN / "icegate"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(VENV_BIN / "kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


# ---- Kubernetes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {"base": kustomize(K8S / "base")} | {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


def test_overlays_exist() -> None:
    assert OVERLAYS == ["one-region", "two-regions"]


@pytest.mark.parametrize("overlay", ["base", "one-region", "two-regions"])
def test_every_rendered_object_is_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert "Secret" in kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    relay = by_kind(rendered["base"], "DaemonSet")[0]
    containers(relay)[0]["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(relay, K8S_VERSION, strict=True)


def test_relay_daemonset_is_least_privilege_and_survives_restarts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    relay = by_kind(rendered["one-region"], "DaemonSet")[0]
    spec = relay["spec"]["template"]["spec"]
    container = containers(relay)[0]
    security = container["securityContext"]
    assert spec["hostNetwork"] is True and not security.get("privileged")
    assert security["capabilities"]["drop"] == ["ALL"]
    # SYS_ADMIN: bcc re-opens pins (documented in the manifest); nothing beyond these
    assert set(security["capabilities"]["add"]) == {
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_RESOURCE",
        "SYS_ADMIN",
    }
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/fs/bpf", "/lib/modules", "/usr/src", "/etc/icegate"} <= mounts
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][:3] == ["icegate", "relay", "drain"]
    assert "--wait" in container["lifecycle"]["preStop"]["exec"]["command"]
    assert relay["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert relay["metadata"]["namespace"] == "icegate"


def test_transceivers_drain_within_their_grace_period(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["one-region"]
    tx = by_kind(docs, "StatefulSet")
    tx = [d for d in tx if d["metadata"]["name"] == "icegate-transceiver"]
    assert len(tx) == 1
    spec = tx[0]["spec"]
    pod = spec["template"]["spec"]
    config = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["transceiver.yaml"])["transceiver"]
    assert pod["terminationGracePeriodSeconds"] > config["drain_deadline_s"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    command = " ".join(containers(tx[0])[0]["args"])
    assert '--index "${POD_NAME##*-}"' in command  # the ordinal is the transceiver index
    headless = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == spec["serviceName"]]
    assert headless and headless[0]["spec"]["clusterIP"] == "None"
    ports = {(p["port"], p["protocol"]) for p in headless[0]["spec"]["ports"]}
    assert {(6081, "UDP"), (8080, "TCP")} <= ports
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1


def test_two_regions_are_separate_pops(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["two-regions"]
    namespaces = {d["metadata"]["namespace"] for d in docs}
    assert namespaces == {"icegate-eu", "icegate-us"}
    for relay in by_kind(docs, "DaemonSet"):
        region = relay["metadata"]["namespace"].removeprefix("icegate-")
        assert relay["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/region"] == region
    for cm in by_kind(docs, "ConfigMap"):
        region = cm["metadata"]["namespace"].removeprefix("icegate-")
        assert yaml.safe_load(cm["data"]["relay.yaml"])["relay"]["redis"]["region"] == region
    catalogs = {(K8S / "overlays/two-regions" / r / "config/catalog.yaml").read_text() for r in ("eu", "us")}
    assert catalogs == {(K8S / "overlays/two-regions/catalog.yaml").read_text()}


def test_redis_sentinel_component_renders_valid(tmp_path: Path) -> None:
    """components/redis-sentinel on top of the base: three Redis pods, three sentinels,
    every object valid (kustomize takes only relative paths, hence the relpath)."""
    base = os.path.relpath(K8S / "base", tmp_path)
    component = os.path.relpath(K8S / "components" / "redis-sentinel", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{component}]\n"
    )
    docs = kustomize(tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    sets = {d["metadata"]["name"]: d for d in by_kind(docs, "StatefulSet")}
    assert (
        sets["icegate-redis"]["spec"]["replicas"] == 3 and sets["icegate-sentinel"]["spec"]["replicas"] == 3
    )
    init = sets["icegate-sentinel"]["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
    assert "sentinel monitor icegate icegate-redis-0.icegate-redis 6379 2" in init
    redis_service = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "icegate-redis"]
    assert redis_service[0]["spec"]["clusterIP"] == "None"  # pod names resolve


def config_files() -> list[Path]:
    return sorted([*(REPO / "examples").glob("*.yaml"), *K8S.rglob("config/*.yaml")])


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_and_manifest_config_checks_clean(path: Path) -> None:
    findings, checked = configcheck.check(path)
    # A section of a component this build lacks cannot be checked here: say so, not pass.
    missing = [f for f in findings if "not available in this build" in f.problem]
    assert [f for f in findings if f not in missing] == []
    if missing:
        pytest.skip("; ".join(str(f) for f in missing))
    assert checked


def test_vagrant_provisioned_configs_check_clean(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "vagrant" / "Vagrantfile").read_text()
    blocks = re.findall(r"^(\w+)_CONFIG = <<~YAML\n(.*?)^YAML$", text, re.S | re.M)
    assert {name for name, _ in blocks} == {"RELAY", "TRANSCEIVER"}
    for name, body in blocks:
        path = tmp_path / f"{name.lower()}.yaml"
        path.write_text(textwrap.dedent(body))
        assert configcheck.check(path)[0] == [], name


def test_agent_env_names_real_options() -> None:
    """examples/agent.env: every ICEGATE_* variable is an option of `icegate agent run`
    (click's auto_envvar_prefix), and the agent takes them from the environment."""
    variables = {}
    for line in (REPO / "examples" / "agent.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            variables[key] = value
    ctx = click.Context(cli, info_name="icegate", auto_envvar_prefix="ICEGATE")
    agent = cli.get_command(ctx, "agent")
    assert isinstance(agent, click.Group)
    run = agent.get_command(ctx, "run")
    assert run is not None
    options = {f"ICEGATE_AGENT_RUN_{p.name.upper()}" for p in run.params if p.name}
    assert variables and set(variables) <= options


# ---- systemd -----------------------------------------------------------------------------


def verify_units(directory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies whose ExecStart points at this checkout's
    icegate (the units name /opt/icegate, which verify requires to exist)."""
    names = []
    for unit in sorted(directory.glob("*.service")):
        text = unit.read_text().replace("/opt/icegate/bin/icegate", str(VENV_ICEGATE))
        name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
        names.append(f"./{name}")
    return subprocess.run(
        ["systemd-analyze", "verify", *names],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip


def test_systemd_units_verify(tmp_path: Path) -> None:
    units = {u.name for u in UNITS.glob("*.service")}
    assert units == {
        "icegate-relay.service",
        "icegate-transceiver@.service",
        "icegate-agent.service",
        "icegate-geo.service",
    }
    result = verify_units(UNITS, tmp_path)
    # verify only warns about unknown keys: any output is a finding
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stderr


def test_systemd_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    broken = tmp_path / "src"
    broken.mkdir()
    text = (UNITS / "icegate-relay.service").read_text().replace("LimitMEMLOCK", "LimitMEMLOK")
    (broken / "icegate-relay.service").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    assert "LimitMEMLOK" in verify_units(broken, out).stderr


def test_relay_unit_keeps_xdp_attached_and_memory_unlimited() -> None:
    unit = (UNITS / "icegate-relay.service").read_text()
    directives = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert directives["LimitMEMLOCK"] == "infinity"
    assert "ExecStop" not in directives  # stop = SIGTERM: the program stays attached
    assert set(directives["AmbientCapabilities"].split()) == {
        "CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"
    }  # fmt: skip
    tx = (UNITS / "icegate-transceiver@.service").read_text()
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", tx, re.M).group(1))  # type: ignore[union-attr]
    drain = yaml.safe_load((REPO / "examples/transceiver.yaml").read_text())["transceiver"][
        "drain_deadline_s"
    ]
    assert timeout > drain


# ---- images and VMs ----------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    exe = str(VENV_BIN / "hadolint")
    config = REPO / "deploy" / "docker" / ".hadolint.yaml"
    return subprocess.run(
        [exe, "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    dockerfile = REPO / "deploy" / "docker" / "Dockerfile"
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile.read_text(), re.M)
    assert stages == ["build", "base", "relay", "app"]
    assert re.search(r"^USER 10001", dockerfile.read_text().split("AS app")[1], re.M)
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        dockerfile.read_text().replace("COPY --from=build", "ADD --from=build") + "\nRUN cd /tmp\n"
    )
    assert hadolint(bad).returncode != 0


@pytest.mark.parametrize("vagrantfile", ["Vagrantfile", "deploy/vagrant/Vagrantfile"])
def test_vagrantfiles_parse(vagrantfile: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        ["ruby", "-c", str(REPO / vagrantfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr
    broken = tmp_path / "Vagrantfile"
    broken.write_text((REPO / vagrantfile).read_text().rsplit("end", 1)[0])
    assert subprocess.run(["ruby", "-c", str(broken)], capture_output=True, timeout=60).returncode != 0


def vagrant_validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "VAGRANT_HOME": str(home / "vagrant")}
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        capture_output=True, text=True, timeout=120, cwd=directory, env=env, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("directory", [".", "deploy/vagrant"])
def test_vagrant_validates_its_own_config(directory: str, tmp_path: Path) -> None:
    """Vagrant's own validation (no box, no provider needed): every setting exists, no warnings."""
    # in a copy: vagrant writes a .vagrant/ folder beside the Vagrantfile it reads
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "Vagrantfile").write_text((REPO / directory / "Vagrantfile").read_text())
    result = vagrant_validate(copy, tmp_path)
    assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr
    assert "IP ending in" not in result.stdout  # no warning either
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (REPO / directory / "Vagrantfile").read_text()
    (broken / "Vagrantfile").write_text(text.replace("config.vm.box =", "config.vm.boxx ="))
    failed = vagrant_validate(broken, tmp_path)
    assert failed.returncode != 0 and "boxx" in failed.stdout + failed.stderr


def test_multi_vm_vagrant_provisions_with_scripts_setup() -> None:
    text = (REPO / "deploy" / "vagrant" / "Vagrantfile").read_text()
    assert set(re.findall(r'^  "(\w+)"\s+=>', text, re.M)) == {"client", "relay", "transceiver"}
    assert 'inline: "cd /vagrant && scripts/setup"' in text
    assert '"virtio"' in text  # a NIC whose driver runs native XDP
