"""Network namespaces, veth pairs and processes inside them: the lab's and the tests' plumbing.

Thin over pyroute2 (``NetNS``), with every netlink error translated to
:class:`LinkError`. Processes are started with ``nsenter --net=/run/netns/<name>``
rather than ``ip netns exec``: the latter remounts ``/sys`` in a new mount namespace,
which hides ``/sys/fs/bpf`` and therefore the relay's pinned maps.

Everything created here carries a caller-chosen name prefix, so :func:`remove_prefixed`
finds leftovers of a crashed run by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import NetlinkError, NetNS, netns

from icegate.errors import LinkError

NETNS_DIR = "/run/netns"
THREAD_NS = "/proc/thread-self/ns/net"
CLONE_NEWNET = 0x40000000
NUD_PERMANENT = 0x80

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    if exists(name):
        raise LinkError(f"network namespace {name} already exists")
    try:
        netns.create(name)
    except (OSError, NetlinkError) as exc:
        raise LinkError(f"cannot create network namespace {name}: {exc}") from exc
    with ns(name) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")


def remove(name: str) -> None:
    """Remove a namespace; its veth ends go with it (and their peers in other namespaces)."""
    if not exists(name):
        return
    try:
        netns.remove(name)
    except (OSError, NetlinkError) as exc:
        raise LinkError(f"cannot remove network namespace {name}: {exc}") from exc


def remove_prefixed(prefix: str) -> list[str]:
    """Remove every namespace whose name starts with ``prefix``; return their names."""
    if not prefix:
        raise ValueError("refusing to remove every namespace: empty prefix")
    gone = names(prefix)
    for name in gone:
        remove(name)
    return gone


@contextlib.contextmanager
def ns(name: str) -> Iterator[Any]:
    """A pyroute2 ``NetNS`` handle on ``name``, errors translated."""
    try:
        handle = NetNS(name)
    except (OSError, NetlinkError) as exc:
        raise LinkError(f"cannot open network namespace {name}: {exc}") from exc
    try:
        yield handle
    except NetlinkError as exc:
        raise LinkError(f"netlink error in {name}: {exc}") from exc
    finally:
        handle.close()


def index(handle: Any, ifname: str) -> int:
    found = handle.link_lookup(ifname=ifname)
    if not found:
        raise LinkError(f"no interface {ifname}")
    return int(found[0])


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, *, mtu: int | None = None) -> None:
    """Create a veth pair with one end in each namespace, both up."""
    for dev in (name_a, name_b):
        if not 0 < len(dev) <= 15:
            raise LinkError(f"interface name {dev!r} must be 1-15 characters")
    with ns(ns_a) as a:
        a.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": path(ns_b)})
        link = index(a, name_a)
        if mtu:
            a.link("set", index=link, mtu=mtu)
        a.link("set", index=link, state="up")
    with ns(ns_b) as b:
        link = index(b, name_b)
        if mtu:
            b.link("set", index=link, mtu=mtu)
        b.link("set", index=link, state="up")


def address(name: str, ifname: str, cidr: str) -> None:
    host, _, prefix = cidr.partition("/")
    with ns(name) as h:
        h.addr(
            "add", index=index(h, ifname), address=host, prefixlen=int(prefix or (128 if ":" in host else 32))
        )


def route(name: str, dst: str, gateway: str | None = None, dev: str | None = None) -> None:
    with ns(name) as h:
        kwargs: dict[str, Any] = {"dst": dst}
        if gateway:
            kwargs["gateway"] = gateway
        if dev:
            kwargs["oif"] = index(h, dev)
        h.route("add", **kwargs)


def neighbour(name: str, ifname: str, ip: str, mac: str) -> None:
    """A permanent neighbour entry (no ARP needed)."""
    with ns(name) as h:
        h.neigh("add", dst=ip, lladdr=mac, ifindex=index(h, ifname), state=NUD_PERMANENT)


def set_mac(name: str, ifname: str, mac: str) -> None:
    with ns(name) as h:
        h.link("set", index=index(h, ifname), address=mac)


def mac_of(name: str, ifname: str) -> str:
    with ns(name) as h:
        return str(h.link("get", index=index(h, ifname))[0].get("IFLA_ADDRESS"))


def ifindex(name: str, ifname: str) -> int:
    with ns(name) as h:
        return index(h, ifname)


def bridge(name: str, ifname: str, ports: Sequence[str], *, mtu: int | None = None) -> None:
    with ns(name) as h:
        h.link("add", ifname=ifname, kind="bridge")
        br = index(h, ifname)
        if mtu:
            h.link("set", index=br, mtu=mtu)
        for port in ports:
            h.link("set", index=index(h, port), master=br)
        h.link("set", index=br, state="up")


def sysctl(name: str, key: str, value: str) -> None:
    run(name, ["sysctl", "-q", "-w", f"{key}={value}"])


def command(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs in namespace ``name`` (network only, mounts shared);
    ``argv`` as it is for ``name`` "" (the caller's namespace)."""
    if not name:
        return list(argv)
    return ["nsenter", f"--net={path(name)}", "--", *argv]


def run(name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command in ``name`` and return its stdout; a failure raises LinkError with stderr."""
    proc = subprocess.run(command(name, argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LinkError(f"{' '.join(argv)} in {name} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def spawn(name: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start a long-running process in ``name``; the caller owns (and ends) it."""
    return subprocess.Popen(command(name, argv), **popen)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the *calling thread* into ``name`` for the duration (sockets, BPF test runs).

    Only for code that does not hop threads: asyncio executors and pyroute2 workers
    would not follow.
    """
    with entered_path(path(name), name):
        yield


@contextlib.contextmanager
def entered_path(ns_path: str, what: str | None = None) -> Iterator[None]:
    """:func:`entered` for any namespace file (``/proc/<pid>/ns/net`` too)."""
    own = os.open(THREAD_NS, os.O_RDONLY)
    try:
        target = os.open(ns_path, os.O_RDONLY)
    except BaseException:
        os.close(own)
        raise
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LinkError(f"setns({what or ns_path}) failed: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread astray
                err = ctypes.get_errno()
                raise LinkError(f"setns back to the original namespace failed: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(own)


def identity(ns_path: str = "") -> tuple[int, int]:
    """``(device, inode)`` of a namespace file: equal for the same namespace, whatever the
    path. Without a path, the calling thread's namespace."""
    st = os.stat(ns_path or THREAD_NS)
    return st.st_dev, st.st_ino


def name_of(ident: tuple[int, int]) -> str | None:
    """The ``/run/netns`` name of a namespace, if it has one."""
    for name in names():
        with contextlib.suppress(OSError):
            if identity(path(name)) == ident:
                return name
    return None


def locate(ident: tuple[int, int], name: str | None = None) -> str | None:
    """A file that opens the namespace ``ident``: ``/run/netns/<name>`` (``name`` first),
    else the namespace of any process in it. None when it is gone."""
    candidates = [path(name)] if name else []
    candidates += [path(n) for n in names()]
    candidates += [f"/proc/{pid}/ns/net" for pid in os.listdir("/proc") if pid.isdigit()]
    for candidate in candidates:
        with contextlib.suppress(OSError):
            if identity(candidate) == ident:
                return candidate
    return None
