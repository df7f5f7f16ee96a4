"""The lab's small kernel helpers beyond :mod:`icegate.netns`: offloads, sysctls, netem, reads.

Offloads use the ethtool ioctl (``SIOCETHTOOL``) from inside the namespace rather than
the ``ethtool`` binary: one system call instead of a process per interface, which keeps
``lab up`` and ``lab status`` fast. Everything runs in the calling thread
(:func:`icegate.netns.entered`), never in pools.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import Any

from icegate import netns
from icegate.errors import LinkError

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
ETHTOOL_GGRO = 0x2B
ETHTOOL_SGRO = 0x2C
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
MAIN_TABLE = 254
RTN_UNICAST = 1
SCOPE_LINK = 253
# IFLA_XDP_ATTACHED (include/uapi/linux/if_link.h: XDP_ATTACHED_*), as numbers and as
# the names pyroute2 decodes them to.
XDP_MODES: dict[int | str, str] = {
    1: "native",
    2: "generic",
    3: "offload",
    4: "multi",
    "xdp": "native",
    "xdpgeneric": "generic",
    "hw": "offload",
    "multi": "multi",
}


def _ethtool(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl on ``ifname``; returns the value's ``data``."""
    value = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", value.raw[:8])[1])


def set_offloads(ns: str, ifnames: list[tuple[str, bool]]) -> None:
    """Turn tx checksum offload off on every ``ifname`` and GRO on where the flag says so.

    Why (docs/LAB.md, "Why these settings"): a packet the XDP program rewrites must carry a complete
    checksum, which veth leaves to "offload" (CHECKSUM_PARTIAL) unless tx offload is off;
    and a frame sent with XDP_TX or redirected into a veth is delivered only when the
    peer has GRO on (or an XDP program of its own).
    """
    with netns.entered(ns), socket.socket(AF_INET, socket.SOCK_DGRAM) as sock:
        for ifname, gro in ifnames:
            try:
                _ethtool(sock, ifname, ETHTOOL_STXCSUM, 0)
                if gro:
                    _ethtool(sock, ifname, ETHTOOL_SGRO, 1)
            except OSError as exc:
                raise LinkError(f"ethtool on {ifname} in {ns} failed: {exc.strerror}") from exc


def offloads(sock: socket.socket, ifname: str) -> dict[str, bool] | None:
    try:
        return {
            "tx_checksum": bool(_ethtool(sock, ifname, ETHTOOL_GTXCSUM)),
            "gro": bool(_ethtool(sock, ifname, ETHTOOL_GGRO)),
        }
    except OSError:
        return None


