"""Run the real XDP program with BPF_PROG_TEST_RUN on the relay host of DATAPATH.md §9.

:class:`RelayHost` builds the §9 topology in a network namespace (two veth pairs whose
peers sit in a second namespace, addresses, routes via the gateway, permanent
neighbours, MTUs, forwarding on), so ``bpf_fib_lookup`` answers from a real FIB.
:class:`XdpRelay` loads ``bpf/relay.c`` with the production loader into pins of its own,
applies a §9 ``state`` through :class:`KernelStore` and runs frames: each run reports
the counter that moved, the action, the egress interface, the MACs and the output
bytes, in the shape of a shared vector step (and of ``Datapath.process_frame``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from controlplane.config import RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath.engine import Datapath, FrameResult
from controlplane.datapath.layout import Stat
from controlplane.datapath.store import IfaceRoles, MemoryStore
from controlplane.kernel.libbpf import prog_test_run
from controlplane.kernel.loader import Loader
from icegate import netns
from labkit.nexthop import StaticNextHop
from labkit.support import flow_rows, load_vector_state

DATA = Path(__file__).parents[1] / "tests" / "data"  # the shared vectors (DATAPATH.md §9)
XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
TEST_LIMITS = RelayLimits(max_flows=4096, max_pending=1024, max_rate_sources=1024, events_pages=8)
# The maps a §9 "state" replaces before every case.
STATE_MAPS = (
    "flows",
    "pending",
    "rate_sources",
    "rate_global",
    "rate_slow",
    "rate_tags",
    "rate_slow_sources",
    "backends",
)


@cache
def vectors() -> dict[str, Any]:
    """tests/data/packets.json, parsed once (callers copy before changing anything)."""
    return dict(json.loads((DATA / "packets.json").read_text()))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class RelayHost:
    """The §9 topology in namespace ``<prefix>relay``; veth peers in ``<prefix>peer``."""

    def __init__(self, prefix: str, topology: Mapping[str, Mapping[str, Any]]) -> None:
        self.ns = f"{prefix}relay"
        self.peer_ns = f"{prefix}peer"
        self.topology = topology
        self.ifindex: dict[str, int] = {}  # "public" / "private" -> ifindex in self.ns
        self.by_mac: dict[str, str] = {}  # MAC -> "public" / "private"

    def build(self) -> None:
        for ns in (self.ns, self.peer_ns):
            netns.create(ns)
        for key in ("net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding"):
            netns.sysctl(self.ns, key, "1")
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            netns.sysctl(self.ns, key, "0")
        for role, spec in self.topology.items():
            ifname = spec["ifname"]
            netns.veth(self.ns, ifname, self.peer_ns, f"{ifname}p", mtu=int(spec["mtu"]))
            netns.set_mac(self.ns, ifname, spec["mac"])
            for field in ("address", "address6"):
                if spec.get(field):
                    netns.address(self.ns, ifname, spec[field])
            for family in ("ipv4", "ipv6"):
                netns.sysctl(self.ns, f"net.{family}.conf.{ifname}.forwarding", "1")
            gateways = [spec.get("gateway"), spec.get("gateway6")]
            for gw in filter(None, gateways):
                netns.neighbour(self.ns, ifname, gw, spec["gateway_mac"])
            for addr, mac in spec.get("neighbours", {}).items():
                netns.neighbour(self.ns, ifname, addr, mac)
            for net in spec.get("routes", []):
                v6 = ipaddress.ip_network(net).version == 6
                netns.route(self.ns, net, gateway=spec["gateway6"] if v6 else spec["gateway"])
            self.ifindex[role] = netns.ifindex(self.ns, ifname)
            self.by_mac[spec["mac"].lower()] = role

    def remove(self) -> None:
        for ns in (self.ns, self.peer_ns):
            netns.remove(ns)


@dataclass(frozen=True)
class Outcome:
    """One frame through XDP, as a §9 step describes it."""

    stat: str
    action: str
    egress: str | None
    eth: dict[str, str] | None
    output: str | None
    moved: list[tuple[int, int, int]]  # every counter that changed: (stat, packets, bytes)

    def step_view(self) -> dict[str, Any]:
        return {
            "stat": self.stat,
            "action": self.action,
            "egress": self.egress,
            "eth": self.eth,
            "output": self.output,
        }


def relay_config(name: str, state: Mapping[str, Any], limits: RelayLimits = TEST_LIMITS) -> RelayConfig:
    tunnel = state["tunnel"]
    return RelayConfig(
        name=name,
        vips=tuple(VipConfig(v["address"], v["port"]) for v in state["vips"]),
        tunnel=TunnelConfig(tunnel.get("address4"), tunnel.get("address6"), tunnel["port"]),
        limits=limits,
    )


class XdpRelay:
    """The program loaded by :class:`Loader` (pins of its own), run in ``host``'s namespace."""

    def __init__(self, host: RelayHost, config: RelayConfig) -> None:
        self.host = host
        self.config = config
        self.loader = Loader(config)

    def load(self) -> None:
        self.loader.load()
        self.store = self.loader.store()

    def close(self) -> None:
        self.loader.close()
        self.loader.unpin()

    @property
    def prog_fd(self) -> int:
        return self.loader.prog_fd

    def apply(self, state: Mapping[str, Any]) -> None:
        """Empty the per-case maps, then load a §9 ``state``."""
        self.store.reset(STATE_MAPS)
        load_vector_state(self.store, state)
        if state.get("roles"):  # §1 r8: ingress name -> role, as ifindexes of this host
            by_role: dict[str, list[int]] = {"public": [], "private": []}
            for name, role in state["roles"].items():
                by_role[role].append(self.host.ifindex[name])
            roles = IfaceRoles(tuple(by_role["public"]), tuple(by_role["private"]))
            self.store.set_config(self.store.tunnel(), self.store.rate_config(), roles)

    def run(self, frame: bytes, ingress: str = "public") -> Outcome:
        """One BPF_PROG_TEST_RUN of ``frame`` as if received on ``ingress``."""
        before = self.store.counters()
        with netns.entered(self.host.ns):
            result = prog_test_run(self.prog_fd, frame, ingress_ifindex=self.host.ifindex[ingress])
        after = self.store.counters()
        moved = [
            (s, a[0] - b[0], a[1] - b[1])
            for s, (a, b) in enumerate(zip(after, before, strict=True))
            if a != b
        ]
        action = XDP_ACTIONS.get(result.retval, f"retval {result.retval}")
        stat = Stat(moved[0][0]).name if len(moved) == 1 else f"counters moved: {moved}"
        if action in ("tx", "redirect"):
            out = result.data
            src = mac_text(out[6:12])
            egress = ingress if action == "tx" else self.host.by_mac.get(src, f"mac {src}")
            return Outcome(
                stat, action, egress, {"src": src, "dst": mac_text(out[:6])}, out[14:].hex(), moved
            )
        return Outcome(stat, action, None, None, None, moved)

    def flows(self) -> list[dict[str, Any]]:
        return flow_rows(self.store.flows())

    def pending(self) -> list[dict[str, Any]]:
        return flow_rows(self.store.pending())


# ---- the userspace twin on the same state and topology ----
def twin_for(state: dict[str, Any]) -> Datapath:
    store = MemoryStore()
    load_vector_state(store, state)
    return Datapath(store, StaticNextHop(vectors()["topology"]), roles=state.get("roles"))


def twin_view(result: FrameResult) -> dict[str, Any]:
    eth = None
    if result.eth_src is not None and result.eth_dst is not None:
        eth = {"src": mac_text(result.eth_src), "dst": mac_text(result.eth_dst)}
    return {
        "stat": result.stat.name,
        "action": str(result.action),
        "egress": result.egress,
        "eth": eth,
        "output": result.output.hex() if result.output is not None else None,
    }
