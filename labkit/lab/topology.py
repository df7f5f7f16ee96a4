"""The lab's topology as data: which namespaces, wires, addresses and routes a config means.

:func:`plan` is pure (no kernel calls), so the builder, ``lab status`` and the tests all
read the same description::

    c1 ─┐                      ┌─ priv0 relay pub0 ─┐
    c2 ─┼─ inet (router) ─ pub ┘   (XDP here)       │
        │     └─ dc ──────────── dc: br0 ───────────┘ (bridge: relay, inet, tx1, tx2; Redis on br0)
        │                          ├─ tx1
        │                          └─ tx2

Interface names are short and fixed per host (``eth0`` on clients and transceivers,
``pub0``/``priv0`` on the relay, the peer's host name on the router and on the bridge),
so they never depend on the lab name and always fit in 15 characters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labkit.lab.config import LabConfig

PUBLIC_IF = "pub0"
PRIVATE_IF = "priv0"
HOST_IF = "eth0"
BRIDGE = "br0"
ROUTER_PUBLIC_IF = "pub"
ROUTER_PRIVATE_IF = "dc"
XDP_INTERFACES = (PUBLIC_IF, PRIVATE_IF)


@dataclass(frozen=True)
class Host:
    name: str  # short name, e.g. "tx1"; the namespace is "<lab>-<name>"
    role: str  # client | router | relay | datacentre | transceiver


@dataclass(frozen=True)
class Wire:
    """A veth pair; ``b_gro`` when ``b`` receives frames the relay's XDP program sends (XDP_TX/redirect)."""

    a: str
    a_if: str
    b: str
    b_if: str
    mtu: int
    b_gro: bool = False


@dataclass(frozen=True)
class Addr:
    host: str
    ifname: str
    address: str
    prefixlen: int


@dataclass(frozen=True)
class Route:
    host: str
    dst: str  # "default" or a CIDR
    gateway: str


@dataclass(frozen=True)
class Neighbour:
    """A permanent neighbour entry on ``host``/``ifname`` for ``ip``, whose MAC is ``peer``'s ``peer_if``."""

    host: str
    ifname: str
    ip: str
    peer: str
    peer_if: str


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    wires: tuple[Wire, ...]
    bridge_ports: tuple[str, ...]  # interfaces of the dc host enslaved to BRIDGE
    addresses: tuple[Addr, ...]
    routes: tuple[Route, ...]
    neighbours: tuple[Neighbour, ...]
    forwarding: tuple[str, ...]  # hosts with ip_forward=1
    latency_links: tuple[tuple[str, str], ...]  # (host, ifname) whose egress gets the client delay

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def peer(self, host: str, ifname: str) -> tuple[str, str] | None:
        for wire in self.wires:
            if (wire.a, wire.a_if) == (host, ifname):
                return wire.b, wire.b_if
            if (wire.b, wire.b_if) == (host, ifname):
                return wire.a, wire.a_if
        return None

    def expected_interfaces(self, host: str) -> tuple[str, ...]:
        ends = [w.a_if for w in self.wires if w.a == host] + [w.b_if for w in self.wires if w.b == host]
        return (BRIDGE, *ends) if host == "dc" else tuple(ends)


