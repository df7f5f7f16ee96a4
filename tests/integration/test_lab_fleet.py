"""The lab's fleet plumbing (``lab up --relays N``), without relays running: the router's ECMP
route with an L4 hash, spreading real UDP flows over the nodes, and the node events.

Each node's ``pub0`` gets a tiny counter: a UDP socket on the VIP in every node's namespace
(the VIP is local there) receives what the router's hash sends it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from icegate import netns
from labkit.lab import Lab, LabConfig
from labkit.lab import fleet as routing

VIP = ("192.0.2.10", 3478)


@pytest.fixture(params=["threshold", "resilient"])
def lab(request: pytest.FixtureRequest, ns_prefix: str) -> Iterator[Lab]:
    the_lab = Lab(LabConfig(name=ns_prefix.rstrip("-"), relays=3, ecmp=request.param))
    the_lab.up()
    try:
        yield the_lab
    finally:
        the_lab.down()


def spread(lab: Lab, nodes: list[int], flows: int = 60) -> dict[int, int]:
    """Send one datagram from each of ``flows`` source ports of c1 to the VIP; count per node."""
    sockets = {}
    for k in nodes:
        with netns.entered(lab.namespace(lab.config.relay_host(k))):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(VIP)
            s.settimeout(0.3)
            sockets[k] = s
    try:
        with netns.entered(lab.namespace("c1")):
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
            for s in senders:
                s.bind((lab.clients()[0].address, 0))
                s.sendto(b"x", VIP)
        counts = dict.fromkeys(nodes, 0)
        for k, s in sockets.items():
            try:
                while True:
                    s.recv(16)
                    counts[k] += 1
            except TimeoutError:
                pass
        for s in senders:
            s.close()
        return counts
    finally:
        for s in sockets.values():
            s.close()


def test_ecmp_spreads_flows_and_follows_node_events(lab: Lab) -> None:
    inet = lab.namespace("inet")
    assert netns.run(inet, ["sysctl", "-n", "net.ipv4.fib_multipath_hash_policy"]).strip() == "1"
    assert routing.members(lab) == [1, 2, 3]
    first = spread(lab, [1, 2, 3])
    assert sum(first.values()) == 60 and all(first.values()), first  # an L4 hash: every node gets some

    routing.withdraw(lab, 2)
    assert routing.members(lab) == [1, 3]
    after = spread(lab, [1, 3])
    assert sum(after.values()) == 60 and all(after.values()), after

    node = routing.add_node(lab)
    assert node == 4 and lab.config.relays == 4
    assert Lab.load(lab.name).config.relays == 4  # recorded in lab.json
    routing.restore(lab, 4)
    assert routing.members(lab) == [1, 3, 4]
    grown = spread(lab, [1, 3, 4])
    assert sum(grown.values()) == 60 and grown[4] > 0, grown

    routing.kill(lab, 3)
    assert routing.members(lab) == [1, 4]
    assert not netns.exists(lab.namespace("relay3"))
    survivors = spread(lab, [1, 4])
    assert sum(survivors.values()) == 60, survivors
    status = lab.status()["fleet"]
    assert status["routed"] == [1, 4] and [n["exists"] for n in status["nodes"]] == [True, True, False, True]
