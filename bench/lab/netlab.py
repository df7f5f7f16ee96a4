"""The benchmarks' lab: a load generator, a relay and a sink in three namespaces, and the
relays that can sit in the middle (XDP, the twin on asyncio or uvloop, coturn, a C
recvmmsg/sendmmsg forwarder, or nothing: the kernel's own forwarding)::

    gen  cli0 198.18.0.2 ── pub0 198.18.0.1   relay   priv0 10.70.0.1 ── tx0 10.70.0.11  sink
                               VIP 192.0.2.10:3478 (on lo)

The generator (``udpbench gen``) runs pinned to CPU 0, every userspace relay and the sink
to CPU 1. All names carry the caller's prefix; :meth:`BenchLab.remove` deletes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.config import RelayConfig, RelayLimits, TunnelConfig, VipConfig
from controlplane.datapath.layout import BackendState
from controlplane.datapath.store import Backend, Flow, RateConfig, TunnelEndpoint, Vip
from controlplane.kernel.loader import Loader
from icegate import inet, netns, stun
from labkit.lab.kernel import set_offloads
from labkit.packets import attr

C_SOURCE = Path(__file__).parents[1] / "c" / "udpbench.c"
KEY = bytes(range(16))
GEN_IP, RELAY_PUB, TUNNEL_IP, SINK_IP = "198.18.0.2", "198.18.0.1", "10.70.0.1", "10.70.0.11"
SINK_IP2 = "10.70.0.12"  # a second transceiver address on the sink (B3 checks routing)
VIP, VIP_PORT, SINK_PORT, BASE_PORT = "192.0.2.10", 3478, 6081, 20000
MACS = {
    "cli0": "02:00:00:00:b1:02",
    "pub0": "02:00:00:00:b1:01",
    "priv0": "02:00:00:00:b2:01",
    "tx0": "02:00:00:00:b2:02",
}
GEN_CPU, RELAY_CPU = 0, 1
GENEVE_INNER = 8 + 20 + 8  # Geneve header, inner IPv4, inner UDP: where the client's payload starts
DTLS_PREFIX = "17fefd"  # a DTLS application-data record (RFC 7983: first byte 20-63)


def check_prefix(ufrag: str, size: int) -> str:
    """The generator's prefix (hex) for STUN Binding requests with ``ufrag`` (a route token,
    valid or forged) in USERNAME, then a SOFTWARE attribute whose value is where the
    generator writes its sequence number, send time and filler, so that the STUN lengths
    hold for a UDP payload of ``size`` bytes (a multiple of 4)."""
    user = attr(stun.ATTR_USERNAME, f"{ufrag}:cLnT".encode())
    head_len = 20 + len(user) + 4
    software = struct.pack("!HH", 0x8022, size - head_len)
    header = struct.pack("!HHI", stun.BINDING_REQUEST, size - 20, stun.COOKIE) + bytes(range(12))
    return (header + user + software).hex()


def build_udpbench(out_dir: Path) -> Path:
    """Compile bench/c/udpbench.c (gcc, -O2) into ``out_dir``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the benchmarks' UDP tools: apt-get install gcc")
    binary = out_dir / "udpbench"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(C_SOURCE)], check=True)
    return binary


