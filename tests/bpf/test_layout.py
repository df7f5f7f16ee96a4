"""The Python mirror (controlplane/datapath/layout.py) against what the compilers made of shared.h.

Two witnesses: the ctypes Key/Leaf classes bcc generated for the maps of the loaded
program, and a small C program compiled with gcc that prints every struct's size, every
field's offset and size, every enum value and limit. A change on one side that is not
made on the other fails here (one source of truth for every wire layout: bpf/shared.h).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from icegate.bpf import source_dir

from controlplane import config
from controlplane.config import RelayLimits
from controlplane.datapath import layout
from controlplane.datapath.store import Flow
from controlplane.kernel.maps import flow_key_struct, flow_value_struct, pack_flows
from icegate import stun, token
from icegate.inet import addr16
from icegate.rfc7983 import PacketKind
from labkit.bpf_harness import XdpRelay

SHARED_H = source_dir() / "shared.h"
# C enum prefix of each mirrored enum.
ENUMS: dict[str, type[IntEnum]] = {
    "STAT_": layout.Stat,
    "VERDICT_": layout.Verdict,
    "PACKET_": PacketKind,
    "BACKEND_": layout.BackendState,
    "FLOW_EVENT_": layout.FlowEventKind,
    "NEXTHOP_STAT_": layout.NexthopStat,
}
# Each limit of shared.h the Python code runs with, and the module it runs from.
LIMITS: dict[str, Any] = {
    "MAX_ROUTE_KEYS": layout,
    "MAX_ROLE_IFACES": config,
    "MAX_STUN_ATTRS": stun,
    "MAX_USERNAME_LEN": stun,
    "MAX_UFRAG_LEN": stun,
    "TOKEN_CHARS": token,
    "TOKEN_BYTES": token,
    "TOKEN_VERSION": token,
}
VERDICT_MASKS = {"FORWARD": "STAT_FORWARD_MASK", "SLOW": "STAT_SLOW_MASK", "DROP": "STAT_DROP_MASK"}


def describe(cls: Any) -> tuple[int, list[tuple[str, int, int]]]:
    """(size, [(field, offset, size)]) of a ctypes structure."""
    return ctypes.sizeof(cls), [
        (name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_
    ]


def bcc_structs(xdp: XdpRelay) -> dict[str, Any]:
    """Every struct class bcc generated for the program's maps, by C name (nested ones too)."""
    found: dict[str, Any] = {}

    def walk(cls: Any) -> None:
        while isinstance(cls, type) and issubclass(cls, ctypes.Array):
            cls = cls._type_  # per-CPU leaves are arrays of the value struct
        if isinstance(cls, type) and issubclass(cls, ctypes.Structure) and cls.__name__ not in found:
            found[cls.__name__] = cls
            for _, ftype, *_ in cls._fields_:
                walk(ftype)

    for name in (
        "counters",
        "vips",
        "backends",
        "route_keys",
        "config",
        "flows",
        "pending",
        "rate_tags",
        "nexthops",
    ):
        table = xdp.loader.bpf.get_table(name.encode())
        walk(table.Key)
        walk(table.Leaf)
    return found


