"""bpf(2) access to the relay's pinned maps and program, without bcc.

The CLI must read the maps while the daemon is down, and bcc compiles a program just to
open a map, so this module talks to the kernel through ``libbpf.so.1`` (ctypes):

- :class:`PinnedMap`: one pinned map, typed with the ``datapath/layout.py`` structs; per-CPU
  values come back as one struct per possible CPU;
- :func:`map_specs`, :func:`check_maps`: the maps ``bpf/maps.h`` declares, and do pinned
  maps match the sizes the configuration asks for;
- :func:`prog_test_run`: ``BPF_PROG_TEST_RUN`` of an XDP program (tests, benchmarks);
- :func:`xdp_query`, :func:`xdp_attach`, :func:`xdp_detach`: XDP attach points.

``maps.py`` builds :class:`controlplane.datapath.store.MapStore` on top of this.
Errors are :class:`BpfError`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from controlplane.config import RelayLimits
from controlplane.datapath import layout
from icegate.errors import BpfError, DependencyError

# uapi/linux/bpf.h
BPF_ANY = 0
BPF_NOEXIST = 1
MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_RINGBUF = 1, 2, 6, 9, 27
PERCPU_TYPES = frozenset({5, MAP_PERCPU_ARRAY, 10})
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
PROG_PIN = "prog"  # the program is pinned beside its maps, so status/detach can find it

_K = TypeVar("_K", bound=ctypes.Structure)
_V = TypeVar("_V", bound=ctypes.Structure)


class U32(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint32)]


class U64(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class Addr(ctypes.Structure):
    """``struct rate_source_key`` (bpf/maps.h): a 16-byte address."""

    _fields_ = [("addr", layout.Addr16)]


# ---- libbpf ---------------------------------------------------------------------------
class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _ProgInfo(ctypes.Structure):
    """The head of ``struct bpf_prog_info``; the kernel fills what fits."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8)]


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class TestRunOpts(ctypes.Structure):
    """libbpf's ``struct bpf_test_run_opts``."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """``struct xdp_md``, the context of an XDP test run."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, ...]] = {
    "bpf_obj_get": (ctypes.c_char_p,),
    "bpf_obj_pin": (ctypes.c_int, ctypes.c_char_p),
    "bpf_map_lookup_elem": (ctypes.c_int, _P, _P),
    "bpf_map_update_elem": (ctypes.c_int, _P, _P, ctypes.c_uint64),
    "bpf_map_delete_elem": (ctypes.c_int, _P),
    "bpf_map_get_next_key": (ctypes.c_int, _P, _P),
    "bpf_map_lookup_batch": (ctypes.c_int, _P, _P, _P, _P, ctypes.POINTER(ctypes.c_uint32), _P),
    "bpf_map_update_batch": (ctypes.c_int, _P, _P, ctypes.POINTER(ctypes.c_uint32), _P),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)),
    "bpf_prog_test_run_opts": (ctypes.c_int, ctypes.POINTER(TestRunOpts)),
    "bpf_prog_get_fd_by_id": (ctypes.c_uint32,),
    "bpf_xdp_attach": (ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)),
    "bpf_xdp_detach": (ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)),
    "bpf_xdp_query": (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_XdpQueryOpts)),
}


@cache
def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the signatures this module uses (raises DependencyError)."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise DependencyError(f"cannot load {name}: apt-get install libbpf1 ({exc})") from exc
    for func, argtypes in _SIGNATURES.items():
        fn = getattr(lib, func)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


def _call(func: str, *args: Any, what: str, ok: Sequence[int] = ()) -> int:
    """Call a libbpf function; a negative result becomes BpfError unless its errno is in ``ok``.

    libbpf 1.x returns ``-errno`` and also sets errno; both are accepted.
    """
    ret = int(getattr(libbpf(), func)(*args))
    if ret >= 0:
        return ret
    err = -ret if ret != -1 else ctypes.get_errno()
    if err in ok:
        return -err
    raise BpfError(f"{what}: {os.strerror(err)} (errno {err})")


@cache
def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (``/sys/devices/system/cpu/possible``)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# ---- maps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MapInfo:
    name: str
    map_type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int, what: str = "map") -> MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _call("bpf_obj_get_info_by_fd", fd, ctypes.byref(info), ctypes.byref(size), what=f"info of {what}")
    return MapInfo(
        info.name.decode(),
        info.type,
        info.id,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
    )


def prog_id(fd: int) -> int:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _call("bpf_obj_get_info_by_fd", fd, ctypes.byref(info), ctypes.byref(size), what="program info")
    return int(info.id)


def obj_get(path: Path) -> int:
    return _call("bpf_obj_get", str(path).encode(), what=f"open {path}")