def plan(cfg: LabConfig) -> Topology:
    pub, priv = cfg.public, cfg.private
    hosts = [Host("inet", "router"), Host("relay", "relay"), Host("dc", "datacentre")]
    hosts += [Host(c.name, "client") for c in cfg.clients]
    hosts += [Host(t.name, "transceiver") for t in cfg.transceivers]
    hosts += [Host(h, "relay") for h in cfg.fleet_hosts]

    wires = [Wire(c.name, HOST_IF, "inet", c.name, pub.mtu) for c in cfg.clients]
    wires += [
        Wire("relay", PUBLIC_IF, "inet", ROUTER_PUBLIC_IF, pub.mtu, b_gro=True),
        Wire("relay", PRIVATE_IF, "dc", "relay", priv.mtu, b_gro=True),
        Wire("inet", ROUTER_PRIVATE_IF, "dc", "inet", priv.mtu),
    ]
    wires += [Wire(t.name, HOST_IF, "dc", t.name, priv.mtu) for t in cfg.transceivers]
    # Fleet nodes 2..N: each its own public link to the router (pub<k>) and a port on the bridge.
    for k in range(2, cfg.relays + 1):
        wires += [
            Wire(f"relay{k}", PUBLIC_IF, "inet", f"pub{k}", pub.mtu, b_gro=True),
            Wire(f"relay{k}", PRIVATE_IF, "dc", f"relay{k}", priv.mtu, b_gro=True),
        ]
    bridge_ports = ("relay", "inet", *(t.name for t in cfg.transceivers), *cfg.fleet_hosts)

    addresses = [Addr(c.name, HOST_IF, c.address, c.prefixlen) for c in cfg.clients]
    addresses += [Addr("inet", c.name, c.gateway, c.prefixlen) for c in cfg.clients]
    addresses += [
        Addr("inet", ROUTER_PUBLIC_IF, pub.gateway, pub.prefixlen),
        Addr("inet", ROUTER_PRIVATE_IF, priv.router_address, priv.prefixlen),
        Addr("relay", PUBLIC_IF, pub.relay_address, pub.prefixlen),
        # The VIPs as /32 on pub0: the relay answers ARP for them and owns them locally
        # (the slow path and the userspace twin bind sockets on them).
        *(Addr("relay", PUBLIC_IF, vip, 32) for vip in pub.vips),
        Addr("relay", PRIVATE_IF, priv.relay_address, priv.prefixlen),
        Addr("dc", BRIDGE, priv.redis_address, priv.prefixlen),
    ]
    addresses += [Addr(t.name, HOST_IF, t.address, priv.prefixlen) for t in cfg.transceivers]
    for k in range(2, cfg.relays + 1):
        host, (address, gateway) = f"relay{k}", cfg.relay_public(k)
        addresses += [
            Addr("inet", f"pub{k}", gateway, 24),
            Addr(host, PUBLIC_IF, address, 24),
            *(Addr(host, PUBLIC_IF, vip, 32) for vip in pub.vips),
            Addr(host, PRIVATE_IF, cfg.relay_tunnel(k), priv.prefixlen),
        ]

    routes = [Route(c.name, "default", c.gateway) for c in cfg.clients]
    routes.append(Route("relay", "default", pub.gateway))
    # VIPs outside the public subnet are routed to the relay; those inside are found by ARP.
    # With a fleet (relays > 1) the VIPs go through one ECMP route instead (labkit/lab/fleet.py).
    if cfg.relays == 1:
        routes += [Route("inet", f"{vip}/32", pub.relay_address) for vip in pub.vips if not _in(cfg, vip)]
    routes += [Route(f"relay{k}", "default", cfg.relay_public(k)[1]) for k in range(2, cfg.relays + 1)]
    # Transceivers answer signaling through the router; Redis and the relay stay private.
    routes += [Route(t.name, "default", priv.router_address) for t in cfg.transceivers]

    neighbours: list[Neighbour] = []
    if cfg.static_neighbours:
        neighbours.append(Neighbour("relay", PUBLIC_IF, pub.gateway, "inet", ROUTER_PUBLIC_IF))
        neighbours += [Neighbour("relay", PRIVATE_IF, t.address, t.name, HOST_IF) for t in cfg.transceivers]
        for k in range(2, cfg.relays + 1):
            host = f"relay{k}"
            neighbours.append(Neighbour(host, PUBLIC_IF, cfg.relay_public(k)[1], "inet", f"pub{k}"))
            neighbours += [Neighbour(host, PRIVATE_IF, t.address, t.name, HOST_IF) for t in cfg.transceivers]

    latency = [(c.name, HOST_IF) for c in cfg.clients] + [("inet", c.name) for c in cfg.clients]
    return Topology(
        hosts=tuple(hosts),
        wires=tuple(wires),
        bridge_ports=bridge_ports,
        addresses=tuple(addresses),
        routes=tuple(routes),
        neighbours=tuple(neighbours),
        forwarding=("inet",),
        latency_links=tuple(latency),
    )


def _in(cfg: LabConfig, vip: str) -> bool:
    return ipaddress.ip_address(vip) in cfg.public_network
