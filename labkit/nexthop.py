"""A test double for the datapath's next hop: ``bpf_fib_lookup`` over the static
topology of the shared packet vectors (``tests/data/packets.json``, DATAPATH.md §9), the
same host the XDP harness builds in a namespace, in the kernel's order: longest-prefix
match (no route, or a local destination -> unreachable), then the egress MTU against
the IP length (``FRAG_NEEDED``), then the neighbour of the gateway or of the destination
(``NO_NEIGH``). Used by the tests and ``bench/``; the product never imports it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, NamedTuple

from controlplane.datapath.nexthop import Fib, Hop
from icegate.inet import addr16


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class _Route(NamedTuple):
    prefix: int  # in the 128-bit addr16 space (IPv4 prefixes + 96)
    network: int
    interface: str
    gateway: bytes | None  # addr16


class StaticNextHop:
    """``bpf_fib_lookup`` over a §9 topology: ``{"public": {...}, "private": {...}}``.

    Each interface has ``mac``, ``mtu``, ``address``/``address6`` (CIDR: a connected
    network, the address itself local), optional ``gateway``/``gateway6`` with
    ``gateway_mac`` and ``routes`` via the gateway, and ``neighbours`` (address -> MAC).
    """

    def __init__(self, topology: Mapping[str, Mapping[str, Any]]) -> None:
        self._routes: list[_Route] = []
        self._local: set[bytes] = set()
        self._neighbours: dict[tuple[str, bytes], bytes] = {}
        self._mac: dict[str, bytes] = {}
        self._mtu: dict[str, int] = {}
        for name, spec in topology.items():
            self._mac[name] = mac_bytes(spec["mac"])
            self._mtu[name] = int(spec["mtu"])
            for field in ("address", "address6"):
                if spec.get(field):
                    iface = ipaddress.ip_interface(spec[field])
                    self._local.add(addr16(str(iface.ip)))
                    self._add(str(iface.network), name, None)
            for field in ("gateway", "gateway6"):
                if spec.get(field):
                    self._neighbours[(name, addr16(spec[field]))] = mac_bytes(spec["gateway_mac"])
            for route in spec.get("routes", ()):
                gateway = spec["gateway6"] if ":" in route else spec["gateway"]
                self._add(route, name, addr16(gateway))
            for address, mac in spec.get("neighbours", {}).items():
                self._neighbours[(name, addr16(address))] = mac_bytes(mac)
        self._routes.sort(key=lambda r: -r.prefix)

    def _add(self, cidr: str, interface: str, gateway: bytes | None) -> None:
        net = ipaddress.ip_network(cidr)
        prefix = net.prefixlen + (96 if net.version == 4 else 0)
        network = int.from_bytes(addr16(str(net.network_address)), "big")
        self._routes.append(_Route(prefix, network, interface, gateway))

    def __call__(self, dst16: bytes, length: int, ingress: str) -> Hop:
        if dst16 in self._local:
            return Hop(Fib.UNREACHABLE)
        value = int.from_bytes(dst16, "big")
        for route in self._routes:
            if value >> (128 - route.prefix) == route.network >> (128 - route.prefix):
                break
        else:
            return Hop(Fib.UNREACHABLE)
        if length > self._mtu[route.interface]:
            return Hop(Fib.FRAG_NEEDED)
        mac = self._neighbours.get((route.interface, route.gateway or dst16))
        if mac is None:
            return Hop(Fib.NO_NEIGH)
        return Hop(Fib.OK, route.interface, self._mac[route.interface], mac)
