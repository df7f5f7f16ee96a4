"""Compile, load and attach the XDP program (bcc), and the lifecycle around it.

:class:`Loader` is what ``icegate relay run`` uses::

    loader = Loader(config)
    loader.load()            # compile bpf/relay.c, reuse or create the pinned maps, check them
    loader.attach()          # {ifname: "native" | "generic"}; replaces a running program in place
    loader.write_config(tunnel, rate)
    loader.open_events(callback)   # layout.FlowEventRecord per CREATED / REROUTED
    loader.poll_events(100)
    loader.close()           # the program stays attached and the maps stay pinned

A control-plane restart loses no packet: the maps are pinned under
``<bpffs>/icegate/<relay>/`` and bcc reuses them, and attaching over a running program
swaps one pointer in the kernel. The program is pinned there too (``prog``), so the
module-level :func:`status` and :func:`detach` work from the CLI with the daemon down,
without bcc. :func:`detach` removes the program from every interface it is attached to;
:func:`unpin` removes the maps (flows are lost).

An XDP attachment belongs to a network namespace, and the CLI may run in another one
(the root namespace, with the relay in ``/run/netns/relay``). :meth:`Loader.attach`
therefore records where it attached, in ``/run/icegate/relay/<relay>/attach.json``
(bpffs holds BPF objects only), and :func:`status` and :func:`detach` enter that
namespace when it is not their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icegate.bpf import PROGRAM, source_dir

from controlplane.config import RelayConfig
from controlplane.datapath import layout
from controlplane.datapath.store import IfaceRoles, RateConfig, TunnelEndpoint
from controlplane.kernel import libbpf
from controlplane.kernel.libbpf import XdpAttachment
from controlplane.kernel.maps import KernelStore
from icegate import netns
from icegate.errors import BpfError, DependencyError, LinkError, RelayNotRunning

log = logging.getLogger(__name__)

ENTRY = "xdp_relay"  # the XDP function in relay.c
RUN_DIR = Path("/run/icegate/relay")  # <relay>/attach.json: where the program was attached
EventCallback = Callable[[layout.FlowEventRecord], None]


def import_bcc() -> Any:
    """The bcc module, or DependencyError saying how to get it."""
    try:
        import bcc  # a system package (python3-bpfcc), needed only to load the program
    except ImportError as exc:
        raise DependencyError(
            "bcc is not importable: apt-get install python3-bpfcc, and run icegate with a Python that sees "
            "/usr/lib/python3/dist-packages (a venv made with --system-site-packages); the PyPI package "
            f'named "bcc" is unrelated ({exc})'
        ) from exc
    return bcc


def check_kernel_headers() -> None:
    """bcc compiles at load time against the running kernel's headers."""
    release = os.uname().release
    if Path(f"/lib/modules/{release}/build/include").exists() or Path("/sys/kernel/kheaders.tar.xz").exists():
        return
    raise DependencyError(
        f"no kernel headers for {release} under /lib/modules/{release}/build: run scripts/setup, which "
        "installs the distribution's headers and links them for kernels that ship none"
    )


