"""The lab: real namespaces, veths, a bridge, redis-server; up -> status -> traffic -> down.

Every lab here is named after the test's ``ns_prefix`` (``icgt1234x5-`` -> lab
``icgt1234x5``), so its namespaces carry that prefix and the fixture removes them even
when ``down`` itself is what failed.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from icegate import netns
from icegate.config import load
from icegate.errors import ConfigError, LinkError
from labkit.lab import Lab, LabConfig, load_lab_config
from labkit.support import REPO, Processes, wait_for

ICEGATE = [str(Path(sys.executable).with_name("icegate"))]  # the console script of this venv
BPFFS = Path("/sys/fs/bpf")


def lab_name(ns_prefix: str) -> str:
    return ns_prefix.rstrip("-")


def icegate(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ICEGATE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"icegate {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def assert_gone(lab: Lab) -> None:
    """Nothing of ``lab`` is left: no namespace, no pin, no records (so no registered process)."""
    assert netns.names(lab.prefix) == []
    assert sorted((BPFFS / "icegate").glob(f"{lab.prefix}*")) == []
    assert not lab.dir.exists()


@pytest.fixture
def lab(ns_prefix: str) -> Iterator[Lab]:
    the_lab = Lab(LabConfig(name=lab_name(ns_prefix)))
    the_lab.up()
    try:
        yield the_lab
    finally:
        the_lab.down()


def iface(info: dict[str, Any], host: str, name: str) -> dict[str, Any]:
    found = [i for i in info["hosts"][host]["interfaces"] if i["name"] == name]
    assert found, f"{host} has no interface {name}: {info['hosts'][host]['interfaces']}"
    return found[0]


def routes(info: dict[str, Any], host: str) -> set[tuple[str, str | None, str | None]]:
    return {(r["dst"], r["gateway"], r["dev"]) for r in info["hosts"][host]["routes"]}


def df_ping(lab: Lab, size: int, host: str = "relay", dst: str = "10.70.0.11") -> bool:
    """An IPv4 ping of total length ``size`` with DF set; True when answered."""
    argv = ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size - 28), dst]
    return subprocess.run(lab.command(host, argv), capture_output=True).returncode == 0


# ---- up -> status ----------------------------------------------------------------------


def test_status_describes_the_configured_topology(lab: Lab) -> None:
    cfg = lab.config
    info = lab.status()
    assert info["state"] == "up" and info["name"] == cfg.name
    assert {h: e["namespace"] for h, e in info["hosts"].items()} == {
        h: f"{cfg.name}-{h}" for h in ("inet", "relay", "dc", "c1", "c2", "tx1", "tx2")
    }
    assert all(e["exists"] for e in info["hosts"].values()) and not info["unexpected_namespaces"]

    for client in cfg.clients:
        assert iface(info, client.name, "eth0")["addresses"] == [f"{client.address}/24"]
        assert (f"{client.address[:-2]}.0/24", None, "eth0") in routes(info, client.name)
        assert ("default", client.gateway, "eth0") in routes(info, client.name)
        assert iface(info, "inet", client.name)["addresses"] == [f"{client.gateway}/24"]
    assert info["hosts"]["inet"]["forwarding"] is True
    assert info["hosts"]["relay"]["forwarding"] is False

    pub0, priv0 = iface(info, "relay", "pub0"), iface(info, "relay", "priv0")
    assert pub0["addresses"] == ["192.0.2.2/24", "192.0.2.10/32"] and pub0["mtu"] == 1500
    assert priv0["addresses"] == ["10.70.0.1/24"] and priv0["mtu"] == cfg.private.mtu == 3500
    assert pub0["peer"] == "inet:pub" and priv0["peer"] == "dc:relay"
    assert ("default", "192.0.2.1", "pub0") in routes(info, "relay")
    assert info["vips"] == [{"address": "192.0.2.10", "port": 3478}]

    br0 = iface(info, "dc", "br0")
    assert br0["addresses"] == ["10.70.0.100/24"] and br0["mtu"] == cfg.private.mtu
    assert {i["name"] for i in info["hosts"]["dc"]["interfaces"] if i["master"] == "br0"} == {
        "relay",
        "inet",
        "tx1",
        "tx2",
    }
    assert iface(info, "inet", "dc")["addresses"] == ["10.70.0.254/24"]
    for tx, address in (("tx1", "10.70.0.11"), ("tx2", "10.70.0.12")):
        assert (
            iface(info, tx, "eth0")["addresses"] == [f"{address}/24"]
            and iface(info, tx, "eth0")["mtu"] == cfg.private.mtu
        )
        assert ("default", "10.70.0.254", "eth0") in routes(info, tx)

    # XDP readiness (NOTES): tx checksum offload off on every veth; GRO on the relay's peers.
    for host, entry in info["hosts"].items():
        for i in entry["interfaces"]:
            if i["kind"] == "veth":
                assert i["offloads"]["tx_checksum"] is False, (host, i["name"])
    assert iface(info, "inet", "pub")["offloads"]["gro"] is True
    assert iface(info, "dc", "relay")["offloads"]["gro"] is True
    assert pub0["xdp"] is None and info["relay"]["xdp"] == {"pub0": None, "priv0": None}

    # MACs agree with iproute2's view, and the relay's permanent neighbours use them.
    shown = json.loads(lab.run("relay", ["ip", "-j", "link", "show", "dev", "pub0"]))[0]
    assert pub0["mac"] == shown["address"]
    neigh = json.loads(lab.run("relay", ["ip", "-j", "neigh", "show", "dev", "priv0"]))
    assert {n["dst"]: n["lladdr"] for n in neigh} == {
        "10.70.0.11": iface(info, "tx1", "eth0")["mac"],
        "10.70.0.12": iface(info, "tx2", "eth0")["mac"],
    }

    assert info["redis"] == {
        "url": "redis://10.70.0.100:6379/0",
        "namespace": f"{cfg.name}-dc",
        "reachable": True,
    }
    [redis_proc] = info["processes"]
    assert (
        redis_proc["name"] == "redis" and redis_proc["alive"] and redis_proc["namespace"] == f"{cfg.name}-dc"
    )
    assert info["netem"]["available"] is False and "netem" in info["netem"]["reason"]
    assert info["netem"]["applied"] is False
    assert info["relay"]["name"] == f"{cfg.name}-relay" and info["relay"]["pinned"] is False
    assert info["config"]["name"] == cfg.name and info["notes"] == []


def test_cli_status_json_and_table(lab: Lab) -> None:
    out = json.loads(icegate("lab", "status", "--name", lab.name, "--json").stdout)
    assert out["state"] == "up" and out["hosts"]["relay"]["namespace"] == f"{lab.name}-relay"
    assert [p["name"] for p in out["processes"]] == ["redis"]
    table = icegate("lab", "status", "--name", lab.name).stdout
    assert f"lab {lab.name}: up" in table
    assert "192.0.2.2/24,192.0.2.10/32" in table and "default via 10.70.0.254 dev eth0" in table
    assert "netem: unavailable" in table and "PONG" in table


def test_settings_for_the_components(lab: Lab) -> None:
    relay = lab.relay_config()
    assert relay.name == f"{lab.name}-relay" and relay.interfaces == ("pub0", "priv0")
    assert [(v.address, v.port) for v in relay.vips] == [("192.0.2.10", 3478)]
    assert relay.tunnel.address4 == "10.70.0.1" and relay.tunnel.port == 6081
    assert relay.redis.url == "redis://10.70.0.100:6379/0" and relay.redis.region == "lab"
    assert relay.pin_dir == BPFFS / "icegate" / f"{lab.name}-relay"
    assert lab.relay_config({"mode": "userspace"}).mode == "userspace"
    written = load(type(relay), lab.write_relay_config(), "relay")
    assert written == relay

    tx1, tx2 = lab.transceivers()
    assert (tx1.address, tx1.index, tx1.cluster, tx1.signaling_url) == (
        "10.70.0.11",
        1,
        1,
        "http://10.70.0.11:8080",
    )
    assert (tx2.address, tx2.index, tx2.namespace) == ("10.70.0.12", 2, f"{lab.name}-tx2")
    assert tx1.tunnel_port == 6081 and tx1.relay_tunnel == "10.70.0.1" and tx1.redis_url == lab.redis_url
    assert lab.transceiver("tx2") == tx2 == lab.transceiver(2)
    section = tx1.config_section()
    assert section["relays"] == [{"address": "192.0.2.10", "port": 3478, "tunnel_port": 6081}]
    assert section["tunnel_bind"] == "10.70.0.11" and section["region"] == "lab"
    assert section["relay_sources"] == ["10.70.0.1"]
    assert [c.namespace for c in lab.clients()] == [f"{lab.name}-c1", f"{lab.name}-c2"]


def test_up_twice_is_refused(lab: Lab) -> None:
    with pytest.raises(LinkError, match=r"already exists.*lab down"):
        Lab(lab.config).up()
    assert lab.status()["state"] == "up"


# ---- traffic ---------------------------------------------------------------------------


def test_connectivity(lab: Lab) -> None:
    for client in ("c1", "c2"):
        lab.run(client, ["ping", "-c", "1", "-W", "2", "192.0.2.10"])

    # Signaling path: client -> inet -> dc bridge -> tx1:8080 over TCP, and back via tx1's default route.
    server = lab.start_process(
        "signaling", "tx1", [sys.executable, "-m", "http.server", "8080", "--bind", "10.70.0.11"], cwd="/"
    )
    assert server.alive

    def http_get() -> bytes:
        with netns.entered(lab.namespace("c1")):
            try:
                with socket.create_connection(("10.70.0.11", 8080), timeout=1) as conn:
                    conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    return conn.recv(64)
            except OSError:
                return b""

    assert wait_for(http_get, timeout=10, what="HTTP on tx1:8080 from c1").startswith(b"HTTP/1.0 200")

    # Transceivers reach Redis: redis-cli and redis-py.
    assert lab.run("tx1", ["redis-cli", "-h", "10.70.0.100", "-p", "6379", "ping"]).strip() == "PONG"
    with netns.entered(lab.namespace("tx2")):
        store = redis.Redis.from_url(lab.redis_url, socket_timeout=2)
        try:
            assert store.ping() is True
        finally:
            store.close()

    # The private network carries MTU-sized packets unfragmented (Geneve headroom), not one byte more.
    assert df_ping(lab, lab.config.private.mtu) and not df_ping(lab, lab.config.private.mtu + 1)

    # Redis and the data centre stay private: nothing routes back to the clients from there.
    with netns.entered(lab.namespace("c1")), pytest.raises(OSError):
        socket.create_connection(("10.70.0.100", 6379), timeout=0.5).close()

    assert lab.stop_process("signaling") is True
    assert not server.alive and lab.process("signaling") is None


# ---- XDP attachment and pins ---------------------------------------------------------------

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD, BPF_OBJ_PIN, BPF_PROG_TYPE_XDP, XDP_PASS = 5, 6, 6, 2


def _bpf(cmd: int, attr: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    ret = int(libc.syscall(BPF_SYSCALL[platform.machine()], cmd, buf, 128))
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def pin_xdp_pass(path: Path) -> None:
    """Load ``r0 = XDP_PASS; exit`` with bpf(2) and pin it at ``path`` (no compiler needed)."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, XDP_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    fd = _bpf(
        BPF_PROG_LOAD,
        struct.pack("<IIQQ", BPF_PROG_TYPE_XDP, 2, ctypes.addressof(code), ctypes.addressof(license_)),
    )
    try:
        name = ctypes.create_string_buffer(str(path).encode())
        _bpf(BPF_OBJ_PIN, struct.pack("<QI", ctypes.addressof(name), fd))
    finally:
        os.close(fd)


