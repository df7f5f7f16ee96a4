"""Helpers shared by the test tiers: real redis-server processes, owned subprocesses, ports,
namespaces removed by prefix, and the §9 vector ``state`` loaded into any map store."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis as redis_sync

from controlplane.config import RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, Flow, IfaceRoles, MapStore, RateConfig, TunnelEndpoint, Vip
from icegate import netns
from icegate.inet import addr16, from_addr16
from icegate.schema import Keys, RouteKeySet

if TYPE_CHECKING:
    import aiohttp

    from controlplane.kernel.maps import KernelStore
    from labkit.lab import Lab
    from transceiver.config import TransceiverConfig
    from transceiver.service import Transceiver
from labkit.lab.kernel import redis_server_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put_route_key(lab: Lab, key: bytes) -> None:
    """``key`` as route key 0, the current one, in the lab's Redis (from its dc namespace)."""
    with netns.entered(lab.namespace("dc")):
        r = redis_sync.Redis.from_url(lab.redis_url)
        r.hset(Keys(lab.config.region).route_keys, mapping=RouteKeySet({0: key}, 0).encode())  # type: ignore[arg-type]
        r.close()


def unique_region(prefix: str) -> str:
    """A Redis region (key prefix) no other test of any process shares: tests share one
    redis-server, and a module counter restarts when pytest imports the module twice."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    """``(status, body)`` of a GET, error statuses included; ``(0, "")`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric_sample(text: str, sample: str) -> float | None:
    """The value of ``sample`` (a name with its labels, as exposed) in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_transceiver(
    cfg: TransceiverConfig,
    scenario: Callable[[Transceiver, aiohttp.ClientSession, str], Awaitable[None]],
) -> Transceiver:
    """Start a real Transceiver (signaling and tunnel on free ports, no Redis), run
    ``scenario(service, http, signaling_url)``, stop it; the stopped service is returned."""
    import asyncio
    import dataclasses

    import aiohttp

    from transceiver.service import Transceiver

    async def main() -> Transceiver:
        # Port 0 (any free port) is not a valid configured port: replace after validation.
        service = Transceiver(dataclasses.replace(cfg, tunnel_port=0, signaling_port=0))
        await service.start()
        try:
            async with aiohttp.ClientSession() as http:
                await scenario(service, http, service.signaling_url)
        finally:
            await service.stop()
        return service

    return asyncio.run(main())


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Processes:
    """Subprocesses a test started; all are ended (by pid) when the test ends."""

    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, argv: Sequence[str], *, ns: str | None = None, **popen: Any) -> subprocess.Popen[Any]:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.STDOUT)
        proc = netns.spawn(ns, argv, **popen) if ns else subprocess.Popen(list(argv), **popen)
        self.started.append(proc)
        return proc

    def start_logged(self, argv: Sequence[str], log: Path, *, ns: str | None = None) -> subprocess.Popen[Any]:
        """:meth:`start` with stdout and stderr to the file ``log`` (read back by :func:`alive`)."""
        with log.open("w") as out:
            return self.start(argv, ns=ns, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.started.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def alive(proc: subprocess.Popen[Any], log: Path) -> bool:
    """True while ``proc`` runs; AssertionError with the tail of its ``log`` once it exited."""
    if proc.poll() is not None:
        raise AssertionError(f"{log.name} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return True


@contextlib.contextmanager
def prefixed_namespaces(prefix: str) -> Iterator[str]:
    """Yield ``prefix``; afterwards every namespace whose name starts with it is removed."""
    try:
        yield prefix
    finally:
        netns.remove_prefixed(prefix)


@dataclass
class RedisServer:
    host: str
    port: int
    proc: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@contextlib.contextmanager
def redis_server(
    procs: Processes, host: str = "127.0.0.1", port: int | None = None, ns: str | None = None
) -> Iterator[RedisServer]:
    """A real redis-server (no persistence) on ``host:port``, optionally inside namespace ``ns``."""
    port = port or free_port()
    argv = redis_server_argv(host, port, loglevel="warning")
    proc = procs.start(argv, ns=ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        cmd = ["redis-cli", "-h", host, "-p", str(port), "ping"]
        argv2 = netns.command(ns, cmd) if ns else cmd
        out = subprocess.run(argv2, capture_output=True, text=True)
        return out.stdout.strip() == "PONG"

    wait_for(ready, timeout=10, what=f"redis-server on {host}:{port}")
    try:
        yield RedisServer(host, port, proc)
    finally:
        procs.stop(proc)


def load_vector_state(store: MapStore, state: Mapping[str, Any]) -> None:
    """Apply a §9 ``state`` (tests/data/packets.json) to a store: the twin's MemoryStore or
    the kernel maps. Flows and pending flows are optional, their token tags too."""
    store.set_vips([Vip(v["address"], v["port"], v["index"]) for v in state["vips"]])
    tunnel = state["tunnel"]
    store.set_config(
        TunnelEndpoint(tunnel.get("address4"), tunnel.get("address6"), tunnel["port"]),
        RateConfig(**state["rate"]),
        IfaceRoles(),  # interface roles by name need the host's ifindexes: XdpRelay.apply
    )
    store.set_route_keys({int(k): bytes.fromhex(v) for k, v in state["route_keys"].items()})
    for b in state["backends"]:
        backend_state = BackendState[b["state"].upper()]
        store.put_backend(
            Backend(b["cluster"], b["index"], b["address"], b["port"], backend_state, b["generation"])
        )
    for name, put in (("flows", store.put_flow), ("pending", store.put_pending)):
        for f in state.get(name, []):
            put(
                (addr16(f["client"]), f["port"], f["vip_index"]),
                Flow(f["cluster"], f["index"], f.get("token_tag", 0), 1, 1),
            )


def flow_rows(items: Iterable[tuple[tuple[bytes, int, int], Flow]]) -> list[dict[str, Any]]:
    """Flows as a vector's ``expect`` lists them, in :func:`sort_flows` order."""
    rows = [
        {"client": from_addr16(addr), "port": port, "vip_index": vip, "cluster": f.cluster, "index": f.index}
        for (addr, port, vip), f in items
    ]
    return sort_flows(rows)


def sort_flows(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(flows, key=lambda d: (d["vip_index"], d["client"], d["port"]))


@contextlib.contextmanager
def pinned_relay(name: str, limits: RelayLimits | None = None) -> Iterator[KernelStore]:
    """The relay program loaded by the production loader into pins of its own, nothing
    attached, one VIP and a tunnel address configured; the pins are removed afterwards."""
    from controlplane.kernel.loader import Loader  # root tiers only

    config = RelayConfig(
        name=name,
        vips=(VipConfig("192.0.2.10"),),
        tunnel=TunnelConfig("10.70.0.1"),
        limits=limits or RelayLimits(),
    )
    relay = Loader(config)
    try:
        relay.load()
        yield relay.store()
    finally:
        relay.close()
        relay.unpin()