def sysctl(ns: str, key: str, value: str, *, missing_ok: bool = False) -> None:
    """Write ``/proc/sys/<key>`` as seen from ``ns`` (net sysctls are per namespace)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with netns.entered(ns):
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if not missing_ok:
                raise LinkError(f"no sysctl {key} in {ns}") from None
        except OSError as exc:
            raise LinkError(f"cannot set {key}={value} in {ns}: {exc.strerror}") from exc


def read_sysctl(ns: str, key: str) -> str | None:
    with netns.entered(ns):
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as f:
                return f.read().strip()
        except OSError:
            return None


def netem_available(ns: str) -> tuple[bool, str]:
    """Whether the kernel has the netem qdisc: try one on ``lo`` of ``ns`` and remove it."""
    try:
        proc = subprocess.run(
            netns.command(ns, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"]),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except FileNotFoundError:
        return False, "tc (iproute2) is not installed"
    if proc.returncode == 0:
        netns.run(ns, ["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        return True, "netem qdisc available"
    reason = proc.stderr.strip() or f"tc exited {proc.returncode}"
    if "unknown" in reason.lower():
        reason = "no netem qdisc in this kernel (CONFIG_NET_SCH_NETEM off)"
    return False, reason


def add_delay(ns: str, ifname: str, delay_ms: float) -> None:
    netns.run(ns, ["tc", "qdisc", "replace", "dev", ifname, "root", "netem", "delay", f"{delay_ms}ms"])


def qdisc_delay(ns: str, ifname: str) -> str | None:
    out = netns.run(ns, ["tc", "qdisc", "show", "dev", ifname], check=False)
    for line in out.splitlines():
        if " netem " in line and "delay" in line:
            return line.split("delay", 1)[1].split()[0]
    return None


def read_host(ns: str) -> dict[str, Any]:
    """Interfaces (addresses, MAC, MTU, state, XDP, offloads) and main-table unicast routes
    of ``ns``, IPv4 then IPv6 (link-local addresses and routes left out)."""
    with netns.ns(ns) as h:
        links = h.link("dump")
        addrs = [a for family in (AF_INET, AF_INET6) for a in h.addr("dump", family=family)]
        routes = [r for family in (AF_INET, AF_INET6) for r in h.route("dump", family=family)]
    addrs = [a for a in addrs if a["scope"] != SCOPE_LINK]
    names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in links}
    interfaces = []
    with netns.entered(ns), socket.socket(AF_INET, socket.SOCK_DGRAM) as sock:
        for link in links:
            name = names[int(link["index"])]
            if name == "lo":
                continue
            info = link.get("IFLA_LINKINFO")
            master = link.get("IFLA_MASTER")
            interfaces.append(
                {
                    "name": name,
                    "index": int(link["index"]),
                    "kind": info.get("IFLA_INFO_KIND") if info else None,
                    "mac": link.get("IFLA_ADDRESS"),
                    "mtu": link.get("IFLA_MTU"),
                    "state": str(link.get("IFLA_OPERSTATE", "UNKNOWN")).lower(),
                    "master": names.get(int(master)) if master else None,
                    "addresses": [
                        f"{a.get('IFA_LOCAL') or a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                        for a in addrs
                        if int(a["index"]) == int(link["index"])
                    ],
                    "xdp": _xdp(link.get("IFLA_XDP")),
                    "offloads": offloads(sock, name),
                }
            )
    table = []
    for r in routes:
        dst = r.get("RTA_DST")
        if r.get("RTA_TABLE", r["table"]) != MAIN_TABLE or r["type"] != RTN_UNICAST:
            continue
        if dst and str(dst).startswith("fe80:"):
            continue
        oif = r.get("RTA_OIF")
        table.append(
            {
                "dst": f"{dst}/{r['dst_len']}" if dst else "default",
                "gateway": r.get("RTA_GATEWAY"),
                "dev": names.get(int(oif)) if oif else None,
            }
        )
    return {"interfaces": interfaces, "routes": table}


def _xdp(attr: Any) -> dict[str, Any] | None:
    if not attr:
        return None
    attached = attr.get("IFLA_XDP_ATTACHED")
    if not attached or attached == "none":
        return None
    ids = [attr.get(f"IFLA_XDP_{kind}PROG_ID") for kind in ("", "DRV_", "SKB_", "HW_")]
    return {"mode": XDP_MODES.get(attached, str(attached)), "prog_id": next((i for i in ids if i), None)}


def redis_server_argv(host: str, port: int, *, loglevel: str, directory: str | None = None) -> list[str]:
    """A redis-server in the foreground, no persistence, open to the lab's (or test's) hosts."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise LinkError("redis-server is not installed: run scripts/setup")
    argv = [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--protected-mode", "no", "--daemonize", "no", "--loglevel", loglevel]
    return argv + (["--dir", directory] if directory else [])


def redis_ping(ns: str, host: str, port: int, timeout: float = 0.5) -> bool:
    """A Redis ``PING`` from inside ``ns`` (raw RESP, so no client library is needed here)."""
    with netns.entered(ns):
        try:
            with socket.create_connection((host, port), timeout=timeout) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def wait_redis(ns: str, host: str, port: int, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while not redis_ping(ns, host, port):
        if not alive():
            raise LinkError(f"redis-server in {ns} exited during start-up; see its log")
        if time.monotonic() > deadline:
            raise LinkError(f"redis-server in {ns} does not answer on {host}:{port} after {timeout}s")
        time.sleep(0.02)


def namespace_inode(name: str) -> tuple[int, int] | None:
    try:
        return netns.identity(netns.path(name))
    except OSError:
        return None


def _ancestors() -> set[int]:
    """This process and its parents up to init."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return chain


def pids_in(namespaces: list[str]) -> list[int]:
    """Every process whose network namespace is one of ``namespaces``, except this one and
    its ancestors (a shell entered with ``nsenter`` that runs ``lab down`` survives it)."""
    wanted = {ino for ino in map(namespace_inode, namespaces) if ino is not None}
    if not wanted:
        return []
    spared = _ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spared:
            continue
        try:
            ident = netns.identity(f"/proc/{entry}/ns/net")
        except OSError as exc:  # gone, or a kernel thread
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ESRCH):
                raise
            continue
        if ident in wanted:
            found.append(int(entry))
    return found