@pytest.mark.skipif(platform.machine() not in BPF_SYSCALL, reason="bpf(2) number unknown here")
def test_native_xdp_shows_in_status_and_down_removes_pins(lab: Lab) -> None:
    pin_dir = BPFFS / "icegate" / f"{lab.name}-relay"
    pin_dir.mkdir(parents=True)
    pin_xdp_pass(pin_dir / "xdp_pass")
    for dev in ("pub0", "priv0"):
        lab.run("relay", ["ip", "link", "set", "dev", dev, "xdpdrv", "pinned", str(pin_dir / "xdp_pass")])
    info = lab.status()
    xdp = info["relay"]["xdp"]
    assert xdp["pub0"]["mode"] == "native" and xdp["priv0"]["mode"] == "native"
    assert xdp["pub0"]["prog_id"] == xdp["priv0"]["prog_id"] > 0
    assert info["relay"]["pinned"] is True
    # Native XDP on the relay's NICs leaves the lab working (the program passes everything).
    lab.run("c1", ["ping", "-c", "1", "-W", "2", "192.0.2.10"])
    assert df_ping(lab, lab.config.private.mtu)

    gone = lab.down()
    assert str(pin_dir) in gone.pins and not pin_dir.exists()
    assert_gone(lab)


# ---- down -------------------------------------------------------------------------------