def pinned(cpu: int) -> Any:
    return lambda: os.sched_setaffinity(0, {cpu})


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (and its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def softirq_s() -> float:
    """Softirq time of the whole machine, in seconds (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


@dataclass
class GenResult:
    sent: int
    errors: int
    seconds: float
    pps: float


class BenchLab:
    """The three namespaces and the C tools; see the module docstring."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.gen_ns, self.relay_ns, self.sink_ns = f"{prefix}gen", f"{prefix}relay", f"{prefix}sink"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}bench-"))
        self.udpbench = build_udpbench(self.tmp)

    def build(self) -> None:
        gen, relay, sink = self.gen_ns, self.relay_ns, self.sink_ns
        for ns in (gen, relay, sink):
            netns.create(ns)
            for key in ("all", "default"):
                netns.sysctl(ns, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        netns.sysctl(relay, "net.ipv4.conf.all.forwarding", "1")
        netns.veth(gen, "cli0", relay, "pub0", mtu=1500)
        netns.veth(relay, "priv0", sink, "tx0", mtu=1600)
        for ns, dev in ((gen, "cli0"), (relay, "pub0"), (relay, "priv0"), (sink, "tx0")):
            netns.set_mac(ns, dev, MACS[dev])
        netns.address(gen, "cli0", f"{GEN_IP}/24")
        netns.address(relay, "pub0", f"{RELAY_PUB}/24")
        netns.address(relay, "priv0", f"{TUNNEL_IP}/24")
        netns.address(relay, "lo", f"{VIP}/32")
        netns.run(relay, ["ip", "link", "set", "lo", "up"])
        netns.address(sink, "tx0", f"{SINK_IP}/24")
        netns.address(sink, "tx0", f"{SINK_IP2}/24")
        netns.route(gen, f"{VIP}/32", gateway=RELAY_PUB)
        netns.route(gen, "10.70.0.0/24", gateway=RELAY_PUB)
        netns.route(sink, "198.18.0.0/24", gateway=TUNNEL_IP)
        netns.route(sink, f"{VIP}/32", gateway=TUNNEL_IP)
        netns.neighbour(gen, "cli0", RELAY_PUB, MACS["pub0"])
        netns.neighbour(relay, "pub0", GEN_IP, MACS["cli0"])
        netns.neighbour(relay, "priv0", SINK_IP, MACS["tx0"])
        netns.neighbour(relay, "priv0", SINK_IP2, MACS["tx0"])
        netns.neighbour(sink, "tx0", TUNNEL_IP, MACS["priv0"])
        set_offloads(gen, [("cli0", True)])
        set_offloads(sink, [("tx0", True)])
        set_offloads(relay, [("pub0", True), ("priv0", True)])

    def remove(self) -> None:
        for ns in (self.gen_ns, self.relay_ns, self.sink_ns):
            netns.remove(ns)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the C tools ----
    def gen(
        self,
        dst: str,
        dport: int,
        pps: float,
        seconds: float,
        size: int,
        prefix: str,
        nports: int = 64,
        source: tuple[str, str, int] | None = None,
    ) -> GenResult:
        """``udpbench gen`` from ``source`` = (namespace, address, first port), by default
        the generator's namespace and ports."""
        ns, src, base = source or (self.gen_ns, GEN_IP, BASE_PORT)
        argv = [str(self.udpbench), "gen", src, str(base), str(nports), dst, str(dport)]
        argv += [str(pps), str(seconds), str(size), prefix]
        out = subprocess.run(
            netns.command(ns, argv),
            check=True,
            capture_output=True,
            text=True,
            preexec_fn=pinned(GEN_CPU),
            timeout=seconds + 30,
        ).stdout
        return GenResult(**json.loads(out.strip().splitlines()[-1]))

    @contextlib.contextmanager
    def sink(
        self, seconds: float, stampoff: int = -1, at: tuple[str, str, int] | None = None
    ) -> Iterator[dict[str, Any]]:
        """A sink counting what reaches ``at`` = (namespace, address, port), by default the
        transceiver's SINK_IP:SINK_PORT; the dict fills in when the block ends (the sink
        stops 1 s after the last packet)."""
        ns, addr, port = at or (self.sink_ns, SINK_IP, SINK_PORT)
        argv = [str(self.udpbench), "sink", addr, str(port), str(seconds), str(stampoff)]
        proc = netns.spawn(ns, argv, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(RELAY_CPU))
        result: dict[str, Any] = {}
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # {"ready": true}
            yield result
            out, _ = proc.communicate(timeout=seconds + 30)
            result.update(json.loads(out.strip().splitlines()[-1]))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def spawn(self, ns: str, argv: list[str], cpu: int = RELAY_CPU, **popen: Any) -> subprocess.Popen[Any]:
        return netns.spawn(ns, argv, preexec_fn=pinned(cpu), **popen)


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> str:
    """SIGTERM, then the process's remaining stdout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# ---- the relays: each is a context manager yielding (dst, dport, stampoff, cpu probe) ----
@dataclass
class Target:
    """Where the generator sends, where the sink finds the send time, and how to read the
    relay's CPU time (seconds, monotonic) or None for the XDP program."""

    name: str
    dst: str
    dport: int
    prefix: str
    stampoff: int  # payload offset of the 8-byte send time at the sink
    cpu_s: Any = None  # () -> float: the relay process's CPU seconds so far
    prog_id: int | None = None  # the XDP program (bpf_stats)
    store: Any = None  # the XDP relay's KernelStore (counters, flows)


def relay_config(name: str) -> RelayConfig:
    return RelayConfig(
        name=name,
        vips=(VipConfig(VIP, VIP_PORT),),
        tunnel=TunnelConfig(address4=TUNNEL_IP),
        interfaces=("pub0", "priv0"),
        xdp_mode="native",
        limits=RelayLimits(max_flows=4096, max_pending=256, max_rate_sources=256, events_pages=8),
    )


def client_flows(nports: int) -> list[tuple[tuple[bytes, int, int], Flow]]:
    return [((inet.addr16(GEN_IP), BASE_PORT + i, 0), Flow(1, 1, 0, 0, 0)) for i in range(nports)]


class UncachedLoader(Loader):
    """The production loader with the next-hop cache compiled out (``-DNEXTHOP_CACHE=0``):
    every packet asks ``bpf_fib_lookup``, as before bpf/nexthop.h. For before/after figures."""

    def cflags(self) -> list[str]:
        return [*super().cflags(), "-DNEXTHOP_CACHE=0"]


@contextlib.contextmanager
def bench_lab(tag: str) -> Iterator[BenchLab]:
    """A built :class:`BenchLab` named TAG plus this process's id, removed on the way out
    (also when building it failed half-way)."""
    lab = BenchLab(f"{tag}{os.getpid() % 1000}-")
    try:
        lab.build()
        yield lab
    finally:
        lab.remove()


@contextlib.contextmanager
def xdp_relay(lab: BenchLab, nports: int = 64, nexthop_cache: bool = True) -> Iterator[Target]:
    config = relay_config(f"{lab.prefix}xdp")
    loader = Loader(config) if nexthop_cache else UncachedLoader(config)
    loader.load()
    try:
        with netns.entered(lab.relay_ns):
            loader.attach()
        store = loader.store()
        store.set_vips([Vip(VIP, VIP_PORT, 0)])
        store.set_config(TunnelEndpoint(TUNNEL_IP, None, 6081), RateConfig())
        store.set_route_keys({0: KEY})
        store.put_backend(Backend(1, 1, SINK_IP, SINK_PORT, BackendState.ACTIVE, 1))
        store.put_backend(Backend(1, 2, SINK_IP2, SINK_PORT, BackendState.ACTIVE, 1))
        store.put_flows(client_flows(nports))
        prefix_len = len(DTLS_PREFIX) // 2
        yield Target(
            "xdp",
            VIP,
            VIP_PORT,
            DTLS_PREFIX,
            GENEVE_INNER + prefix_len + 8,
            prog_id=loader_prog_id(loader),
            store=store,
        )
    finally:
        with netns.entered(lab.relay_ns):
            loader.detach()
        loader.close()
        loader.unpin()


def loader_prog_id(loader: Loader) -> int:
    from controlplane.kernel import libbpf

    return libbpf.prog_id(loader.prog_fd)


@contextlib.contextmanager
def twin_relay(lab: BenchLab, loop: str, nports: int = 64) -> Iterator[Target]:
    argv = [sys.executable, "-m", "bench.lab.twin_proc", "--loop", loop, "--ports", str(nports)]
    proc = lab.spawn(
        lab.relay_ns, argv, stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[2])
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"the twin did not start: {line!r}")
        prefix_len = len(DTLS_PREFIX) // 2
        yield Target(
            f"twin ({loop})",
            VIP,
            VIP_PORT,
            DTLS_PREFIX,
            GENEVE_INNER + prefix_len + 8,
            cpu_s=lambda: proc_cpu_s(proc.pid),
        )
    finally:
        stop(proc)


