"""The userspace twin as a process of its own for the benchmarks, in the namespace it is
started in (the bench lab's relay): VIP and tunnel sockets, the sink as backend 1/1, a
confirmed flow per generator port. Prints ``ready`` once bound; ends on SIGTERM.

    python -m bench.lab.twin_proc --loop asyncio|uvloop --ports 64
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from bench.lab.netlab import BASE_PORT, GEN_IP, KEY, SINK_IP, SINK_IP2, SINK_PORT, TUNNEL_IP, VIP, VIP_PORT
from controlplane.config import RelayConfig, TunnelConfig, VipConfig
from controlplane.datapath import twin
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, Flow, MemoryStore, RateConfig, TunnelEndpoint, Vip
from icegate import inet


async def serve(ports: int) -> None:
    store = MemoryStore()
    store.set_vips([Vip(VIP, VIP_PORT, 0)])
    store.set_config(TunnelEndpoint(TUNNEL_IP, None, 6081), RateConfig())
    store.set_route_keys({0: KEY})
    store.put_backend(Backend(1, 1, SINK_IP, SINK_PORT, BackendState.ACTIVE, 1))
    store.put_backend(Backend(1, 2, SINK_IP2, SINK_PORT, BackendState.ACTIVE, 1))
    for i in range(ports):
        store.put_flow((inet.addr16(GEN_IP), BASE_PORT + i, 0), Flow(1, 1, 0, 0, 0))
    config = RelayConfig(
        name="bench-twin", vips=(VipConfig(VIP, VIP_PORT),), tunnel=TunnelConfig(TUNNEL_IP, None, 6081)
    )
    relay = await twin.TwinRelay.start(config, store)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    print("ready", flush=True)
    await done.wait()
    await relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--ports", type=int, default=64)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.ports))
    else:
        asyncio.run(serve(args.ports))


if __name__ == "__main__":
    main()