def test_down_leaves_nothing(ns_prefix: str) -> None:
    name = lab_name(ns_prefix)
    up = json.loads(icegate("lab", "up", "--name", name, "--json").stdout)
    assert up["state"] == "up"
    the_lab = Lab.load(name)
    redis_record = the_lab.process("redis")
    assert redis_record is not None and redis_record.alive
    extra = the_lab.start_process("sleeper", "c2", ["sleep", "600"])

    down = json.loads(icegate("lab", "down", "--name", name, "--json").stdout)
    assert sorted(down["processes"]) == ["redis", "sleeper"] and down["strays"] == []
    assert len(down["namespaces"]) == 7
    assert not redis_record.alive and not extra.alive
    assert_gone(the_lab)


def test_down_of_a_missing_lab_is_a_no_op(ns_prefix: str) -> None:
    name = lab_name(ns_prefix)
    out = icegate("lab", "down", "--name", name)
    assert out.returncode == 0 and "nothing to remove" in out.stdout
    assert Lab(LabConfig(name=name)).down().nothing
    assert icegate("lab", "status", "--name", name).stdout.startswith(f"lab {name}: down")


def test_down_never_signals_a_recycled_pid(lab: Lab, procs: Processes) -> None:
    bystander = procs.start(["sleep", "600"], stdout=subprocess.DEVNULL)
    real_ticks = int(Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    # Two forged records: the bystander's pid with another start time, and with the right
    # start time but a different program. Neither may be signalled.
    for name, ticks, argv in (
        ("recycled", real_ticks + 1, ["sleep", "600"]),
        ("other", real_ticks, ["redis-x"]),
    ):
        record = {
            "name": name,
            "namespace": lab.namespace("c1"),
            "argv": argv,
            "pid": bystander.pid,
            "start_ticks": ticks,
            "log": str(lab.dir / f"{name}.log"),
            "started_at": time.time(),
        }
        (lab.dir / f"{name}.json").write_text(json.dumps(record))
        assert lab.process(name) is not None and not lab.process(name).alive  # type: ignore[union-attr]
    gone = lab.down()
    assert "recycled" not in gone.processes and "other" not in gone.processes
    assert bystander.poll() is None
    assert_gone(lab)


def test_down_spares_the_shell_it_runs_in(lab: Lab) -> None:
    """`nsenter --net=... sh` then `lab down` inside: the lab goes, the shell survives."""
    script = f"{ICEGATE[0]} lab down --name {lab.name} && echo shell-survived"
    out = subprocess.run(
        lab.command("relay", ["sh", "-c", script]), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "shell-survived" in out.stdout, out.stderr
    assert_gone(lab)


def test_leftover_pins_block_up_until_down(ns_prefix: str) -> None:
    the_lab = Lab(LabConfig(name=lab_name(ns_prefix)))
    stale = BPFFS / "icegate" / f"{the_lab.name}-relay"
    stale.mkdir(parents=True)
    try:
        with pytest.raises(LinkError, match=str(stale)):
            the_lab.up()
        assert netns.names(ns_prefix) == []
        assert the_lab.down().pins == (str(stale),)
    finally:
        if stale.exists():
            stale.rmdir()
    assert_gone(the_lab)


# ---- crashes -----------------------------------------------------------------------------


def test_down_after_up_was_killed_mid_build(ns_prefix: str) -> None:
    name = lab_name(ns_prefix)
    proc = subprocess.Popen(
        [*ICEGATE, "lab", "up", "--name", name],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "addresses and routes" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert netns.names(f"{name}-"), "the kill came too late to leave a partial lab"
    assert Lab.load(name).status()["state"] in ("partial", "building")
    gone = icegate("lab", "down", "--name", name)
    assert "removing" in gone.stderr
    assert_gone(Lab(LabConfig(name=name)))


def test_down_without_records_finds_processes_by_namespace(ns_prefix: str) -> None:
    name = lab_name(ns_prefix)
    icegate("lab", "up", "--name", name)
    the_lab = Lab.load(name)
    redis_record = the_lab.process("redis")
    assert redis_record is not None and redis_record.alive
    # A crash that lost the records (or a process someone started by hand with nsenter).
    shutil.rmtree(the_lab.dir)
    gone = Lab(LabConfig(name=name)).down()
    assert redis_record.pid in gone.strays and not redis_record.alive
    assert len(gone.namespaces) == 7
    assert_gone(the_lab)


# ---- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, field",
    [
        ({"name": "bad-name"}, "lab.name"),
        ({"public": {"vips": ["192.0.2.300"]}}, "lab.public.vips[0]"),
        ({"public": {"vips": ["2001:db8::1"]}}, "lab.public.vips[0]"),
        ({"private": {"mtu": 1500}}, "lab.private.mtu"),
        ({"private": {"redis_address": "10.71.0.1"}}, "lab.private.redis_address"),
        (
            {"transceivers": [{"name": "tx1", "address": "10.9.0.1", "index": 1}]},
            "lab.transceivers[0].address",
        ),
        (
            {
                "transceivers": [
                    {"name": "a", "address": "10.70.0.5", "index": 1},
                    {"name": "a", "address": "10.70.0.6", "index": 2},
                ]
            },
            "lab.transceivers[1].name",
        ),
        (
            {"clients": [{"name": "relay", "address": "100.64.9.2", "gateway": "100.64.9.1"}]},
            "lab.clients[0].name",
        ),
        (
            {"clients": [{"name": "c9", "address": "10.70.0.50", "gateway": "10.70.0.51"}]},
            "lab.clients[0].address",
        ),
        ({"client_latency_ms": -1}, "lab.client_latency_ms"),
        ({"colour": "blue"}, "lab.colour"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, section: dict[str, Any], field: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(json.dumps({"lab": section}))  # JSON is YAML
    with pytest.raises(ConfigError) as caught:
        load_lab_config(path)
    assert caught.value.field == field


def test_cli_reports_a_bad_config_and_builds_nothing(tmp_path: Path, ns_prefix: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(f"lab:\n  name: {lab_name(ns_prefix)}\n  private:\n    mtu: 1500\n")
    out = icegate("lab", "up", "--config", str(path), check=False)
    assert out.returncode == 1 and "lab.private.mtu" in out.stderr
    assert netns.names(ns_prefix) == []


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("lab:\n  name: icgx\n  public:\n    vips: [192.0.2.10, 198.51.100.7]\n")
    cfg = load_lab_config(path, {"client_latency_ms": 20.0, "name": None})
    assert cfg.name == "icgx" and cfg.public.vips == ("192.0.2.10", "198.51.100.7")
    assert cfg.client_latency_ms == 20.0
    assert len(Lab(cfg).relay_config().vips) == 2


def test_custom_topology(ns_prefix: str) -> None:
    """One client, one transceiver, a second VIP outside the public subnet (routed by inet)."""
    cfg = load_lab_config(
        None,
        {
            "name": lab_name(ns_prefix),
            "clients": [{"name": "alice", "address": "100.80.0.2", "gateway": "100.80.0.1"}],
            "transceivers": [{"name": "txa", "address": "10.70.0.21", "index": 7}],
            "public": {"vips": ["192.0.2.10", "198.51.100.7"]},
            "private": {"mtu": 9000},
            "client_latency_ms": 5.0,
        },
    )
    with Lab(cfg) as the_lab:
        for vip in ("192.0.2.10", "198.51.100.7"):
            the_lab.run("alice", ["ping", "-c", "1", "-W", "2", vip])
        the_lab.run("txa", ["redis-cli", "-h", "10.70.0.100", "ping"])
        assert df_ping(the_lab, 9000, dst="10.70.0.21") and not df_ping(the_lab, 9001, dst="10.70.0.21")
        info = the_lab.status()
        assert set(info["hosts"]) == {"inet", "relay", "dc", "alice", "txa"}
        assert ("198.51.100.7/32", "192.0.2.2", "pub") in routes(info, "inet")
        assert info["netem"]["requested_ms"] == 5.0 and info["netem"]["applied"] is info["netem"]["available"]
        assert [t.index for t in the_lab.transceivers()] == [7]
        assert any("native XDP on priv0 needs an xdp.frags program" in n for n in info["notes"])
    assert_gone(the_lab)