@contextlib.contextmanager
def c_forwarder(lab: BenchLab) -> Iterator[Target]:
    argv = [str(lab.udpbench), "fwd", VIP, str(VIP_PORT), SINK_IP, str(SINK_PORT), "3600"]
    proc = lab.spawn(lab.relay_ns, argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        prefix_len = len(DTLS_PREFIX) // 2
        yield Target(
            "C recvmmsg/sendmmsg",
            VIP,
            VIP_PORT,
            DTLS_PREFIX,
            prefix_len + 8,
            cpu_s=lambda: proc_cpu_s(proc.pid),
        )
    finally:
        stop(proc)


@contextlib.contextmanager
def kernel_forwarding(lab: BenchLab) -> Iterator[Target]:
    """No relay: the generator sends to the sink and the relay namespace routes it."""
    prefix_len = len(DTLS_PREFIX) // 2
    yield Target("direct (kernel routing)", SINK_IP, SINK_PORT, DTLS_PREFIX, prefix_len + 8)


@contextlib.contextmanager
def coturn_relay(lab: BenchLab, size: int) -> Iterator[Target]:
    """coturn relaying TURN ChannelData (RFC 8656 §12.4) from one client 5-tuple."""
    from bench.lab import turn

    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise RuntimeError("coturn is not installed: apt-get install coturn")
    argv = [
        turnserver,
        "-n",
        "--no-auth",
        "--realm=bench",
        f"--listening-ip={VIP}",
        f"--listening-port={VIP_PORT}",
        f"--relay-ip={TUNNEL_IP}",
        "--min-port=49152",
        "--max-port=49300",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-tcp-relay",
        "--relay-threads=1",
        "--log-file=stdout",
        "--simple-log",
        f"--pidfile={lab.tmp / 'turnserver.pid'}",
        f"--userdb={lab.tmp / 'turndb'}",
        "--allow-loopback-peers",
    ]
    proc = lab.spawn(lab.relay_ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        with netns.entered(lab.gen_ns):
            while True:
                try:
                    turn.allocate_and_bind((GEN_IP, BASE_PORT), (VIP, VIP_PORT), (SINK_IP, SINK_PORT))
                    break
                except (TimeoutError, OSError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.2)
        prefix = turn.channel_prefix(size)
        yield Target(
            "coturn (TURN ChannelData)",
            VIP,
            VIP_PORT,
            prefix,
            len(prefix) // 2 - 4 + 8,
            cpu_s=lambda: proc_cpu_s(proc.pid),
        )
    finally:
        stop(proc)


@contextlib.contextmanager
def cpu_kept_busy(cpu: int) -> Iterator[None]:
    """A spinner at nice 19 pinned to ``cpu``: it takes only time nobody else wants, and
    the CPU never goes idle."""

    def pinned_low() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(19)

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pinned_low)
    try:
        yield
    finally:
        spin.send_signal(signal.SIGKILL)
        spin.wait()


# ---- one measured run ----
def bpf_stats(prog_id: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program: the kernel's own accounting (bpf_stats_enabled)."""
    out = subprocess.run(
        ["bpftool", "-j", "prog", "show", "id", str(prog_id)], check=True, capture_output=True, text=True
    ).stdout
    info = json.loads(out)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(before)


def measure(
    lab: BenchLab, target: Target, pps: float, size: int, seconds: float, prefix: str | None = None
) -> dict[str, Any]:
    """One run of ``pps`` packets of ``size`` payload bytes through ``target``: what the
    generator sent (and whether it kept up), what the sink received and when, and the
    relay's cost per forwarded packet."""
    prefix = target.prefix if prefix is None else prefix
    with lab.sink(seconds + 5, target.stampoff) as received:
        stats0 = bpf_stats(target.prog_id) if target.prog_id is not None else None
        cpu0 = target.cpu_s() if target.cpu_s else None
        soft0 = softirq_s()
        sent = lab.gen(
            target.dst, target.dport, pps, seconds, size, prefix, nports=1 if "coturn" in target.name else 64
        )
        soft1 = softirq_s()
        stats1 = bpf_stats(target.prog_id) if target.prog_id is not None else None
        cpu1 = target.cpu_s() if target.cpu_s else None
    got = int(received.get("received", 0))
    row: dict[str, Any] = {
        "relay": target.name,
        "offered_pps": pps,
        "size": size,
        "sent": sent.sent,
        "gen_pps": round(sent.pps, 1),
        "gen_errors": sent.errors,
        "gen_kept_up": sent.errors == 0 and sent.pps >= 0.98 * pps,
        "received": got,
        "loss": round(1 - got / sent.sent, 6) if sent.sent else None,
        "p50_us": received.get("p50_us"),
        "p99_us": received.get("p99_us"),
        "softirq_us_per_pkt": round((soft1 - soft0) * 1e6 / max(sent.sent, 1), 3),
    }
    if stats0 is not None and stats1 is not None:
        runs = stats1[1] - stats0[1]
        row["xdp_runs"] = runs
        row["ns_per_pkt"] = round((stats1[0] - stats0[0]) / runs, 1) if runs else None
    if cpu0 is not None and cpu1 is not None:
        row["ns_per_pkt"] = round((cpu1 - cpu0) * 1e9 / max(got, 1), 1)
    return row


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