def obj_pin(fd: int, path: Path) -> None:
    _call("bpf_obj_pin", fd, str(path).encode(), what=f"pin {path}")


class PinnedMap(Generic[_K, _V]):
    """A pinned map with ctypes keys and values. Per-CPU maps take and return one value
    per possible CPU (:meth:`lookup_percpu`); :meth:`lookup` of a per-CPU map is not allowed."""

    def __init__(self, path: Path, key_type: type[_K], value_type: type[_V]) -> None:
        self.path = path
        self.key_type = key_type
        self.value_type = value_type
        self.fd = obj_get(path)
        self.info = map_info(self.fd, str(path))
        self.percpu = self.info.map_type in PERCPU_TYPES
        if (self.info.key_size, self.info.value_size) != (ctypes.sizeof(key_type), ctypes.sizeof(value_type)):
            self.close()
            raise BpfError(
                f"map {path.name}: pinned key/value sizes {self.info.key_size}/{self.info.value_size}, "
                f"this build expects {ctypes.sizeof(key_type)}/{ctypes.sizeof(value_type)}"
            )
        # Per-CPU values are laid out one per possible CPU, each rounded up to 8 bytes.
        self._slot = (ctypes.sizeof(value_type) + 7) & ~7
        self._ncpu = possible_cpus() if self.percpu else 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buffer(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._slot * self._ncpu)

    def _values(self, raw: bytes) -> list[_V]:
        return [self.value_type.from_buffer_copy(raw, i * self._slot) for i in range(self._ncpu)]

    def lookup_percpu(self, key: _K) -> list[_V] | None:
        buf = self._value_buffer()
        ret = _call(
            "bpf_map_lookup_elem",
            self.fd,
            ctypes.byref(key),
            buf,
            what=self._what("lookup"),
            ok=(errno.ENOENT,),
        )
        return None if ret < 0 else self._values(buf.raw)

    def lookup(self, key: _K) -> _V | None:
        if self.percpu:
            raise BpfError(f"map {self.path.name} is per-CPU: use lookup_percpu")
        values = self.lookup_percpu(key)
        return None if values is None else values[0]

    def update(self, key: _K, value: _V | Sequence[_V], flags: int = BPF_ANY) -> None:
        per_cpu = list(value) if isinstance(value, Sequence) else [value] * self._ncpu
        buf = self._value_buffer()
        for i, v in enumerate(per_cpu):
            ctypes.memmove(ctypes.addressof(buf) + i * self._slot, ctypes.addressof(v), ctypes.sizeof(v))
        _call("bpf_map_update_elem", self.fd, ctypes.byref(key), buf, flags, what=self._what("update"))

    def delete(self, key: _K) -> bool:
        return (
            _call(
                "bpf_map_delete_elem",
                self.fd,
                ctypes.byref(key),
                what=self._what("delete"),
                ok=(errno.ENOENT,),
            )
            >= 0
        )

    def keys(self) -> Iterator[_K]:
        """Every key, by get_next_key; an entry deleted meanwhile may restart the walk (hash)."""
        key: _K | None = None
        while True:
            nxt = self.key_type()
            ret = _call(
                "bpf_map_get_next_key",
                self.fd,
                None if key is None else ctypes.byref(key),
                ctypes.byref(nxt),
                what=self._what("iterate"),
                ok=(errno.ENOENT,),
            )
            if ret < 0:
                return
            yield nxt
            key = nxt

    def items(self, batch: int = 1024) -> Iterator[tuple[_K, list[_V]]]:
        """Every (key, per-CPU values): ``bpf_map_lookup_batch`` where the map supports it."""
        try:
            yield from self._items_batched(batch)
        except _NoBatch:
            for key in self.keys():
                values = self.lookup_percpu(key)
                if values is not None:
                    yield key, values

    def _items_batched(self, batch: int) -> Iterator[tuple[_K, list[_V]]]:
        ksize = ctypes.sizeof(self.key_type)
        keys = ctypes.create_string_buffer(ksize * batch)
        values = ctypes.create_string_buffer(self._slot * self._ncpu * batch)
        token_in = ctypes.create_string_buffer(max(ksize, 8))
        token_out = ctypes.create_string_buffer(max(ksize, 8))
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            ret = _call(
                "bpf_map_lookup_batch",
                self.fd,
                None if first else token_in,
                token_out,
                keys,
                values,
                ctypes.byref(count),
                ctypes.byref(opts),
                what=self._what("batch lookup"),
                ok=(errno.ENOENT, errno.EINVAL, errno.ENOTSUP, 524),
            )
            if ret < 0 and -ret != errno.ENOENT:
                if first:
                    raise _NoBatch
                raise BpfError(f"{self._what('batch lookup')}: {os.strerror(-ret)}")
            step = self._slot * self._ncpu
            for i in range(count.value):
                key = self.key_type.from_buffer_copy(keys.raw, i * ksize)
                yield key, self._values(values.raw[i * step : (i + 1) * step])
            if ret < 0:  # ENOENT: that was the last batch
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def update_batch(self, items: Sequence[tuple[_K, _V]]) -> int:
        """Write many entries with one syscall where supported; returns how many were written."""
        if not items or self.percpu:
            for key, value in items:
                self.update(key, value)
            return len(items)
        keys = b"".join(bytes(k) for k, _ in items)
        values = b"".join(bytes(v) for _, v in items)
        return self.update_batch_raw(keys, values)

    def update_batch_raw(self, keys: bytes | bytearray, values: bytes | bytearray) -> int:
        """:meth:`update_batch` of keys and values already packed back to back
        (``layout.packer``); one value per entry, so not for per-CPU maps."""
        ksize, vsize = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        count = len(keys) // ksize
        if self.percpu:
            raise BpfError(f"map {self.path.name} is per-CPU: use update_batch")
        if len(keys) != count * ksize or len(values) != count * vsize:
            raise ValueError(
                f"batch for map {self.path.name}: {len(keys)} key bytes and {len(values)} value bytes "
                f"are not whole {ksize}-byte keys and {vsize}-byte values of the same count"
            )
        if not count:
            return 0
        count_io = ctypes.c_uint32(count)
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        ret = _call(
            "bpf_map_update_batch",
            self.fd,
            (ctypes.c_char * len(keys)).from_buffer_copy(keys),
            (ctypes.c_char * len(values)).from_buffer_copy(values),
            ctypes.byref(count_io),
            ctypes.byref(opts),
            what=self._what("batch update"),
            ok=(errno.EINVAL, errno.ENOTSUP, 524),
        )
        if ret < 0:
            for i in range(count):
                key = self.key_type.from_buffer_copy(keys, i * ksize)
                self.update(key, self.value_type.from_buffer_copy(values, i * vsize))
        return count

    def clear(self) -> int:
        """Delete every entry (arrays cannot shrink: their entries are zeroed instead)."""
        if self.info.map_type in (MAP_ARRAY, MAP_PERCPU_ARRAY):
            zero = self.value_type()
            for i in range(self.info.max_entries):
                self.update(self.key_type.from_buffer_copy(i.to_bytes(4, "little")), zero)
            return self.info.max_entries
        return sum(1 for key in list(self.keys()) if self.delete(key))

    def count(self) -> int:
        return sum(1 for _ in self.items())

    def _what(self, op: str) -> str:
        return f"{op} in map {self.path.name}"