def check_bpffs(bpffs: Path) -> None:
    try:
        mounts = Path("/proc/self/mounts").read_text().split("\n")
    except OSError:
        mounts = []
    if not any(line.split()[1:3] == [str(bpffs), "bpf"] for line in mounts if len(line.split()) > 2):
        raise DependencyError(f"bpffs is not mounted at {bpffs}: mount -t bpf bpf {bpffs}")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what clang and the verifier print on fd 2 (bcc writes there, not to Python)."""
    lines: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def _tail(lines: list[str], n: int = 25) -> str:
    kept = [line for line in lines if line.strip()]
    return "\n".join(kept[-n:])


def ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as exc:
        raise LinkError(f"no interface {ifname} in this network namespace") from exc


class Loader:
    """The XDP program of one relay: compiled by bcc, maps pinned in ``config.pin_dir``."""

    def __init__(self, config: RelayConfig, source: Path | None = None) -> None:
        self.config = config
        self.pin_dir = config.pin_dir
        # The folder holding relay.c and its headers; another one only for benchmarks
        # comparing an earlier program in the same run (bench/xdp_micro.py --before).
        self.source = source_dir() if source is None else source
        self.bpf: Any = None
        self.prog_fd = -1
        self.modes: dict[str, str] = {}
        self._store: KernelStore | None = None

    # ---- load ----
    def cflags(self) -> list[str]:
        return [f"-I{self.source}", *self.config.limits.cflags(), f'-DPIN_DIR="{self.pin_dir}"']

    def load(self) -> None:
        """Compile ``bpf/relay.c``, reuse or create the pinned maps, check them, pin the program."""
        bcc = import_bcc()
        check_kernel_headers()
        check_bpffs(self.config.bpffs)
        # A mismatch is clearer before compiling than as a verifier error after.
        libbpf.check_maps(libbpf.pinned_map_infos(self.pin_dir), self.config.limits)
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        src = self.source / PROGRAM
        with _captured_stderr() as output:
            try:
                self.bpf = bcc.BPF(src_file=str(src).encode(), cflags=self.cflags())
            except Exception as exc:
                raise BpfError(f"compiling {src} failed:\n{_tail(output)}") from exc
        with _captured_stderr() as output:
            try:
                self.prog_fd = self.bpf.load_func(ENTRY.encode(), bcc.BPF.XDP).fd
            except Exception as exc:
                self.bpf.cleanup()
                self.bpf = None
                raise BpfError(f"the verifier refused {ENTRY}: {exc}\n{_tail(output)}") from exc
        infos = {
            name: libbpf.map_info(self.bpf.get_table(name.encode()).map_fd, name)
            for name in libbpf.map_specs(self.config.limits)
        }
        libbpf.check_maps(infos, self.config.limits)
        self._pin_program()
        log.info(
            "xdp program loaded relay=%s prog_id=%d pin_dir=%s maps_reused=%s",
            self.config.name,
            libbpf.prog_id(self.prog_fd),
            self.pin_dir,
            sorted(infos),
        )

    def _pin_program(self) -> None:
        # Pin beside, then rename over the old pin: the path never disappears. (bpffs
        # refuses names with a dot.)
        fresh = self.pin_dir / f"{libbpf.PROG_PIN}_new"
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        libbpf.obj_pin(self.prog_fd, fresh)
        os.replace(fresh, self.pin_dir / libbpf.PROG_PIN)

    def _require_loaded(self) -> None:
        if self.bpf is None:
            raise BpfError("the XDP program is not loaded: call load() first")

    # ---- attach ----
    def attach(self) -> dict[str, str]:
        """Attach to ``config.interfaces`` in ``config.xdp_mode``; returns the mode per interface.

        An interface that already runs an XDP program keeps its mode and gets the new
        program in one atomic swap (a restart loses nothing). ``auto`` tries native
        first and falls back to generic (skb) mode, with a WARNING.
        """
        self._require_loaded()
        for ifname in self.config.interfaces:
            self.modes[ifname] = self._attach_one(ifname)
            enable_forwarding(ifname)
        write_attach_record(self.pin_dir, libbpf.prog_id(self.prog_fd), self.modes)
        return dict(self.modes)

    def _attach_one(self, ifname: str) -> str:
        index = ifindex(ifname)
        current = libbpf.xdp_query(index)
        wanted = self.config.xdp_mode
        running = current[0].mode if current else None
        if running is not None and wanted in ("auto", running):
            libbpf.xdp_attach(index, self.prog_fd, running)
            log.info("xdp replaced interface=%s mode=%s old_prog_id=%d", ifname, running, current[0].prog_id)
            return running
        if running is not None:
            # Native and generic cannot coexist on one device: switching modes leaves a gap.
            log.warning(
                "xdp mode change interface=%s from=%s to=%s: packets pass unrelayed for a moment",
                ifname,
                running,
                wanted,
            )
            libbpf.xdp_detach(index, running)
        if wanted in ("auto", "native"):
            try:
                libbpf.xdp_attach(index, self.prog_fd, "native")
                log.info("xdp attached interface=%s mode=native", ifname)
                return "native"
            except BpfError as exc:
                if wanted == "native":
                    raise
                log.warning(
                    "xdp native mode unavailable on %s (%s): falling back to generic (skb) mode, "
                    "which costs a socket buffer per packet",
                    ifname,
                    exc,
                )
        libbpf.xdp_attach(index, self.prog_fd, "generic")
        log.info("xdp attached interface=%s mode=generic", ifname)
        return "generic"

    def detach(self) -> list[str]:
        """Remove the program from ``config.interfaces``, in the namespace it was attached
        in (the maps stay pinned)."""
        removed = []
        with attach_namespace(self.pin_dir):
            for ifname in self.config.interfaces:
                with contextlib.suppress(LinkError):
                    index = ifindex(ifname)
                    for att in libbpf.xdp_query(index):
                        libbpf.xdp_detach(index, att.mode)
                        removed.append(f"{ifname} ({att.mode})")
        remove_attach_record(self.pin_dir)
        self.modes.clear()
        return removed

    def unpin(self) -> list[str]:
        return unpin(self.pin_dir)

    # ---- maps ----
    def store(self) -> KernelStore:
        """The pinned maps as a :class:`MapStore` (opened once, after :meth:`load`)."""
        if self._store is None:
            self._store = KernelStore(self.pin_dir, self.config.name)
        return self._store

    def write_roles(self) -> None:
        """§1 r8: the ifindexes of ``public_interfaces`` and ``private_interfaces`` into the
        config map (docs/SECURITY.md); none configured: no roles."""
        roles = IfaceRoles(
            tuple(ifindex(dev) for dev in self.config.public_interfaces),
            tuple(ifindex(dev) for dev in self.config.private_interfaces),
        )
        store = self.store()
        store.set_config(store.tunnel(), store.rate_config(), roles)
        if roles.public:
            log.info(
                "interface roles public=%s private=%s",
                ",".join(self.config.public_interfaces),
                ",".join(self.config.private_interfaces),
            )

    def write_config(self, tunnel: TunnelEndpoint, rate: RateConfig) -> None:
        self.store().set_config(tunnel, rate)

    def status(self) -> dict[str, Any]:
        return status(self.pin_dir)

    # ---- events ----
    def open_events(self, callback: EventCallback) -> None:
        """Deliver every ``events`` record to ``callback`` during :meth:`poll_events`."""
        self._require_loaded()

        def deliver(_ctx: Any, data: Any, size: int) -> int:
            raw = ctypes.string_at(data, size)
            if size >= ctypes.sizeof(layout.FlowEventRecord):
                callback(layout.FlowEventRecord.from_buffer_copy(raw))
            return 0

        self._deliver = deliver  # bcc keeps a C pointer to it: keep the Python object alive
        self.bpf[b"events"].open_ring_buffer(deliver)

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Wait up to ``timeout_ms`` for events and deliver them (blocks: run it in a thread)."""
        self._require_loaded()
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume_events(self) -> None:
        """Deliver what is in the ring now, without waiting."""
        self._require_loaded()
        self.bpf.ring_buffer_consume()

    def close(self) -> None:
        """Release file descriptors; the program stays attached and the maps pinned."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        self.prog_fd = -1


def enable_forwarding(ifname: str) -> None:
    """bpf_fib_lookup() refuses to forward (BPF_FIB_LKUP_RET_FWD_DISABLED, counted DROP_FIB)
    for packets arriving on a device without forwarding. IPv4 forwarding is switched on
    per device; IPv6 forwarding also turns off router-advertisement processing, so it is
    only reported."""
    v4 = Path(f"/proc/sys/net/ipv4/conf/{ifname}/forwarding")
    if v4.exists() and v4.read_text().strip() != "1":
        v4.write_text("1\n")
        log.info("ipv4 forwarding enabled interface=%s (bpf_fib_lookup needs it)", ifname)
    v6 = Path(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding")
    if v6.exists() and v6.read_text().strip() != "1":
        log.warning(
            "ipv6 forwarding is off on %s: IPv6 packets arriving there count DROP_FIB "
            "(sysctl net.ipv6.conf.%s.forwarding=1 to relay IPv6)",
            ifname,
            ifname,
        )


# ---- without bcc: the CLI's view of a relay, by its pin directory ----------------------
def pinned_prog_id(pin_dir: Path) -> int | None:
    path = pin_dir / libbpf.PROG_PIN
    if not path.exists():
        return None
    fd = libbpf.obj_get(path)
    try:
        return libbpf.prog_id(fd)
    finally:
        os.close(fd)


def attachments(prog_id: int | None = None) -> list[tuple[str, int, XdpAttachment]]:
    """(ifname, ifindex, attachment) for every XDP program in this network namespace,
    only those of ``prog_id`` when given."""
    found = []
    for index, ifname in socket.if_nameindex():
        for att in libbpf.xdp_query(index):
            if prog_id is None or att.prog_id == prog_id:
                found.append((ifname, index, att))
    return found


def _this_namespace() -> str:
    """The calling thread's namespace as ``relay status`` names it: its ``/run/netns``
    name, ``host`` for init's, else its inode (issue 16: run inside the relay's
    namespace, status printed ``netns: -``)."""
    ident = netns.identity()
    with contextlib.suppress(OSError):
        if ident == netns.identity("/proc/1/ns/net"):
            return "host"
    return netns.name_of(ident) or f"net:[{ident[1]}]"


def status(pin_dir: Path) -> dict[str, Any]:
    """The relay's program, where it is attached (in the namespace :meth:`Loader.attach`
    recorded, else this one) and the fill level of its hash maps:
    ``{"program", "netns", "attached", "maps"}``; ``netns`` names the namespace attached in."""
    if not pin_dir.is_dir():
        raise RelayNotRunning(f"relay {pin_dir.name!r} is not running: nothing pinned at {pin_dir}")
    pid = pinned_prog_id(pin_dir)
    with attach_namespace(pin_dir) as where:
        attached = [] if pid is None else attachments(pid)
    with KernelStore(pin_dir) as store:
        fill = store.fill()
        capacity = store.capacity()
    return {
        "program": {"id": pid, "pinned": str(pin_dir / libbpf.PROG_PIN)} if pid is not None else None,
        "netns": where or _this_namespace(),
        "attached": [
            {"interface": n, "ifindex": i, "mode": a.mode, "prog_id": a.prog_id} for n, i, a in attached
        ],
        "maps": {name: {"entries": fill[name], "capacity": capacity[name]} for name in fill},
    }


def detach(pin_dir: Path, *, remove_pins: bool = True) -> list[str]:
    """Detach the relay's program from every interface, in the namespace it was attached
    in, then (by default) unpin everything: what ``icegate relay detach`` does. Returns
    what was removed."""
    removed = []
    pid = pinned_prog_id(pin_dir) if pin_dir.is_dir() else None
    if pid is not None:
        with attach_namespace(pin_dir) as where:
            for ifname, index, att in attachments(pid):
                libbpf.xdp_detach(index, att.mode)
                removed.append(f"xdp on {ifname} ({att.mode})" + (f" in netns {where}" if where else ""))
        remove_attach_record(pin_dir)
    if remove_pins:
        removed.extend(unpin(pin_dir))
    return removed


def unpin(pin_dir: Path) -> list[str]:
    """Remove the pinned maps and program (the kernel frees them once nothing uses them), and
    ``<bpffs>/icegate`` too once no relay is pinned there."""
    remove_attach_record(pin_dir)
    if not pin_dir.is_dir():
        return []
    removed = []
    for entry in sorted(pin_dir.iterdir()):
        entry.unlink()
        removed.append(f"pin {entry.name}")
    pin_dir.rmdir()
    with contextlib.suppress(OSError):  # another relay's pins are still there
        pin_dir.parent.rmdir()
    return removed


# ---- where the program was attached -----------------------------------------------------
@dataclass(frozen=True)
class AttachRecord:
    pin_dir: str  # whose record: the same relay name under another bpffs is another relay
    prog_id: int
    netns_dev: int
    netns_inode: int
    netns_name: str | None  # under /run/netns, if it has a name there
    interfaces: dict[str, str]  # ifname -> mode


def attach_record_path(pin_dir: Path) -> Path:
    return RUN_DIR / pin_dir.name / "attach.json"


def write_attach_record(pin_dir: Path, prog_id: int, modes: dict[str, str]) -> None:
    """Remember the calling thread's namespace as the one the program is attached in."""
    ident = netns.identity()
    record = AttachRecord(str(pin_dir), prog_id, *ident, netns.name_of(ident), dict(modes))
    path = attach_record_path(pin_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_suffix(".tmp")
        fresh.write_text(json.dumps(asdict(record), indent=1) + "\n")
        os.replace(fresh, path)
    except OSError as exc:
        log.warning("cannot record the attach namespace at %s (%s): detach elsewhere misses it", path, exc)


def read_attach_record(pin_dir: Path) -> AttachRecord | None:
    """The record of ``pin_dir``'s relay; None if there is none or it is unreadable."""
    path = attach_record_path(pin_dir)
    try:
        record = AttachRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable attach record %s: %s", path, exc)
        return None
    return record if record.pin_dir == str(pin_dir) else None


def remove_attach_record(pin_dir: Path) -> None:
    """Remove the record, if it is ``pin_dir``'s (not another bpffs's relay of the same name)."""
    if read_attach_record(pin_dir) is None:
        return
    path = attach_record_path(pin_dir)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


@contextlib.contextmanager
def attach_namespace(pin_dir: Path) -> Iterator[str | None]:
    """Run the body in the namespace the relay's program was attached in, when that is
    not the calling thread's; yields its name (its path if it has none), or None when
    the body runs here: same namespace, no record, or the namespace is gone."""
    record = read_attach_record(pin_dir)
    if record is None or (record.netns_dev, record.netns_inode) == netns.identity():
        yield None
        return
    where = netns.locate((record.netns_dev, record.netns_inode), record.netns_name)
    if where is None:
        log.info("the namespace relay %s was attached in is gone", pin_dir.name)
        yield None
        return
    with netns.entered_path(where, record.netns_name):
        yield record.netns_name or where
