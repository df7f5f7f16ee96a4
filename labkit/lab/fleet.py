"""The relay fleet in the lab: N relay nodes behind the VIPs through one ECMP route.

The router (``inet``) reaches every VIP through a multipath route over the nodes' public
addresses, hashed on the 5-tuple (``net.ipv4.fib_multipath_hash_policy=1``, an L4 hash, as
an anycast/ECMP front or a cloud L4 balancer does). Two flavours (``LabConfig.ecmp``):

- ``threshold``: a plain multipath route (``ip route ... nexthop ... nexthop``), the kernel's
  hash-threshold selection. Removing a node re-cuts every range: flows of *surviving* nodes
  move too (RFC 2992 §4: on average half of them with three nodes).
- ``resilient``: a resilient nexthop group (``ip nexthop ... type resilient``), a table of
  hash buckets: removing a node re-assigns only its own buckets, the consistent hashing a
  production front (Maglev-style balancers, resilient ECMP in switches) gives.

Node 1 is the lab's ``relay`` host; node k >= 2 is ``relay<k>`` with its own public link
``pub<k>`` (198.18.k.0/24) and a port on the data-centre bridge (tunnel 10.70.0.k). Each
node runs its own ``icegate relay run`` and shares the lab's Redis; nothing coordinates them.

Node events as the tests and ``bench/fleet_node_loss.py`` drive them: :func:`kill` (SIGKILL
the control plane, withdraw the node's next hop at once as BFD would, delete the namespace:
its program, maps and links vanish), :func:`withdraw`/:func:`restore` (the routing layer
stops/starts sending to a node that is alive, e.g. once its ``/readyz`` fails when draining)
and :func:`add_node` (plumb one more node while the lab runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from icegate import netns
from icegate.errors import LinkError
from labkit.lab import kernel
from labkit.lab.config import LabConfig
from labkit.lab.processes import LabProcess
from labkit.lab.topology import PUBLIC_IF, ROUTER_PUBLIC_IF, Topology, plan


class Lab(Protocol):
    """What this module needs of :class:`labkit.lab.core.Lab` (which imports this module)."""

    config: LabConfig
    topology: Topology

    @property
    def prefix(self) -> str: ...
    def namespace(self, host: str) -> str: ...
    def run(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str: ...
    def processes(self) -> list[LabProcess]: ...
    def save_state(self) -> None: ...


GROUP_ID = 1000  # the resilient group; node k's nexthop object is id k
BUCKETS = 128
HASH_POLICY = "net.ipv4.fib_multipath_hash_policy"


def router_if(node: int) -> str:
    """The router's interface towards node ``node``."""
    return ROUTER_PUBLIC_IF if node == 1 else f"pub{node}"


def install(lab: Lab, nodes: list[int] | None = None) -> None:
    """L4 hash, then the VIP route over ``nodes`` (default: every node)."""
    inet = lab.namespace("inet")
    kernel.sysctl(inet, HASH_POLICY, "1")
    # Replies leave each node with the VIP as source on that node's link: loose reverse-path.
    for scope in ("all", "default"):
        kernel.sysctl(inet, f"net.ipv4.conf.{scope}.rp_filter", "0")
    members = nodes if nodes is not None else list(range(1, lab.config.relays + 1))
    if lab.config.ecmp == "resilient":
        for k in members:
            _nexthop(lab, k)
    set_members(lab, members)


def _nexthop(lab: Lab, node: int) -> None:
    via = lab.config.relay_public(node)[0]
    lab.run("inet", ["ip", "nexthop", "replace", "id", str(node), "via", via, "dev", router_if(node)])


def set_members(lab: Lab, nodes: list[int]) -> None:
    """Point the VIP route at exactly ``nodes``."""
    if not nodes:
        raise LinkError("an ECMP route needs at least one node")
    cfg = lab.config
    for vip in cfg.public.vips:
        if cfg.ecmp == "resilient":
            group = "/".join(str(k) for k in sorted(nodes))
            verb = "replace" if _group_exists(lab) else "add"
            lab.run("inet", ["ip", "nexthop", verb, "id", str(GROUP_ID), "group", group,
                             "type", "resilient", "buckets", str(BUCKETS)])  # fmt: skip
            lab.run("inet", ["ip", "route", "replace", f"{vip}/32", "nhid", str(GROUP_ID)])
        else:
            hops: list[str] = []
            for k in sorted(nodes):
                hops += ["nexthop", "via", cfg.relay_public(k)[0], "dev", router_if(k)]
            lab.run("inet", ["ip", "route", "replace", f"{vip}/32", *hops])


def _group_exists(lab: Lab) -> bool:
    return bool(lab.run("inet", ["ip", "nexthop", "show", "id", str(GROUP_ID)], check=False).strip())


