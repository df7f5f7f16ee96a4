"""The XDP program on real veth links, native and generic mode, with real UDP traffic.

Three namespaces: a client, the relay (program attached to its public and private
veths by the production loader) and a transceiver stand-in with a plain UDP socket on
the tunnel port, all IPv4 or all IPv6::

    client cli0 198.18.0.2 ── pub0 198.18.0.1  relay  priv0 10.70.0.1 ── tx0 10.70.0.11 transceiver

The client sends a STUN binding request carrying a valid token, then a stream of DTLS-
and RTP-sized packets to VIP:3478. The transceiver decapsulates (icegate.geneve), checks
it sees the client's real address and the VIP, and answers each with Geneve whose inner
packet is VIP:3478 -> client (icegate.inet.build_udp). The client sees every answer come
from VIP:3478, and the counters match the traffic exactly (permanent neighbours, no
router solicitations; the IPv6 runs leave out the PASS counters, which see the kernel's
own MLD reports). Over IPv6 the transceiver's kernel checks the outer UDP checksum the
program computed.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import Backend, RateConfig, TunnelEndpoint, Vip
from controlplane.kernel import loader as loader_module
from controlplane.kernel.loader import Loader
from controlplane.kernel.maps import KernelStore
from controlplane.node.metrics import RelayCollector
from controlplane.operator import cli
from icegate import geneve, inet, netns, stun, token
from icegate.errors import BpfError
from labkit.lab.kernel import set_offloads
from labkit.packets import check, success

KEY = bytes(range(16))
MACS = {
    "cli0": "02:00:00:00:01:02",
    "pub0": "02:00:00:00:01:01",
    "priv0": "02:00:00:00:02:01",
    "tx0": "02:00:00:00:02:02",
}
MEDIA = [160, 172, 300, 1100] * 50  # payload sizes: RTP audio frames and DTLS handshake records
LIMITS = RelayLimits(max_flows=1024, max_pending=256, max_rate_sources=256, events_pages=8)


@dataclass(frozen=True)
class Net:
    """The addresses of one run: all IPv4, or all IPv6 (IPv6 client and transceiver)."""

    family: int
    vip: tuple[str, int]
    client: tuple[str, int]
    relay_pub: str
    tunnel: str  # the relay's private address, its Geneve endpoint
    transceiver: tuple[str, int]
    prefixlen: int


NET4 = Net(
    4, ("192.0.2.10", 3478), ("198.18.0.2", 40000), "198.18.0.1", "10.70.0.1", ("10.70.0.11", 6081), 24
)
NET6 = Net(
    6,
    ("2001:db8:1::10", 3478),
    ("2001:db8:ff::2", 40000),
    "2001:db8:ff::1",
    "fd00:70::1",
    ("fd00:70::21", 6081),
    64,
)


@dataclass
class XdpLab:
    net: Net
    relay_ns: str
    loader: Loader
    store: KernelStore
    client: socket.socket
    transceiver: socket.socket


def udp_socket(ns: str, addr: tuple[str, int]) -> socket.socket:
    """A UDP socket that lives in ``ns`` (created while the thread is in it)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(5.0)
    return sock


def build_namespaces(prefix: str, net: Net) -> tuple[str, str, str]:
    client, relay, tx = f"{prefix}cli", f"{prefix}relay", f"{prefix}tx"
    for ns in (client, relay, tx):
        netns.create(ns)
        for key in ("all", "default"):
            if net.family == 4:  # no router solicitations or MLD on the links
                netns.sysctl(ns, f"net.ipv6.conf.{key}.disable_ipv6", "1")
            else:  # addresses usable at once, no solicitations
                netns.sysctl(ns, f"net.ipv6.conf.{key}.accept_dad", "0")
                netns.sysctl(ns, f"net.ipv6.conf.{key}.router_solicitations", "0")
    if net.family == 6:  # the loader only warns about IPv6 forwarding (DATAPATH.md §6)
        netns.sysctl(relay, "net.ipv6.conf.all.forwarding", "1")
    netns.veth(client, "cli0", relay, "pub0", mtu=1500)
    netns.veth(relay, "priv0", tx, "tx0", mtu=1600)  # carries public MTU + 56 (DATAPATH.md §6)
    for ns, dev in ((client, "cli0"), (relay, "pub0"), (relay, "priv0"), (tx, "tx0")):
        netns.set_mac(ns, dev, MACS[dev])
    netns.address(client, "cli0", f"{net.client[0]}/{net.prefixlen}")
    netns.address(relay, "pub0", f"{net.relay_pub}/{net.prefixlen}")
    netns.address(relay, "priv0", f"{net.tunnel}/{net.prefixlen}")
    netns.address(tx, "tx0", f"{net.transceiver[0]}/{net.prefixlen}")
    netns.route(client, f"{net.vip[0]}/{32 if net.family == 4 else 128}", gateway=net.relay_pub)
    # Permanent neighbours: no ARP on the links, so the counters see only the test's packets.
    netns.neighbour(client, "cli0", net.relay_pub, MACS["pub0"])
    netns.neighbour(relay, "pub0", net.client[0], MACS["cli0"])
    netns.neighbour(relay, "priv0", net.transceiver[0], MACS["tx0"])
    netns.neighbour(tx, "tx0", net.tunnel, MACS["priv0"])
    # Complete checksums from the senders; GRO on the receivers, so that frames the
    # program redirects into a veth are delivered in native mode (docs/LAB.md, "Why these settings").
    set_offloads(client, [("cli0", True)])
    set_offloads(tx, [("tx0", True)])
    return client, relay, tx