class _NoBatch(Exception):
    pass


# ---- what the program's maps look like ----------------------------------------------
@dataclass(frozen=True)
class MapSpec:
    map_type: int
    key: type[ctypes.Structure] | None
    value: type[ctypes.Structure] | None
    max_entries: int


def map_specs(limits: RelayLimits) -> dict[str, MapSpec]:
    """The maps ``bpf/maps.h`` declares, with the sizes a configuration compiles them to."""
    flow_key, flow_value = layout.FlowKey, layout.FlowValue
    return {
        "counters": MapSpec(MAP_PERCPU_ARRAY, U32, layout.Counter, layout.STAT_MAX),
        "vips": MapSpec(MAP_HASH, layout.VipKey, layout.VipValue, limits.max_vips),
        "backends": MapSpec(MAP_HASH, layout.BackendKey, layout.BackendValue, limits.max_backends),
        "route_keys": MapSpec(MAP_ARRAY, U32, layout.RouteKey, layout.MAX_ROUTE_KEYS),
        "config": MapSpec(MAP_ARRAY, U32, layout.RelayConfigMap, 1),
        "flows": MapSpec(MAP_LRU_HASH, flow_key, flow_value, limits.max_flows),
        "pending": MapSpec(MAP_LRU_HASH, flow_key, flow_value, limits.max_pending),
        "rate_sources": MapSpec(MAP_LRU_HASH, Addr, U64, limits.max_rate_sources),
        "rate_global": MapSpec(MAP_PERCPU_ARRAY, U32, U64, 1),
        "rate_slow": MapSpec(MAP_PERCPU_ARRAY, U32, U64, 1),
        "rate_tags": MapSpec(MAP_LRU_HASH, layout.RateTagKey, U64, limits.max_rate_sources),
        "rate_slow_sources": MapSpec(MAP_LRU_HASH, Addr, U64, limits.max_rate_sources),
        "vip_addrs": MapSpec(MAP_HASH, Addr, U32, limits.max_vips),
        "events": MapSpec(MAP_RINGBUF, None, None, limits.events_pages * os.sysconf("SC_PAGE_SIZE")),
        "nexthops": MapSpec(MAP_LRU_HASH, layout.NexthopKey, layout.NexthopValue, limits.max_nexthops),
        "nexthop_generation": MapSpec(MAP_ARRAY, U32, U32, 1),
        "nexthop_stats": MapSpec(MAP_PERCPU_ARRAY, U32, U64, layout.NEXTHOP_STAT_MAX),
    }


