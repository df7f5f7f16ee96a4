"""The next-hop cache (bpf/nexthop.h) under a stream of packets while the FIB changes.

Packets run through the real program with BPF_PROG_TEST_RUN in the relay host's
namespace, so ``bpf_fib_lookup`` answers from a real FIB and neighbour table. The
transceiver's neighbour entry changes MAC in the middle of the stream: with the control
plane's watcher (controlplane/kernel/nexthopwatch.py) running, and without it (the
program's own age bound). No packet may leave for the old MAC later than the refresh
bound after the change, and none after the first packet that used the new one. The
MTU check of DATAPATH.md section 6 is never answered from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from controlplane.kernel import libbpf
from controlplane.kernel.nexthopwatch import NexthopCache, NexthopWatch
from icegate import netns
from labkit import packets as pb
from labkit.bpf_harness import RelayHost, XdpRelay, vectors

NEXTHOP_MAX_AGE_S = 1.0  # bpf/nexthop.h NEXTHOP_MAX_AGE_NS: the bound without a control plane
SLACK_S = 0.25  # between reading the clock and the packet's run; generous on a busy machine
OLD_MAC = bytes.fromhex("020000000022")  # the topology's neighbour 10.70.0.12 (B12)
NEW_MAC = bytes.fromhex("0200000000a2")
NUD_PERMANENT = 0x80


def set_neighbour(host: RelayHost, ip: str, mac: bytes) -> None:
    with netns.ns(host.ns) as h:
        h.neigh(
            "replace",
            dst=ip,
            lladdr=":".join(f"{b:02x}" for b in mac),
            ifindex=netns.index(h, "priv0"),
            state=NUD_PERMANENT,
        )


@pytest.fixture()
def cache(xdp: XdpRelay) -> Iterator[NexthopCache]:
    state = vectors()["state"]
    xdp.apply({**state, "flows": [pb.flow(pb.C1, pb.VIP4, pb.B12)]})
    nexthops = NexthopCache(xdp.config.pin_dir)
    try:
        yield nexthops
    finally:
        set_neighbour(xdp.host, pb.B12.address, OLD_MAC)
        nexthops.bump()  # the other tests of the session see the topology of packets.json
        nexthops.close()


def stream_until_changed(xdp: XdpRelay, frame: bytes, deadline_s: float) -> list[tuple[float, bytes]]:
    """Send ``frame`` on the public side until 200 packets in a row used NEW_MAC (or the
    deadline): [(seconds since the call, destination MAC)] of each forwarded packet."""
    sent: list[tuple[float, bytes]] = []
    start = time.monotonic()
    in_a_row = 0
    with netns.entered(xdp.host.ns):
        ifindex = xdp.host.ifindex["public"]
        while in_a_row < 200 and time.monotonic() - start < deadline_s:
            t = time.monotonic() - start
            result = libbpf.prog_test_run(xdp.prog_fd, frame, ingress_ifindex=ifindex)
            assert result.retval == 4, f"not redirected: retval {result.retval}"  # XDP_REDIRECT
            dmac = result.data[:6]
            sent.append((t, dmac))
            in_a_row = in_a_row + 1 if dmac == NEW_MAC else 0
    return sent


def check_stream(sent: list[tuple[float, bytes]], bound_s: float) -> float:
    """No old MAC after the first new one, none later than ``bound_s``; returns when the
    last old-MAC packet left (0 if none did)."""
    macs = [mac for _, mac in sent]
    assert NEW_MAC in macs, f"the new neighbour was never used in {len(sent)} packets"
    first_new = macs.index(NEW_MAC)
    assert set(macs[first_new:]) == {NEW_MAC}, "a packet went back to the old next hop"
    assert set(macs[:first_new]) <= {OLD_MAC}
    last_old = sent[first_new - 1][0] if first_new else 0.0
    assert last_old <= bound_s + SLACK_S, f"old next hop used {last_old:.3f} s after the change"
    return last_old


def frame() -> bytes:
    return pb.from_client(pb.client_packet(pb.C1, pb.VIP4, pb.DTLS))


def test_the_cache_answers_established_flows(xdp: XdpRelay, cache: NexthopCache) -> None:
    before = cache.stats()
    for _ in range(20):
        assert xdp.run(frame()).stat == "FWD_FLOW"
    after = cache.stats()
    assert after["hit"] - before["hit"] >= 19  # at most the first one asked the FIB
    assert after["miss"] + after["stale"] - before["miss"] - before["stale"] <= 1


def test_watcher_refreshes_on_a_neighbour_change_under_traffic(xdp: XdpRelay, cache: NexthopCache) -> None:
    with netns.entered(xdp.host.ns):
        watch = NexthopWatch(xdp.config.pin_dir, poll_s=0.05)
        watch.start()  # the netlink socket belongs to the relay's namespace
    try:
        assert xdp.run(frame()).eth == {"src": "02:00:00:00:00:11", "dst": "02:00:00:00:00:22"}
        bumps = watch.bumps
        set_neighbour(xdp.host, pb.B12.address, NEW_MAC)
        sent = stream_until_changed(xdp, frame(), deadline_s=10)
        # The watcher's bound is netlink delivery, far inside the age bound; the age bound
        # is what this can assert without timing the machine.
        last_old = check_stream(sent, NEXTHOP_MAX_AGE_S)
        assert watch.bumps > bumps
        print(f"last packet to the old next hop {last_old * 1e3:.2f} ms after the change, {len(sent)} sent")
    finally:
        watch.stop()


def test_age_bound_without_a_control_plane(xdp: XdpRelay, cache: NexthopCache) -> None:
    assert xdp.run(frame()).stat == "FWD_FLOW"  # cached with the old MAC
    set_neighbour(xdp.host, pb.B12.address, NEW_MAC)
    sent = stream_until_changed(xdp, frame(), deadline_s=10)
    check_stream(sent, NEXTHOP_MAX_AGE_S)


def test_a_longer_packet_asks_the_fib_again(xdp: XdpRelay, cache: NexthopCache) -> None:
    """A cached answer for a short packet does not skip section 6's MTU check."""
    assert xdp.run(frame()).stat == "FWD_FLOW"
    assert xdp.run(frame()).stat == "FWD_FLOW"  # a hit now
    too_long = pb.from_client(pb.client_packet(pb.C1, pb.VIP4, pb.DTLS + bytes(1440)))
    assert xdp.run(too_long).stat == "DROP_FRAG_NEEDED"
    assert xdp.run(frame()).stat == "FWD_FLOW"