def members(lab: Lab) -> list[int]:
    """The nodes the first VIP's route sends to now (live next hops only)."""
    cfg = lab.config
    vip = cfg.public.vips[0]
    by_via = {cfg.relay_public(k)[0]: k for k in range(1, cfg.relays + 1)}
    if cfg.ecmp == "resilient":
        text = lab.run("inet", ["ip", "nexthop", "show", "id", str(GROUP_ID)], check=False)
        words = text.split()
        if "group" not in words:
            return []
        return sorted(int(part.split(",")[0]) for part in words[words.index("group") + 1].split("/"))
    text = lab.run("inet", ["ip", "route", "show", f"{vip}/32"], check=False)
    found = []
    for line in text.splitlines():
        words = line.split()
        if "via" in words and "dead" not in words and "linkdown" not in words:
            k = by_via.get(words[words.index("via") + 1])
            if k is not None:
                found.append(k)
    return sorted(set(found))


def withdraw(lab: Lab, node: int) -> None:
    """The routing layer stops sending to ``node`` (it stays up): flows rehash to the others."""
    remaining = [k for k in members(lab) if k != node]
    if not remaining:
        raise LinkError(f"node {node} is the last one in the route")
    if lab.config.ecmp == "resilient":
        # Deleting the next hop takes it out of the group at once and hands only its buckets
        # to the others (replacing the group's member list would leave them to the upkeep timer).
        lab.run("inet", ["ip", "nexthop", "del", "id", str(node)])
    else:
        set_members(lab, remaining)


def restore(lab: Lab, node: int) -> None:
    """``node`` joins the route (again)."""
    if lab.config.ecmp == "resilient":
        _nexthop(lab, node)
    set_members(lab, sorted({*members(lab), node}))


def kill(lab: Lab, node: int) -> None:
    """A node dies: SIGKILL its processes, then delete its namespace (its links go, the router
    drops its next hop). Node 1 (``relay``) cannot be killed: the lab's single-relay tooling
    expects it."""
    if node == 1:
        raise LinkError("node 1 is the lab's relay host; kill node 2 or higher")
    host = lab.config.relay_host(node)
    ns = lab.namespace(host)
    pids = [r.pid for r in lab.processes() if r.namespace == ns and r.alive]
    for pid in [*pids, *kernel.pids_in([ns])]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # The routing layer notices at once (BFD-like; production adds its detection time). Without
    # this, deleting the link would take the whole multipath route with it (the kernel drops a
    # multipath route when one next hop's device goes away) and the VIP would fall back to ARP.
    withdraw(lab, node)
    netns.remove(ns)


def add_node(lab: Lab) -> int:
    """Plumb node N+1 while the lab runs (not yet in the route: :func:`restore` adds it once its
    relay is ready). Returns its number."""
    node = lab.config.relays + 1
    grown = replace(lab.config, relays=node)
    grown.validate("lab")
    topo = plan(grown)
    host, router = grown.relay_host(node), router_if(node)
    lab.config = grown
    lab.topology = topo
    ns = lab.namespace(host)
    netns.create(ns)
    for scope in ("all", "default"):
        kernel.sysctl(ns, f"net.ipv6.conf.{scope}.disable_ipv6", "1", missing_ok=True)
    wires = [w for w in topo.wires if host in (w.a, w.b)]
    for w in wires:
        netns.veth(lab.namespace(w.a), w.a_if, lab.namespace(w.b), w.b_if, mtu=w.mtu)
    dc = lab.namespace("dc")
    with netns.ns(dc) as h:
        h.link("set", index=netns.index(h, host), master=netns.index(h, "br0"))
    for a in topo.addresses:
        if a.host == host or (a.host == "inet" and a.ifname == router):
            netns.address(lab.namespace(a.host), a.ifname, f"{a.address}/{a.prefixlen}")
    for r in topo.routes:
        if r.host == host:
            netns.route(ns, r.dst, gateway=r.gateway)
    kernel.set_offloads(ns, [(w.a_if, False) for w in wires])
    for w in wires:
        kernel.set_offloads(lab.namespace(w.b), [(w.b_if, w.b_gro)])
    for n in topo.neighbours:
        if n.host == host:
            netns.neighbour(ns, n.ifname, n.ip, netns.mac_of(lab.namespace(n.peer), n.peer_if))
    lab.save_state()
    return node


def describe(lab: Lab) -> dict[str, object]:
    """The fleet part of ``lab status``."""
    cfg = lab.config
    present = set(netns.names(lab.prefix))
    nodes = []
    for k in range(1, cfg.relays + 1):
        host = cfg.relay_host(k)
        nodes.append(
            {
                "node": k,
                "host": host,
                "name": cfg.relay_node_name(k),
                "exists": lab.namespace(host) in present,
                "public": cfg.relay_public(k)[0],
                "tunnel": cfg.relay_tunnel(k),
                "router_if": router_if(k),
                "public_if": PUBLIC_IF,
            }
        )
    routed = members(lab) if lab.namespace("inet") in present else []
    return {"ecmp": cfg.ecmp, "hash_policy": "l4", "routed": routed, "nodes": nodes}
