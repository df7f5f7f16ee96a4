"""The lab's configuration: YAML section ``lab`` + flags -> :class:`LabConfig`.

Every name and address of the topology lives here, with defaults that match
``docs/LAB.md``. The lab name prefixes every namespace (``<name>-relay``) and the
relay's pin directory, so several labs (one per test) can exist side by side; it may
not contain ``-`` because ``-`` separates the lab name from the host name, and a
teardown finds a crashed lab's leftovers by the prefix ``<name>-``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from icegate.config import Address, Port, load
from icegate.errors import ConfigError
from icegate.geneve import GENEVE_PORT
from icegate.token import MAX_CLUSTER, MAX_INDEX

DEFAULT_NAME = "icg"
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# Host names used by the fixed part of the topology (and interface names on the router).
FIXED_HOSTS = ("inet", "relay", "dc")
RESERVED_NAMES = (*FIXED_HOSTS, "pub", "lo", "br0")
VIP_PORT = 3478
SIGNALING_PORT = 8080
REDIS_PORT = 6379
GENEVE_IPV4_OVERHEAD = 36  # outer IPv4 (20) + UDP (8) + Geneve base header (8), RFC 8926 §3.4
# veth refuses a native XDP program that is not xdp.frags-aware when the *peer's* MTU
# exceeds one page minus headroom and skb_shared_info: measured 3506 on x86-64 with
# 4 KiB pages, kernel 6.18 ("veth: Peer MTU is too large to set XDP"). The private
# network therefore defaults to 3500: jumbo enough for Geneve, native-XDP friendly.
VETH_NATIVE_XDP_MAX_MTU = 3506
# The relay fleet (docs/SCALING.md): node 1 is host "relay" (the single relay of a plain lab),
# node k >= 2 is host "relay<k>" on its own public link 198.18.<k>.0/24 to the router.
MAX_RELAYS = 8
FLEET_PUBLIC_NET = "198.18.{k}.0/24"


@dataclass(frozen=True)
class ClientConfig:
    """A client host on its own /prefixlen behind the ``inet`` router (which owns ``gateway``)."""

    name: str
    address: Address
    gateway: Address
    prefixlen: int = 24


@dataclass(frozen=True)
class TransceiverHostConfig:
    """A transceiver host on the private network; ``index`` is its index in the cluster."""

    name: str
    address: Address
    index: int


@dataclass(frozen=True)
class PublicConfig:
    """The relay's public side: ``pub0`` on a link to the ``inet`` router."""

    relay_address: Address = "192.0.2.2"
    gateway: Address = "192.0.2.1"
    prefixlen: int = 24
    vips: tuple[Address, ...] = ("192.0.2.10",)
    vip_port: Port = VIP_PORT
    mtu: int = 1500


@dataclass(frozen=True)
class PrivateConfig:
    """The data-centre network: one bridge joining relay ``priv0``, transceivers, router and Redis."""

    relay_address: Address = "10.70.0.1"
    router_address: Address = "10.70.0.254"
    redis_address: Address = "10.70.0.100"
    prefixlen: int = 24
    mtu: int = 3500  # > public MTU + Geneve, <= VETH_NATIVE_XDP_MAX_MTU (see above)
    tunnel_port: Port = GENEVE_PORT
    signaling_port: Port = SIGNALING_PORT
    redis_port: Port = REDIS_PORT


DEFAULT_CLIENTS = (
    ClientConfig("c1", "100.64.1.2", "100.64.1.1"),
    ClientConfig("c2", "100.64.2.2", "100.64.2.1"),
)
DEFAULT_TRANSCEIVERS = (
    TransceiverHostConfig("tx1", "10.70.0.11", 1),
    TransceiverHostConfig("tx2", "10.70.0.12", 2),
)


def _ipv4(path: str, value: str) -> ipaddress.IPv4Address:
    addr = ipaddress.ip_address(value)
    if not isinstance(addr, ipaddress.IPv4Address):
        raise ConfigError(path, f"the lab is IPv4 only, got {value}")
    return addr


def _network(path: str, address: str, prefixlen: int) -> ipaddress.IPv4Network:
    if not 8 <= prefixlen <= 30:
        raise ConfigError(path, f"expected a prefix length 8..30, got {prefixlen}")
    return ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)


def _inside(path: str, value: str, net: ipaddress.IPv4Network) -> None:
    addr = _ipv4(path, value)
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise ConfigError(path, f"{value} is not a host address in {net}")