def check_maps(infos: dict[str, MapInfo], limits: RelayLimits) -> None:
    """Raise BpfError naming the first map whose type or sizes differ from the configuration."""
    for name, spec in map_specs(limits).items():
        info = infos.get(name)
        if info is None:
            continue
        want = {
            "type": spec.map_type,
            "key size": ctypes.sizeof(spec.key) if spec.key else 0,
            "value size": ctypes.sizeof(spec.value) if spec.value else 0,
            "max_entries": spec.max_entries,
        }
        have = {
            "type": info.map_type,
            "key size": info.key_size,
            "value size": info.value_size,
            "max_entries": info.max_entries,
        }
        for field, value in want.items():
            if have[field] != value:
                raise BpfError(
                    f"map {name}: pinned {field} is {have[field]}, the configuration wants {value}; "
                    f"remove the old maps with `icegate relay detach` (flows are lost) or restore the limits"
                )


def pinned_map_infos(pin_dir: Path) -> dict[str, MapInfo]:
    """Info of every map pinned in ``pin_dir`` (empty when there is none)."""
    infos: dict[str, MapInfo] = {}
    if not pin_dir.is_dir():
        return infos
    for entry in sorted(pin_dir.iterdir()):
        if entry.name.startswith(PROG_PIN):
            continue
        fd = obj_get(entry)
        try:
            infos[entry.name] = map_info(fd, entry.name)
        finally:
            os.close(fd)
    return infos


# ---- programs -------------------------------------------------------------------------
@dataclass(frozen=True)
class TestRun:
    retval: int
    data: bytes
    duration_ns: int


def prog_test_run(
    prog_fd: int, frame: bytes, *, ingress_ifindex: int = 0, repeat: int = 1, headroom: int = 512
) -> TestRun:
    """Run an XDP program once (or ``repeat`` times) on ``frame``: BPF_PROG_TEST_RUN.

    ``bpf_fib_lookup`` resolves in the calling thread's network namespace, so enter the
    namespace that holds ``ingress_ifindex`` first (``icegate.netns.entered``).
    """
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + headroom)
    ctx = XdpMd(0, len(frame), 0, ingress_ifindex, 0, 0)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = len(data_out)
    if ingress_ifindex:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    opts.repeat = repeat
    _call("bpf_prog_test_run_opts", prog_fd, ctypes.byref(opts), what="BPF_PROG_TEST_RUN")
    return TestRun(int(opts.retval), data_out.raw[: opts.data_size_out], int(opts.duration))


@dataclass(frozen=True)
class XdpAttachment:
    prog_id: int
    mode: str  # "native", "generic", "offload" or "multi"


def xdp_query(ifindex: int) -> list[XdpAttachment]:
    """The XDP programs attached to ``ifindex`` (in the calling thread's namespace)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _call("bpf_xdp_query", ifindex, 0, ctypes.byref(opts), what=f"query XDP on ifindex {ifindex}")
    found = []
    for mode, pid in (
        ("native", opts.drv_prog_id),
        ("generic", opts.skb_prog_id),
        ("offload", opts.hw_prog_id),
    ):
        if pid:
            found.append(XdpAttachment(int(pid), mode))
    return found


def xdp_attach(ifindex: int, prog_fd: int, mode: str, *, replace_fd: int | None = None) -> None:
    """Attach (or atomically replace, the kernel swaps one pointer) an XDP program."""
    flags = MODE_FLAGS[mode]
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts), old_prog_fd=0)
    if replace_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        opts.old_prog_fd = replace_fd
    _call(
        "bpf_xdp_attach",
        ifindex,
        prog_fd,
        flags,
        ctypes.byref(opts),
        what=f"attach XDP ({mode}) to ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, mode: str) -> None:
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts), old_prog_fd=0)
    _call(
        "bpf_xdp_detach",
        ifindex,
        MODE_FLAGS[mode],
        ctypes.byref(opts),
        what=f"detach XDP ({mode}) from ifindex {ifindex}",
    )


def prog_fd_by_id(pid: int) -> int:
    return _call("bpf_prog_get_fd_by_id", pid, what=f"open program id {pid}")