def test_bcc_map_structs_match_layout(xdp: XdpRelay) -> None:
    generated = bcc_structs(xdp)
    mirrored = set(layout.STRUCTS) - {"flow_event"}  # the ring buffer record has no map type
    assert mirrored <= set(generated), f"no map uses {mirrored - set(generated)}"
    for name in mirrored:
        assert describe(layout.STRUCTS[name]) == describe(generated[name]), name


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """name -> value printed by a gcc-compiled program that includes shared.h."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed for the layout test: apt-get install gcc")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "shared.h"', "int main(void) {"]
    for cname, cls in layout.STRUCTS.items():
        lines.append(f'printf("sizeof {cname} %zu\\n", sizeof(struct {cname}));')
        for field, *_ in cls._fields_:
            lines.append(f'printf("offset {cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
            lines.append(f'printf("size {cname}.{field} %zu\\n", sizeof(((struct {cname} *)0)->{field}));')
    for prefix, enum in ENUMS.items():
        for member in enum:
            lines.append(f'printf("enum {prefix}{member.name} %d\\n", (int){prefix}{member.name});')
    for name in (*LIMITS, "STAT_MAX", *(n.upper() for n in RelayLimits._BOUNDS)):
        lines.append(f'printf("limit {name} %lld\\n", (long long){name});')
    for verdict, mask in VERDICT_MASKS.items():
        lines.append(f'printf("mask {verdict} %lld\\n", (long long){mask});')
    lines += ["return 0;", "}"]
    work: Path = tmp_path_factory.mktemp("layout")
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [gcc, "-Wall", "-Werror", f"-I{source_dir()}", "-o", str(work / "layout"), str(work / "layout.c")],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    facts = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        facts[f"{kind} {name}"] = int(value)
    return facts


def test_gcc_struct_layouts_match(c_facts: dict[str, int]) -> None:
    for cname, cls in layout.STRUCTS.items():
        size, fields = describe(cls)
        assert c_facts[f"sizeof {cname}"] == size == layout.EXPECTED_SIZES[cname], cname
        for field, offset, fsize in fields:
            assert (c_facts[f"offset {cname}.{field}"], c_facts[f"size {cname}.{field}"]) == (
                offset,
                fsize,
            ), f"{cname}.{field}"


def test_gcc_enum_values_match(c_facts: dict[str, int]) -> None:
    for prefix, enum in ENUMS.items():
        for member in enum:
            assert c_facts[f"enum {prefix}{member.name}"] == member.value, f"{prefix}{member.name}"
    assert c_facts["limit STAT_MAX"] == layout.STAT_MAX == len(layout.Stat)


def test_every_c_enum_member_is_mirrored() -> None:
    """The other direction: a member added to shared.h but not to Python fails too."""
    text = SHARED_H.read_text()
    table = text[text.index("#define STAT_TABLE(X)") : text.index("enum stat {")]
    for prefix, enum in ENUMS.items():
        declared = {m.group(1): int(m.group(2)) for m in re.finditer(rf"\b{prefix}(\w+) = (\d+)", text)}
        if prefix == "STAT_":  # enum stat is STAT_TABLE: a stat's value is its row
            declared = {name: i for i, name in enumerate(re.findall(r"^\s*X\((\w+),", table, re.MULTILINE))}
        declared.pop("MAX", None)
        assert declared == {m.name: m.value for m in enum}, prefix


def test_limits_match(c_facts: dict[str, int]) -> None:
    for name, module in LIMITS.items():
        assert c_facts[f"limit {name}"] == getattr(module, name), name
    defaults = RelayLimits()
    for name in RelayLimits._BOUNDS:
        assert c_facts[f"limit {name.upper()}"] == getattr(defaults, name), f"default of {name}"


def test_packed_formats_are_the_struct_layouts() -> None:
    """``layout.packer`` derives its formats from the ctypes structs: same size for every
    struct (so no implicit padding and the same offsets), and the flow formats that
    ``put_flows`` packs with are the ones shared.h documents."""
    for cname, cls in layout.STRUCTS.items():
        assert layout.packer(cls).size == ctypes.sizeof(cls) == layout.EXPECTED_SIZES[cname], cname
    assert (layout.FLOW_KEY.format, layout.FLOW_VALUE.format) == ("=16sHH", "=HHIQQQQQQ")


def test_packed_flows_are_the_ctypes_bytes() -> None:
    items = [
        ((addr16("100.64.1.2"), 40000, 0), Flow(1, 2, 0xDEADBEEF, 5, 6, 7, 8, 9, 10)),
        ((addr16("2001:db8::1"), 1, 3), Flow(65535, 65534, 0, 2**64 - 1, 0, 1, 2, 3, 4)),
    ]
    keys, values = pack_flows(items)
    assert bytes(keys) == b"".join(bytes(flow_key_struct(k)) for k, _ in items)
    assert bytes(values) == b"".join(bytes(flow_value_struct(f)) for _, f in items)
    with pytest.raises(ValueError, match="16 bytes, got 4"):
        pack_flows([((bytes(4), 1, 0), items[0][1])])


def test_gcc_verdicts_are_the_python_verdicts(c_facts: dict[str, int]) -> None:
    """finish() takes each stat's action from the verdict masks STAT_TABLE builds; Python's
    Stat.verdict reads the same table: both agree for every stat, and every stat has a verdict."""
    for stat in layout.Stat:
        in_masks = [v for v in VERDICT_MASKS if c_facts[f"mask {v}"] >> stat & 1]
        assert in_masks == ([] if stat.verdict is layout.Verdict.PASS else [stat.verdict.name]), stat.name
