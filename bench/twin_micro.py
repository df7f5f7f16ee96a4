"""Micro-benchmark of the userspace twin: µs per packet in the datapath, pps through sockets.

    .venv/bin/python -m bench.twin_micro [--seconds 1.0] [--json] [--no-sockets] [--out bench/results]

Datapath (no I/O, one core): ``from_client`` on a flow hit, ``from_backend`` on a flow
hit, a first STUN check (SipHash-2-4 in Python, new pending flow each time), and the
same two flow hits through ``process_frame`` (whole frames, as the shared vectors run).
Sockets: the twin in a child process on uvloop, a sender blasting 172-byte RTP-sized
datagrams at its VIP on loopback and a sink counting the Geneve datagrams that reach
the "transceiver"; reports delivered pps. Absolute numbers depend on the machine; the
benchmarks compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from controlplane.datapath.engine import Datapath
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import Backend, Flow, MemoryStore, RateConfig, TunnelEndpoint, Vip
from icegate import geneve, inet, token
from labkit.nexthop import StaticNextHop
from labkit.packets import TOPOLOGY, check

KEY = bytes(range(16))
VIP = ("192.0.2.10", 3478)
CLIENT = ("100.64.1.2", 40000)
BACKEND = ("10.70.0.11", 6081)
RTP = bytes([0x80, 111]) + bytes(170)  # 172-byte payload (B1's small packet)


def make_store(vip: tuple[str, int] = VIP, backend: tuple[str, int] = BACKEND) -> MemoryStore:
    store = MemoryStore()
    store.set_vips([Vip(*vip, 0)])
    store.set_config(TunnelEndpoint("10.70.0.1", None, 6081), RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(Backend(1, 1, *backend, BackendState.ACTIVE, 1))
    store.put_flow((inet.addr16(CLIENT[0]), CLIENT[1], 0), Flow(1, 1, 0, 0, 0))
    return store


def per_packet_us(fn: Callable[[], Any], seconds: float) -> float:
    """Median over 5 rounds of the mean µs per call."""
    fn()
    rounds = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while True:
            for _ in range(200):
                fn()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        rounds.append((now - start) / n * 1e6)
    return statistics.median(rounds)


def datapath_numbers(seconds: float) -> dict[str, float]:
    dp = Datapath(make_store(), StaticNextHop(TOPOLOGY))
    ret = geneve.encapsulate(inet.build_udp(*VIP, *CLIENT, RTP), 1)
    ufrag = token.mint(0, KEY, 1, 1, 5)
    stun = check(ufrag)
    ports = iter(range(10**9))

    def first_stun() -> None:
        result = dp.from_client("100.64.9.9", 1024 + next(ports) % 60000, *VIP, stun)
        assert result.stat in (Stat.FWD_NEW_FLOW, Stat.FWD_PENDING), repr(result.stat)

    pub = bytes.fromhex("020000000001020000000002")
    priv = bytes.fromhex("020000000011020000000021")
    frame_in = pub + b"\x08\x00" + inet.build_udp(*CLIENT, *VIP, RTP)
    frame_back = priv + b"\x08\x00" + inet.build_udp(*BACKEND, "10.70.0.1", 6081, ret)
    assert dp.process_frame(frame_in, "public").stat is Stat.FWD_FLOW
    assert dp.process_frame(frame_back, "private").stat is Stat.FWD_RETURN
    assert dp.from_client(*CLIENT, *VIP, RTP).stat is Stat.FWD_FLOW
    assert dp.from_backend(BACKEND[0], ret).stat is Stat.FWD_RETURN
    return {
        "from_client_flow_hit_us": per_packet_us(lambda: dp.from_client(*CLIENT, *VIP, RTP), seconds),
        "from_backend_return_us": per_packet_us(lambda: dp.from_backend(BACKEND[0], ret), seconds),
        "first_stun_us": per_packet_us(first_stun, seconds),
        "process_frame_flow_hit_us": per_packet_us(lambda: dp.process_frame(frame_in, "public"), seconds),
        "process_frame_return_us": per_packet_us(lambda: dp.process_frame(frame_back, "private"), seconds),
    }


def _relay(vip_port: int, tunnel_port: int, sink_port: int, ready: Any, stop: Any) -> None:
    from controlplane.config import RelayConfig, TunnelConfig, VipConfig
    from controlplane.datapath import twin

    os.sched_setaffinity(0, {0})

    async def main() -> None:
        import asyncio

        store = make_store(("127.0.0.1", vip_port), ("127.0.0.1", sink_port))
        store.set_config(TunnelEndpoint("127.0.0.1", None, tunnel_port), RateConfig())
        config = RelayConfig(
            name="bench",
            vips=(VipConfig("127.0.0.1", vip_port),),
            tunnel=TunnelConfig("127.0.0.1", None, tunnel_port),
        )
        relay = await twin.TwinRelay.start(config, store)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await relay.close()

    twin.run(main())


def socket_pps(seconds: float, rate_pps: int = 0) -> dict[str, float]:
    """The twin forwarding client datagrams on loopback: delivered pps at the sink."""
    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_relay, args=(ports[0], ports[1], sink.getsockname()[1], ready, stop))
    proc.start()
    try:
        if not ready.wait(20):
            raise RuntimeError("twin did not start")
        os.sched_setaffinity(0, {1})
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        sent = received = 0
        # the flow is keyed by the client's address: install it under the real source port
        make_flow = check(token.mint(0, KEY, 1, 1, 9))
        client.sendto(make_flow, ("127.0.0.1", ports[0]))
        sink.recv(4096)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(64):
                client.sendto(RTP, ("127.0.0.1", ports[0]))
            sent += 64
            sink.setblocking(False)
            try:
                while True:
                    sink.recv(4096)
                    received += 1
            except BlockingIOError:
                pass
        elapsed = time.perf_counter() - start
        sink.settimeout(0.5)
        try:
            while True:
                sink.recv(4096)
                received += 1
        except (TimeoutError, BlockingIOError):
            pass
        client.close()
    finally:
        stop.set()
        proc.join(10)
        sink.close()
    return {
        "sent_pps": sent / elapsed,
        "delivered_pps": received / elapsed,
        "delivered_ratio": received / max(sent, 1),
    }


NAME = "twin_micro"
LABELS = {
    "from_client_flow_hit_us": ("from_client, flow hit (forward)", "µs/packet"),
    "from_backend_return_us": ("from_backend, flow hit (return, decapsulate)", "µs/packet"),
    "first_stun_us": ("first STUN (SipHash token check, new pending flow)", "µs/packet"),
    "process_frame_flow_hit_us": ("process_frame, flow hit (whole Ethernet frame)", "µs/packet"),
    "process_frame_return_us": ("process_frame, return (whole Ethernet frame)", "µs/packet"),
    "sent_pps": ("sockets: sent to the VIP on loopback", "packets/s"),
    "delivered_pps": ("sockets: Geneve delivered to the sink", "packets/s"),
    "delivered_ratio": ("sockets: delivered / sent", "ratio"),
}


def table(results: dict[str, float]) -> str:
    rows = [(*LABELS[name], f"{v:.2f}" if v < 100 else f"{v:.0f}") for name, v in results.items()]
    return report.markdown_table(("path", "unit", "value"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--no-sockets", action="store_true", help="datapath only, no loopback run")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    results: dict[str, float] = datapath_numbers(args.seconds)
    if not args.no_sockets:
        results.update(socket_pps(max(args.seconds, 2.0)))
    report.write(NAME, {"seconds": args.seconds, "results": results}, table(results), args.out)
    print(json.dumps(results, indent=1) if args.json else table(results), end="\n" if args.json else "")


if __name__ == "__main__":
    main()