def relay_config(name: str, mode: str, net: Net) -> RelayConfig:
    tunnel = TunnelConfig(address4=net.tunnel) if net.family == 4 else TunnelConfig(address6=net.tunnel)
    return RelayConfig(
        name=name,
        vips=(VipConfig(*net.vip),),
        tunnel=tunnel,
        interfaces=("pub0", "priv0"),
        xdp_mode=mode,  # type: ignore[arg-type]
        limits=LIMITS,
    )


def start_relay(relay_ns: str, config: RelayConfig, net: Net) -> Loader:
    loader = Loader(config)
    loader.load()
    with netns.entered(relay_ns):
        modes = loader.attach()
    assert modes == {"pub0": config.xdp_mode, "priv0": config.xdp_mode}
    store = loader.store()
    store.set_vips([Vip(*net.vip, 0)])
    store.set_config(TunnelEndpoint(config.tunnel.address4, config.tunnel.address6, 6081), RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(Backend(1, 1, *net.transceiver, BackendState.ACTIVE, 1))
    return loader


@pytest.fixture(
    params=[("native", NET4), ("generic", NET4), ("native", NET6), ("generic", NET6)],
    ids=["native-ipv4", "generic-ipv4", "native-ipv6", "generic-ipv6"],
)
def lab(request: pytest.FixtureRequest, ns_prefix: str) -> Iterator[XdpLab]:
    mode, net = request.param
    client_ns, relay_ns, tx_ns = build_namespaces(ns_prefix, net)
    loader = start_relay(relay_ns, relay_config(f"it-{ns_prefix.rstrip('-')}", mode, net), net)
    client = udp_socket(client_ns, net.client)
    transceiver = udp_socket(tx_ns, net.transceiver)
    try:
        yield XdpLab(net, relay_ns, loader, loader.store(), client, transceiver)
    finally:
        client.close()
        transceiver.close()
        with netns.entered(relay_ns):
            loader.detach()
        loader.close()
        loader.unpin()  # the namespaces (and their links) go with ns_prefix


def exchange(lab: XdpLab, payload: bytes, reply_for: Any) -> tuple[int, int]:
    """Client -> relay -> transceiver -> relay -> client; returns (forward, return) frame sizes."""
    net = lab.net
    lab.client.sendto(payload, net.vip)
    data, sender = lab.transceiver.recvfrom(4096)
    assert sender[0] == net.tunnel and sender[1] >= geneve.EPHEMERAL_BASE  # tunnel address, entropy port
    header, inner = geneve.decapsulate(data)
    packet = inet.parse_udp(inner)
    assert (packet.src, packet.sport, packet.dst, packet.dport) == (*net.client, *net.vip)  # the real client
    assert header.vni == 1 and packet.payload == payload
    out = geneve.encapsulate(inet.build_udp(*net.vip, *net.client, reply_for(payload)), 1)
    lab.transceiver.sendto(out, (net.tunnel, 6081))
    got, source = lab.client.recvfrom(4096)
    assert source[:2] == net.vip and got == reply_for(payload)  # the answer comes from VIP:3478
    ip_header = 20 if net.family == 4 else 40
    return 14 + ip_header + 8 + len(payload), 14 + ip_header + 8 + len(out)


def counters(lab: XdpLab) -> dict[str, tuple[int, int]]:
    """Counters that moved. With IPv6 on, the kernel's own MLD reports cross the links
    (PASS_NOT_UDP): not the test's traffic, so PASS counters are left out there."""
    moved = {Stat(i).name: c for i, c in enumerate(lab.store.counters()) if c != (0, 0)}
    if lab.net.family == 6:
        moved = {name: c for name, c in moved.items() if not name.startswith("PASS_")}
    return moved


def flow_key(net: Net) -> tuple[bytes, int, int]:
    return inet.addr16(net.client[0]), net.client[1], 0


def scrape(store: KernelStore) -> dict[str, float]:
    """/metrics of a collector over ``store``, parsed by prometheus-client's own parser:
    ``{'name{label=value,...}': value}``, labels sorted by name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(store, store, LIMITS))
    text = generate_latest(registry).decode()
    return {
        sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_stun_then_media_through_xdp(lab: XdpLab) -> None:
    ufrag = token.mint(0, KEY, 1, 1)
    request = check(ufrag)
    assert stun.first_check_ufrag(request) == ufrag.encode()
    first = exchange(lab, request, lambda _: success(lab.net.client))
    sizes = [
        exchange(lab, bytes([22 if n == 1100 else 0x80]) + bytes(n - 1), lambda p: p[::-1]) for n in MEDIA
    ]

    assert counters(lab) == {
        "FWD_NEW_FLOW": (1, first[0]),
        "FWD_CONFIRM": (1, first[1]),
        "FWD_FLOW": (len(MEDIA), sum(f for f, _ in sizes)),
        "FWD_RETURN": (len(MEDIA), sum(r for _, r in sizes)),
    }
    flow = lab.store.get_flow(flow_key(lab.net))
    assert flow is not None and (flow.cluster, flow.index) == (1, 1)
    assert (flow.packets_in, flow.packets_out) == (len(MEDIA) + 1, len(MEDIA) + 1)
    assert lab.store.get_pending(flow_key(lab.net)) is None
    scraped = scrape(lab.store)  # the collector over the kernel's per-CPU counters, as Prometheus sees it
    assert scraped["icegate_relay_packets_total{reason=flow,verdict=forward}"] == len(MEDIA)
    assert scraped["icegate_relay_bytes_total{reason=flow,verdict=forward}"] == sum(f for f, _ in sizes)
    assert scraped["icegate_relay_packets_total{reason=return,verdict=forward}"] == len(MEDIA)
    assert scraped["icegate_relay_bytes_total{reason=return,verdict=forward}"] == sum(r for _, r in sizes)
    assert scraped["icegate_relay_packets_total{reason=new_flow,verdict=forward}"] == 1
    drops = [
        v for k, v in scraped.items() if k.startswith("icegate_relay_packets_total") and "verdict=drop" in k
    ]
    assert drops and not any(drops)  # every drop reason is exported, and none moved
    assert scraped["icegate_relay_map_entries{map=flows}"] == 1
    # every forwarded packet asked the next-hop cache once (bpf/nexthop.h); the first of each
    # direction missed, later ones hit unless a route or neighbour change made the entry stale
    lookups = {
        r: scraped[f"icegate_relay_nexthop_cache_lookups_total{{result={r}}}"]
        for r in ("hit", "miss", "stale")
    }
    assert sum(lookups.values()) == 2 + 2 * len(MEDIA)
    assert lookups["miss"] >= 1 and lookups["hit"] >= 1
    assert list(lookups.values()) == lab.store.nexthop_stats()
    with netns.entered(lab.relay_ns):
        maps = loader_module.status(lab.loader.pin_dir)["maps"]
    assert maps["flows"] == {"entries": 1, "capacity": LIMITS.max_flows}
    assert maps["pending"] == {"entries": 0, "capacity": LIMITS.max_pending}
    assert (maps["vips"]["entries"], maps["backends"]["entries"]) == (1, 1)


def test_status_and_detach_find_the_program(lab: XdpLab) -> None:
    pin_dir = lab.loader.pin_dir
    with netns.entered(lab.relay_ns):
        info = loader_module.status(pin_dir)
        attached = {(a["interface"], a["mode"]) for a in info["attached"]}
        assert attached == {("pub0", lab.loader.modes["pub0"]), ("priv0", lab.loader.modes["priv0"])}
        assert {a["prog_id"] for a in info["attached"]} == {info["program"]["id"]}
        removed = loader_module.detach(pin_dir, remove_pins=False)
        assert sorted(removed) == sorted(f"xdp on {i} ({m})" for i, m in attached)
        assert loader_module.status(pin_dir)["attached"] == []
    # Detached: a packet for the VIP is no longer relayed (and nothing is counted).
    lab.client.sendto(check(token.mint(0, KEY, 1, 1)), lab.net.vip)
    lab.transceiver.settimeout(0.5)
    with pytest.raises(TimeoutError):
        lab.transceiver.recvfrom(4096)
    assert counters(lab) == {}


def xdp_programs(ns: str) -> dict[str, int]:
    """ifname -> id of the XDP program attached to it, as ``ip -n <ns> -j link`` reports."""
    links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link"], check=True, capture_output=True).stdout)
    return {link["ifname"]: link["xdp"]["prog"]["id"] for link in links if "xdp" in link}


@pytest.mark.parametrize(
    "lab", [("native", NET4), ("generic", NET4)], ids=["native-ipv4", "generic-ipv4"], indirect=True
)
def test_detach_from_the_root_namespace(lab: XdpLab) -> None:
    """``icegate relay detach`` run in the root namespace finds the program in the relay's
    namespace (recorded at attach), detaches it there and removes the pins."""
    pin_dir, mode = lab.loader.pin_dir, lab.loader.config.xdp_mode
    assert netns.identity() != netns.identity(netns.path(lab.relay_ns))  # the test runs elsewhere
    info = loader_module.status(pin_dir)
    prog_id = info["program"]["id"]
    assert info["netns"] == lab.relay_ns
    assert {(a["interface"], a["mode"], a["prog_id"]) for a in info["attached"]} == {
        ("pub0", mode, prog_id),
        ("priv0", mode, prog_id),
    }
    assert xdp_programs(lab.relay_ns) == {"pub0": prog_id, "priv0": prog_id}

    as_json = mode == "generic"  # one run each for the table and the JSON form
    result = CliRunner().invoke(
        cli.relay, ["detach", "--name", pin_dir.name, *(["--json"] if as_json else [])]
    )
    assert result.exit_code == 0, result.output
    removed = json.loads(result.output)["removed"] if as_json else result.output
    for ifname in ("pub0", "priv0"):
        assert f"xdp on {ifname} ({mode}) in netns {lab.relay_ns}" in removed
    if as_json:
        assert {"pin flows", "pin prog"} <= set(removed), removed
    assert xdp_programs(lab.relay_ns) == {}
    assert not pin_dir.exists() and not loader_module.attach_record_path(pin_dir).exists()


def test_replacing_the_program_loses_no_packet(lab: XdpLab) -> None:
    """A control-plane restart: load again over the pins, attach over the running program."""
    exchange(lab, check(token.mint(0, KEY, 1, 1)), lambda _: success(lab.net.client))
    sent = 0
    stop = threading.Event()

    def stream() -> None:
        nonlocal sent
        while not stop.is_set():
            lab.client.sendto(b"\x80" + sent.to_bytes(4, "big") + bytes(167), lab.net.vip)
            sent += 1
            time.sleep(0.0005)

    received: list[bytes] = []

    def receive() -> None:
        lab.transceiver.settimeout(1.0)
        while True:
            try:
                data, _ = lab.transceiver.recvfrom(4096)
            except TimeoutError:
                return
            received.append(data)

    sender, receiver = threading.Thread(target=stream), threading.Thread(target=receive)
    receiver.start()
    sender.start()
    try:
        time.sleep(0.3)
        old = loader_module.status(lab.loader.pin_dir)["program"]["id"]
        fresh = Loader(lab.loader.config)
        fresh.load()  # reuses every pinned map
        with netns.entered(lab.relay_ns):
            assert fresh.attach() == lab.loader.modes
            now = loader_module.status(lab.loader.pin_dir)
        assert now["program"]["id"] != old and {a["prog_id"] for a in now["attached"]} == {
            now["program"]["id"]
        }
        time.sleep(0.3)
    finally:
        stop.set()
        sender.join()
        receiver.join()
    fresh.close()
    assert sent > 100 and len(received) == sent  # every packet crossed, old program or new
    assert counters(lab)["FWD_FLOW"][0] == sent


def test_auto_falls_back_to_generic_where_native_is_missing(
    ns_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge has no driver XDP: ``auto`` attaches in generic mode and says so;
    ``native`` asked for explicitly fails with the kernel's reason."""
    ns = f"{ns_prefix}dummy"
    netns.create(ns)
    netns.run(ns, ["ip", "link", "add", "dum0", "type", "bridge"])
    netns.run(ns, ["ip", "link", "set", "dum0", "up"])
    config = RelayConfig(
        name=f"it-{ns_prefix.rstrip('-')}-dummy",
        vips=(VipConfig("192.0.2.10", 3478),),
        tunnel=TunnelConfig(address4="10.70.0.1"),
        interfaces=("dum0",),
        xdp_mode="native",
        limits=LIMITS,
    )
    loader = Loader(config)
    loader.load()
    try:
        with netns.entered(ns), pytest.raises(BpfError):
            loader.attach()
        loader.config = replace(config, xdp_mode="auto")
        with netns.entered(ns), caplog.at_level(logging.WARNING, logger="controlplane.kernel.loader"):
            assert loader.attach() == {"dum0": "generic"}
        assert "xdp native mode unavailable on dum0" in caplog.text
        assert "falling back to generic (skb) mode" in caplog.text
        with netns.entered(ns):
            info = loader_module.status(loader.pin_dir)
        assert [(a["interface"], a["mode"]) for a in info["attached"]] == [("dum0", "generic")]
    finally:
        with netns.entered(ns):
            loader.detach()
        loader.close()
        loader.unpin()