def _host_name(path: str, name: str) -> None:
    if not HOST_NAME_RE.match(name):
        raise ConfigError(path, f"must match {HOST_NAME_RE.pattern}, got {name!r}")
    if name in RESERVED_NAMES:
        raise ConfigError(path, f"{name!r} is reserved ({', '.join(RESERVED_NAMES)})")


@dataclass(frozen=True)
class LabConfig:
    name: str = DEFAULT_NAME
    clients: tuple[ClientConfig, ...] = DEFAULT_CLIENTS
    public: PublicConfig = field(default_factory=PublicConfig)
    private: PrivateConfig = field(default_factory=PrivateConfig)
    cluster: int = 1
    transceivers: tuple[TransceiverHostConfig, ...] = DEFAULT_TRANSCEIVERS
    region: str = "lab"  # Redis key region shared by the lab's relay and transceivers
    # One-way delay added on each client link (both directions) with netem; skipped, and
    # reported by `lab status`, when the kernel has no netem qdisc.
    client_latency_ms: float = 0.0
    # Permanent neighbour entries on the relay (gateway, transceivers) so that the XDP
    # program's bpf_fib_lookup succeeds on the very first packet instead of NO_NEIGH.
    static_neighbours: bool = True
    # Relay nodes behind the VIPs: more than one makes the router reach the VIPs through an
    # ECMP route with an L4 hash (labkit/lab/fleet.py); ``ecmp`` picks plain hash-threshold
    # multipath or a resilient nexthop group (consistent hashing: a lost node moves only its flows).
    relays: int = 1
    ecmp: Literal["threshold", "resilient"] = "threshold"

    def validate(self, path: str) -> None:
        if not LAB_NAME_RE.match(self.name):
            raise ConfigError(
                f"{path}.name",
                f"must be 1-12 lowercase letters/digits, starting with a letter, no '-'; got {self.name!r}",
            )
        self._validate_public(f"{path}.public")
        self._validate_private(f"{path}.private")
        nets = [
            (
                "public",
                _network(f"{path}.public.prefixlen", self.public.relay_address, self.public.prefixlen),
            ),
            ("private", self.private_network),
        ]
        if not self.clients:
            raise ConfigError(f"{path}.clients", "at least one client is required")
        for i, client in enumerate(self.clients):
            where = f"{path}.clients[{i}]"
            _host_name(f"{where}.name", client.name)
            net = _network(f"{where}.prefixlen", client.address, client.prefixlen)
            _inside(f"{where}.address", client.address, net)
            _inside(f"{where}.gateway", client.gateway, net)
            if client.gateway == client.address:
                raise ConfigError(f"{where}.gateway", "must differ from the client's address")
            for other, other_net in nets:
                if net.overlaps(other_net):
                    raise ConfigError(f"{where}.address", f"{net} overlaps the {other} network {other_net}")
            nets.append((f"client {client.name}", net))
        if not self.transceivers:
            raise ConfigError(f"{path}.transceivers", "at least one transceiver is required")
        if not 0 <= self.cluster <= MAX_CLUSTER:
            raise ConfigError(f"{path}.cluster", f"expected 0..{MAX_CLUSTER}, got {self.cluster}")
        taken = {self.private.relay_address, self.private.router_address, self.private.redis_address}
        indexes: set[int] = set()
        for i, tx in enumerate(self.transceivers):
            where = f"{path}.transceivers[{i}]"
            _host_name(f"{where}.name", tx.name)
            _inside(f"{where}.address", tx.address, self.private_network)
            if tx.address in taken:
                raise ConfigError(f"{where}.address", f"{tx.address} is already used on the private network")
            taken.add(tx.address)
            if not 1 <= tx.index <= MAX_INDEX or tx.index in indexes:
                raise ConfigError(
                    f"{where}.index", f"expected a distinct index 1..{MAX_INDEX}, got {tx.index}"
                )
            indexes.add(tx.index)
        self._validate_fleet(path, taken)
        seen: set[str] = set(self.fleet_hosts)
        for i, host in enumerate(
            self.host_names[len(FIXED_HOSTS) : len(FIXED_HOSTS) + len(self.clients) + len(self.transceivers)]
        ):
            if host in seen:
                kind, j = ("clients", i) if i < len(self.clients) else ("transceivers", i - len(self.clients))
                raise ConfigError(f"{path}.{kind}[{j}].name", f"host name {host!r} is used twice")
            seen.add(host)
        if not self.region or ":" in self.region or "*" in self.region:
            raise ConfigError(f"{path}.region", f"must be non-empty without ':' or '*', got {self.region!r}")
        if not 0 <= self.client_latency_ms <= 10_000:
            raise ConfigError(f"{path}.client_latency_ms", f"expected 0..10000, got {self.client_latency_ms}")

    def _validate_fleet(self, path: str, taken: set[str]) -> None:
        if not 1 <= self.relays <= MAX_RELAYS:
            raise ConfigError(f"{path}.relays", f"expected 1..{MAX_RELAYS}, got {self.relays}")
        if self.ecmp not in ("threshold", "resilient"):
            raise ConfigError(f"{path}.ecmp", f"expected threshold or resilient, got {self.ecmp!r}")
        for k in range(2, (MAX_RELAYS if self.relays > 1 else 1) + 1):  # nodes that may join too
            tunnel = self.relay_tunnel(k)
            if ipaddress.ip_address(tunnel) not in self.private_network or tunnel in taken:
                raise ConfigError(
                    f"{path}.relays",
                    f"relay node {k}'s tunnel address {tunnel} is taken or outside the network",
                )
            taken.add(tunnel)

    def _validate_public(self, path: str) -> None:
        pub = self.public
        net = _network(f"{path}.prefixlen", pub.relay_address, pub.prefixlen)
        _inside(f"{path}.relay_address", pub.relay_address, net)
        _inside(f"{path}.gateway", pub.gateway, net)
        if pub.gateway == pub.relay_address:
            raise ConfigError(f"{path}.gateway", "must differ from relay_address")
        if not 576 <= pub.mtu <= 9000:
            raise ConfigError(f"{path}.mtu", f"expected 576..9000, got {pub.mtu}")
        if not pub.vips:
            raise ConfigError(f"{path}.vips", "at least one VIP is required")
        for i, vip in enumerate(pub.vips):
            _ipv4(f"{path}.vips[{i}]", vip)
            if vip in (pub.relay_address, pub.gateway) or vip in pub.vips[:i]:
                raise ConfigError(f"{path}.vips[{i}]", f"{vip} is already used")

    def _validate_private(self, path: str) -> None:
        priv = self.private
        net = _network(f"{path}.prefixlen", priv.relay_address, priv.prefixlen)
        for name in ("relay_address", "router_address", "redis_address"):
            _inside(f"{path}.{name}", getattr(priv, name), net)
        if len({priv.relay_address, priv.router_address, priv.redis_address}) != 3:
            raise ConfigError(f"{path}.router_address", "relay, router and Redis addresses must differ")
        if not self.public.mtu + GENEVE_IPV4_OVERHEAD <= priv.mtu <= 65535:
            raise ConfigError(
                f"{path}.mtu",
                f"must be at least public.mtu + {GENEVE_IPV4_OVERHEAD} (Geneve over IPv4) = "
                f"{self.public.mtu + GENEVE_IPV4_OVERHEAD}, got {priv.mtu}",
            )

    @property
    def prefix(self) -> str:
        """The prefix of every namespace (and pin directory) of this lab."""
        return f"{self.name}-"

    @property
    def relay_name(self) -> str:
        return f"{self.name}-relay"

    @property
    def host_names(self) -> tuple[str, ...]:
        return (
            *FIXED_HOSTS,
            *(c.name for c in self.clients),
            *(t.name for t in self.transceivers),
            *self.fleet_hosts,
        )

    @property
    def fleet_hosts(self) -> tuple[str, ...]:
        """The hosts of relay nodes 2..N (node 1 is ``relay``)."""
        return tuple(f"relay{k}" for k in range(2, self.relays + 1))

    def relay_host(self, node: int) -> str:
        return "relay" if node == 1 else f"relay{node}"

    def relay_node_name(self, node: int) -> str:
        """The relay's name (and pin directory) of fleet node ``node``."""
        return f"{self.name}-{self.relay_host(node)}"

    def relay_tunnel(self, node: int) -> str:
        """Node ``node``'s private (Geneve) address: the next ones after node 1's."""
        return str(ipaddress.ip_address(self.private.relay_address) + node - 1)

    def relay_public(self, node: int) -> tuple[str, str]:
        """Node ``node``'s public address and its gateway on the router."""
        if node == 1:
            return self.public.relay_address, self.public.gateway
        net = ipaddress.IPv4Network(FLEET_PUBLIC_NET.format(k=node))
        return str(net.network_address + 2), str(net.network_address + 1)

    @property
    def public_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.public.relay_address}/{self.public.prefixlen}", strict=False)

    @property
    def private_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.private.relay_address}/{self.private.prefixlen}", strict=False)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.private.redis_address}:{self.private.redis_port}/0"


def load_lab_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> LabConfig:
    """Section ``lab`` of the YAML file at ``path`` (or the defaults), flags applied, validated."""
    return load(LabConfig, path, "lab", overrides)
