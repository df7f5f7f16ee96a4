"""The :class:`Lab`: build, describe and tear down one lab, and run processes inside it.

State lives in two places only: the kernel (namespaces named ``<lab>-<host>``, pins
under ``/sys/fs/bpf/icegate/<lab>-*``) and ``/run/icegate/lab/<lab>/`` (``lab.json``
with the config used, one JSON record and one log per process). ``down`` relies on the
names, not on the files, so it also cleans up after a crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from controlplane.config import RelayConfig
from controlplane.kernel.loader import remove_attach_record, unpin
from icegate import netns
from icegate.config import build, merge
from icegate.errors import LinkError
from labkit.lab import fleet, geofiles, kernel
from labkit.lab.config import (
    DEFAULT_NAME,
    MAX_RELAYS,
    VETH_NATIVE_XDP_MAX_MTU,
    LabConfig,
    TransceiverHostConfig,
    load_lab_config,
)
from labkit.lab.processes import STATE_FILE, LabProcess, Registry, end, identity, reap
from labkit.lab.topology import PRIVATE_IF, PUBLIC_IF, XDP_INTERFACES, Topology, plan

RUN_DIR = Path("/run/icegate/lab")
BPFFS = Path("/sys/fs/bpf")
REDIS_PROCESS = "redis"
REDIS2_PROCESS = "redis2"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ClientSettings:
    name: str
    namespace: str
    address: str
    gateway: str
    region: str = ""
    address6: str | None = None  # second-region clients are dual-stack


@dataclass(frozen=True)
class TransceiverSettings:
    """What a transceiver in the lab needs to know (``Lab.transceivers()``)."""

    name: str  # host name, e.g. "tx1"
    namespace: str
    address: str  # its tunnel address: the Geneve socket binds here, relays send here
    tunnel_port: int
    signaling_port: int
    signaling_url: str  # http://10.70.0.11:8080
    cluster: int
    index: int
    region: str
    redis_url: str
    relay_tunnel: str  # the relay's private address, the outer source of forwarded Geneve
    vips: tuple[tuple[str, int], ...]
    relay_tunnels: tuple[str, ...] = ()  # every fleet node's private address (relay_tunnel first)
    # Two-region lab: the relays come from the catalog.
    catalog: str | None = None

    def config_section(self) -> dict[str, Any]:
        """The ``transceiver`` YAML section (``transceiver.config.TransceiverConfig``) for this host."""
        section: dict[str, Any] = {
            "cluster": self.cluster,
            "index": self.index,
            "region": self.region,
            "relays": [{"address": a, "port": p, "tunnel_port": self.tunnel_port} for a, p in self.vips],
            "tunnel_bind": self.address,
            "tunnel_port": self.tunnel_port,
            # Geneve from anywhere else is dropped
            "relay_sources": list(self.relay_tunnels or (self.relay_tunnel,)),
            "signaling_host": self.address,
            "signaling_port": self.signaling_port,
            "signaling_url": self.signaling_url,
            "redis_url": self.redis_url,
        }
        if self.catalog is not None:  # the fleet catalog names the relays (icegate.catalog)
            section["catalog"] = self.catalog
            del section["relays"]
        return section


@dataclass(frozen=True)
class Teardown:
    """What ``down`` removed."""

    name: str
    processes: tuple[str, ...]  # registered processes that were still running
    strays: tuple[int, ...]  # pids found in the lab's namespaces without a record
    namespaces: tuple[str, ...]
    pins: tuple[str, ...]
    seconds: float

    @property
    def nothing(self) -> bool:
        return not (self.processes or self.strays or self.namespaces or self.pins)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LinkError(f"lab {what} needs root (network namespaces, bpffs): run it with sudo")


class Lab:
    def __init__(
        self, config: LabConfig | None = None, *, run_dir: Path = RUN_DIR, bpffs: Path = BPFFS
    ) -> None:
        self.config = config or LabConfig()
        self.topology: Topology = plan(self.config)
        self.run_dir = run_dir
        self.bpffs = bpffs
        self.registry = Registry(self.dir)

    @classmethod
    def load(
        cls,
        name: str | None = None,
        *,
        config_path: Path | str | None = None,
        run_dir: Path = RUN_DIR,
        bpffs: Path = BPFFS,
    ) -> Lab:
        """The lab ``name`` with the configuration ``up`` recorded; without a record, from
        ``config_path`` (or the defaults) under that name."""
        config = load_lab_config(config_path, {"name": name})
        state = _read_json(run_dir / config.name / STATE_FILE)
        if state and isinstance(state.get("config"), Mapping):
            config = build(LabConfig, state["config"], "lab")
        return cls(config, run_dir=run_dir, bpffs=bpffs)

    # ---- names ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def prefix(self) -> str:
        return self.config.prefix

    @property
    def dir(self) -> Path:
        """``/run/icegate/lab/<lab>``: lab.json, process records and logs."""
        return self.run_dir / self.name

    @property
    def pin_root(self) -> Path:
        return self.bpffs / "icegate"

    @property
    def redis_url(self) -> str:
        return self.config.redis_url

    @property
    def vips(self) -> tuple[tuple[str, int], ...]:
        return tuple((vip, self.config.public.vip_port) for vip in self.config.public.vips)

    def namespace(self, host: str) -> str:
        """The namespace of ``host`` ("relay", "tx1"); a full namespace name of this lab is accepted too."""
        if host in self.config.host_names:
            return f"{self.prefix}{host}"
        if host.startswith(self.prefix) and host[len(self.prefix) :] in self.config.host_names:
            return host
        raise LinkError(f"lab {self.name} has no host {host!r} (hosts: {', '.join(self.config.host_names)})")

    def exists(self) -> bool:
        return bool(netns.names(self.prefix))

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return netns.command(self.namespace(host), argv)

    def run(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
        return netns.run(self.namespace(host), argv, check=check, timeout=timeout)

    # ---- up --------------------------------------------------------------------------
    def up(self, progress: Progress | None = None) -> None:
        """Build the lab and start Redis; on any failure (or Ctrl-C) tear down what was built."""
        say = progress or (lambda _message: None)
        require_root("up")
        leftovers = netns.names(self.prefix) + [str(p) for p in self._pins()]
        if leftovers:
            raise LinkError(
                f"lab {self.name} already exists ({', '.join(leftovers)}): "
                f"run `icegate lab down --name {self.name}` first"
            )
        started = time.monotonic()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._write_state("building")
        for note in self.notes():
            say(f"note: {note}")
        try:
            netem = self._build(say)
        except BaseException:
            say("failed: removing what was built")
            self.down()
            raise
        self._write_state("up", netem=netem, build_seconds=round(time.monotonic() - started, 3))
        say(f"lab {self.name} is up")

    def _build(self, say: Progress) -> dict[str, Any]:
        cfg, topo = self.config, self.topology
        say(f"creating {len(topo.hosts)} namespaces {self.prefix}{{{','.join(h.name for h in topo.hosts)}}}")
        for h in topo.hosts:
            ns = self.namespace(h.name)
            netns.create(ns)
            # IPv4 only: no IPv6 link-local addresses, DAD or router solicitations in captures.
            for scope in ("all", "default"):
                kernel.sysctl(ns, f"net.ipv6.conf.{scope}.disable_ipv6", "1", missing_ok=True)
        for host in topo.forwarding:
            kernel.sysctl(self.namespace(host), "net.ipv4.ip_forward", "1")

        say(f"wiring {len(topo.wires)} veth pairs and the dc bridge")
        for w in topo.wires:
            netns.veth(self.namespace(w.a), w.a_if, self.namespace(w.b), w.b_if, mtu=w.mtu)
        netns.bridge(self.namespace("dc"), "br0", topo.bridge_ports, mtu=cfg.private.mtu)
        for host, ports in topo.extra_bridges:
            netns.bridge(self.namespace(host), "br0", ports, mtu=cfg.private.mtu)
        if topo.ipv6_links:
            say(f"IPv6 on {len(topo.ipv6_links)} public links of the second region")
            for host, ifname in topo.ipv6_links:
                ns = self.namespace(host)
                for key in ("accept_dad", "router_solicitations", "disable_ipv6"):
                    kernel.sysctl(ns, f"net.ipv6.conf.{ifname}.{key}", "0")
            for host in topo.forwarding6:
                kernel.sysctl(self.namespace(host), "net.ipv6.conf.all.forwarding", "1")

        say("addresses and routes")
        for a in topo.addresses:
            netns.address(self.namespace(a.host), a.ifname, f"{a.address}/{a.prefixlen}")
        for r in topo.routes:
            netns.route(self.namespace(r.host), r.dst, gateway=r.gateway)

        say("offloads: tx checksum off everywhere, GRO on where the relay's XDP sends (see docs/LAB.md)")
        ends: dict[str, list[tuple[str, bool]]] = {}
        for w in topo.wires:
            ends.setdefault(w.a, []).append((w.a_if, False))
            ends.setdefault(w.b, []).append((w.b_if, w.b_gro))
        for host, ifnames in ends.items():
            kernel.set_offloads(self.namespace(host), ifnames)

        if topo.neighbours:
            say(f"{len(topo.neighbours)} permanent neighbour entries on the relay")
            for n in topo.neighbours:
                mac = netns.mac_of(self.namespace(n.peer), n.peer_if)
                netns.neighbour(self.namespace(n.host), n.ifname, n.ip, mac)

        available, reason = kernel.netem_available(self.namespace("inet"))
        applied = False
        if cfg.client_latency_ms > 0:
            if available:
                say(f"netem: {cfg.client_latency_ms} ms each way on client links")
                for host, ifname in topo.latency_links:
                    kernel.add_delay(self.namespace(host), ifname, cfg.client_latency_ms)
                applied = True
            else:
                say(f"netem unavailable ({reason}): client_latency_ms={cfg.client_latency_ms} not applied")

        if cfg.relays > 1:
            say(f"ECMP ({cfg.ecmp}, L4 hash) to the VIPs over {cfg.relays} relay nodes")
            fleet.install(self)

        say(f"starting redis-server on {cfg.redis_url} in {self.namespace('dc')}")
        self._start_redis()
        if cfg.second_region is not None:
            r2 = cfg.second_region
            say(f"second region {r2.region}: redis-server on {r2.redis_url} in {self.namespace('dc2')}")
            self._start_redis("dc2", r2.redis_address, REDIS2_PROCESS)
            geofiles.write_files(self)
            say(f"geo: catalog and client-location database in {self.dir}")
        return {"available": available, "reason": reason, "applied": applied}

    def _start_redis(self, host: str = "dc", address: str | None = None, name: str = REDIS_PROCESS) -> None:
        priv = self.config.private
        address = address or priv.redis_address
        argv = kernel.redis_server_argv(address, priv.redis_port, loglevel="notice", directory=str(self.dir))
        ns = self.namespace(host)
        record = self.registry.start(name, ns, argv, infra=True)
        kernel.wait_redis(ns, address, priv.redis_port, 10.0, lambda: record.alive)

    # ---- down ------------------------------------------------------------------------
    def down(
        self, progress: Progress | None = None, *, timeout: float = 3.0, keep_logs: bool = False
    ) -> Teardown:
        """End the lab's processes, remove its namespaces, pins and records. A missing lab is fine.

        Works from names alone: registered processes are ended by pid (identity-checked),
        then any process still inside a ``<lab>-*`` namespace, then the namespaces (their
        veths go with them) and ``<bpffs>/icegate/<lab>-*``.
        """
        say = progress or (lambda _message: None)
        require_root("down")
        started = time.monotonic()
        records = self.registry.all()
        ended: list[str] = []
        if records:
            say(f"ending {len(records)} registered processes")
            # Components first, then the lab's own (Redis), so they can deregister cleanly.
            ended += self.registry.stop([r for r in records if not r.infra], timeout)
            ended += self.registry.stop([r for r in records if r.infra], timeout)
        namespaces = netns.names(self.prefix)
        strays = [t for t in map(identity, kernel.pids_in(namespaces)) if t is not None]
        if strays:
            say(f"ending {len(strays)} unregistered processes inside {self.prefix}*")
            end(strays, timeout)
        if namespaces:
            say(f"removing {len(namespaces)} namespaces")
            netns.remove_prefixed(self.prefix)
        pins = self._remove_pins()
        if pins:
            say(f"removed pins {', '.join(pins)}")
        if self.dir.exists():
            if keep_logs:
                for path in self.dir.iterdir():
                    if path.suffix != ".log":
                        path.unlink()
            else:
                shutil.rmtree(self.dir)
        reap()
        return Teardown(
            name=self.name,
            processes=tuple(ended),
            strays=tuple(pid for pid, _ in strays),
            namespaces=tuple(namespaces),
            pins=tuple(pins),
            seconds=round(time.monotonic() - started, 3),
        )

    def _pins(self) -> list[Path]:
        """Pinned objects of this lab's relays: ``<bpffs>/icegate/<lab>-*``."""
        return sorted(self.pin_root.glob(f"{self.prefix}*")) if self.pin_root.is_dir() else []

    def _remove_pins(self) -> list[str]:
        removed = []
        for path in self._pins():
            if path.is_dir() and not path.is_symlink():
                unpin(path)  # also the relay's record of where it attached
            else:
                remove_attach_record(path)
                path.unlink()
            removed.append(str(path))
        return removed

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # ---- processes -------------------------------------------------------------------
    def start_process(
        self,
        name: str,
        ns: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | Path | None = None,
    ) -> LabProcess:
        """Start ``argv`` in host (or namespace) ``ns`` of the lab; ``lab down`` ends it.

        ``env`` adds to this process's environment. Output goes to ``<lab dir>/<name>.log``.
        """
        namespace = self.namespace(ns)
        if not netns.exists(namespace):
            raise LinkError(f"lab {self.name} is not up (no namespace {namespace})")
        return self.registry.start(name, namespace, argv, env, cwd=cwd)

    def stop_process(self, name: str, timeout: float = 3.0) -> bool:
        """End process ``name`` (SIGTERM, then SIGKILL after ``timeout``); False if it was not running."""
        record = self.registry.read(name)
        return bool(record and self.registry.stop([record], timeout))

    def process(self, name: str) -> LabProcess | None:
        return self.registry.read(name)

    def processes(self) -> list[LabProcess]:
        return self.registry.all()

    # ---- settings for the components ---------------------------------------------------
    def relay_section(self, node: int = 1) -> dict[str, Any]:
        """The ``relay`` YAML section for the lab's relay (``controlplane.config.RelayConfig``);
        ``node`` picks a fleet node (``lab up --relays N``)."""
        cfg = self.config
        return {
            "name": cfg.relay_node_name(node),
            "vips": [{"address": a, "port": p} for a, p in self.vips],
            "tunnel": {"address4": cfg.relay_tunnel(node), "port": cfg.private.tunnel_port},
            "interfaces": list(XDP_INTERFACES),
            # docs/SECURITY.md: interface roles and the transceivers' prefix, as in production
            "public_interfaces": [PUBLIC_IF],
            "private_interfaces": [PRIVATE_IF],
            "backend_prefixes": [str(cfg.private_network)],
            "bpffs": str(self.bpffs),
            "clusters": [cfg.cluster],
            "redis": {"url": self.redis_url, "region": cfg.region},
        }

    def relay_config(self, overrides: Mapping[str, Any] | None = None, node: int = 1) -> RelayConfig:
        """The lab relay's validated config; ``overrides`` as for :func:`icegate.config.merge`."""
        return build(RelayConfig, merge(self.relay_section(node), overrides or {}), "relay")

    def write_relay_config(self, overrides: Mapping[str, Any] | None = None, node: int = 1) -> Path:
        """Write ``<lab dir>/relay.yaml`` (``relay<k>.yaml`` for fleet node k, for ``icegate
        relay run --config``) and return its path."""
        self.relay_config(overrides, node)  # validate before writing
        path = self.dir / f"{self.config.relay_host(node)}.yaml"
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            yaml.safe_dump({"relay": merge(self.relay_section(node), overrides or {})}, sort_keys=False)
        )
        return path

    def transceivers(self) -> tuple[TransceiverSettings, ...]:
        """Every transceiver of the lab, the second region's (if any) after the first's."""
        cfg = self.config
        priv = cfg.private
        catalog = str(self.dir / geofiles.CATALOG_FILE) if cfg.second_region is not None else None
        fleet_size = MAX_RELAYS if cfg.relays > 1 else 1
        first = tuple(
            self._transceiver(
                t,
                cluster=cfg.cluster,
                region=cfg.region,
                redis_url=self.redis_url,
                relay_tunnel=priv.relay_address,
                vips=self.vips,
                # A fleet may grow while the lab runs (fleet.add_node): every node that may join.
                relay_tunnels=tuple(cfg.relay_tunnel(k) for k in range(1, fleet_size + 1)),
                catalog=catalog,
            )
            for t in cfg.transceivers
        )
        r2 = cfg.second_region
        if r2 is None:
            return first
        vips = tuple((v, cfg.public.vip_port) for r in r2.relays for v in (r.vip4, r.vip6))
        return first + tuple(
            self._transceiver(
                t,
                cluster=r2.cluster,
                region=r2.region,
                redis_url=r2.redis_url,
                relay_tunnel=r2.relays[0].tunnel,
                vips=vips,
                relay_tunnels=tuple(r.tunnel for r in r2.relays),
                catalog=catalog,
            )
            for t in r2.transceivers
        )

    def _transceiver(
        self,
        t: TransceiverHostConfig,
        *,
        cluster: int,
        region: str,
        redis_url: str,
        relay_tunnel: str,
        vips: tuple[tuple[str, int], ...],
        relay_tunnels: tuple[str, ...],
        catalog: str | None,
    ) -> TransceiverSettings:
        """Transceiver host T's settings in the private network, with its region's."""
        priv = self.config.private
        return TransceiverSettings(
            name=t.name,
            namespace=self.namespace(t.name),
            address=t.address,
            tunnel_port=priv.tunnel_port,
            signaling_port=priv.signaling_port,
            signaling_url=f"http://{t.address}:{priv.signaling_port}",
            cluster=cluster,
            index=t.index,
            region=region,
            redis_url=redis_url,
            relay_tunnel=relay_tunnel,
            vips=vips,
            relay_tunnels=relay_tunnels,
            catalog=catalog,
        )

    def transceiver(self, which: int | str) -> TransceiverSettings:
        """A transceiver by index (1, 2) or host name ("tx1")."""
        for tx in self.transceivers():
            if which in (tx.index, tx.name):
                return tx
        raise LinkError(f"lab {self.name} has no transceiver {which!r}")

    def clients(self) -> tuple[ClientSettings, ...]:
        cfg = self.config
        first = tuple(
            ClientSettings(c.name, self.namespace(c.name), c.address, c.gateway, cfg.region)
            for c in cfg.clients
        )
        r2 = cfg.second_region
        if r2 is None:
            return first
        return first + tuple(
            ClientSettings(c.name, self.namespace(c.name), c.address, c.gateway, r2.region, c.address6)
            for c in r2.clients
        )

    # ---- the second region's relays and the geo front door ------------------------------
    def region_relay_section(self, host: str) -> dict[str, Any]:
        """The ``relay`` YAML section for relay host ``host`` of the second region."""
        cfg, r2 = self.config, self.config.second_region
        relay = next((r for r in r2.relays if r.name == host), None) if r2 is not None else None
        if r2 is None or relay is None:
            raise LinkError(f"lab {self.name} has no second-region relay {host!r}")
        return {
            "name": f"{self.prefix}{relay.name}",
            "mode": relay.mode,
            "vips": [{"address": v, "port": cfg.public.vip_port} for v in (relay.vip4, relay.vip6)],
            "tunnel": {"address4": relay.tunnel, "port": cfg.private.tunnel_port},
            "interfaces": list(XDP_INTERFACES),
            "bpffs": str(self.bpffs),
            "clusters": [r2.cluster],
            "redis": {"url": r2.redis_url, "region": r2.region},
        }

    def write_region_relay_config(self, host: str, overrides: Mapping[str, Any] | None = None) -> Path:
        """Write ``<lab dir>/<host>.yaml`` for the second region's relay ``host``; return its path."""
        section = merge(self.region_relay_section(host), overrides or {})
        build(RelayConfig, section, "relay")  # validate before writing
        path = self.dir / f"{host}.yaml"
        path.write_text(yaml.safe_dump({"relay": section}, sort_keys=False))
        return path

    def front_door_urls(self) -> tuple[str, str]:
        """The geo front door's URLs (IPv4, IPv6) on the router's loopback, reachable from every client."""
        cfg = self.config
        return (
            f"http://{cfg.front_door4}:{cfg.front_door_port}",
            f"http://[{cfg.front_door6}]:{cfg.front_door_port}",
        )

    # ---- status ------------------------------------------------------------------------
    def notes(self) -> list[str]:
        """Caveats of this configuration worth telling the user."""
        cfg = self.config
        notes = []
        for side, mtu, dev in (
            ("public", cfg.public.mtu, PUBLIC_IF),
            ("private", cfg.private.mtu, PRIVATE_IF),
        ):
            if mtu > VETH_NATIVE_XDP_MAX_MTU:
                notes.append(
                    f"{side} MTU {mtu} > {VETH_NATIVE_XDP_MAX_MTU}: native XDP on {dev} needs an "
                    "xdp.frags program (veth limit); generic mode works"
                )
        return notes

    def status(self) -> dict[str, Any]:
        """Everything about the lab as the kernel and the records show it (JSON-ready)."""
        cfg, topo = self.config, self.topology
        present = netns.names(self.prefix)
        expected = [self.namespace(h.name) for h in topo.hosts]
        state = _read_json(self.dir / STATE_FILE) or {}
        hosts: dict[str, Any] = {}
        for host in topo.hosts:
            ns = self.namespace(host.name)
            entry: dict[str, Any] = {"namespace": ns, "role": host.role, "exists": ns in present}
            if ns in present:
                entry.update(kernel.read_host(ns))
                entry["forwarding"] = kernel.read_sysctl(ns, "net.ipv4.ip_forward") == "1"
                for iface in entry["interfaces"]:
                    peer = topo.peer(host.name, iface["name"])
                    iface["peer"] = f"{peer[0]}:{peer[1]}" if peer else None
            hosts[host.name] = entry
        if all(ns in present for ns in expected):
            lab_state = state.get("state", "up")
        else:
            lab_state = "partial" if present else "down"
        netem = dict(state.get("netem") or {})
        if self.namespace("inet") in present:
            netem["available"], netem["reason"] = kernel.netem_available(self.namespace("inet"))
        netem["requested_ms"] = cfg.client_latency_ms
        netem.setdefault("applied", False)
        dc = self.namespace("dc")
        relay_ns = self.namespace("relay")
        return {
            "name": self.name,
            "state": lab_state,
            "prefix": self.prefix,
            "state_dir": str(self.dir),
            "build_seconds": state.get("build_seconds"),
            "config": asdict(cfg),
            "hosts": hosts,
            "unexpected_namespaces": [ns for ns in present if ns not in expected],
            "vips": [{"address": a, "port": p} for a, p in self.vips],
            "redis": {
                "url": self.redis_url,
                "namespace": dc,
                "reachable": dc in present
                and kernel.redis_ping(dc, cfg.private.redis_address, cfg.private.redis_port),
            },
            "relay": {
                "name": cfg.relay_name,
                "namespace": relay_ns,
                "interfaces": [PUBLIC_IF, PRIVATE_IF],
                "tunnel": cfg.private.relay_address,
                "pin_dir": str(self.pin_root / cfg.relay_name),
                "pinned": (self.pin_root / cfg.relay_name).exists(),
                "xdp": {
                    i["name"]: i["xdp"]
                    for i in hosts["relay"].get("interfaces", [])
                    if i["name"] in XDP_INTERFACES
                },
            },
            "transceivers": [dataclasses.asdict(t) for t in self.transceivers()],
            "clients": [dataclasses.asdict(c) for c in self.clients()],
            "geo": geofiles.status(self),
            "processes": [p.to_json() for p in self.registry.all()],
            "netem": netem,
            "fleet": fleet.describe(self) if cfg.relays > 1 else None,
            "notes": self.notes(),
            "bpffs_mounted": os.path.ismount(self.bpffs),
        }

    def save_state(self) -> None:
        """Record the current config (a fleet node added) in ``lab.json``, keeping the rest."""
        state = _read_json(self.dir / STATE_FILE) or {"state": "up"}
        extra = {k: v for k, v in state.items() if k not in ("state", "config", "updated")}
        self._write_state(str(state.get("state", "up")), **extra)

    def _write_state(self, stage: str, **extra: Any) -> None:
        data = {"state": stage, "config": asdict(self.config), "updated": time.time(), **extra}
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.dir / STATE_FILE)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["DEFAULT_NAME", "ClientSettings", "Lab", "Teardown", "TransceiverSettings"]
