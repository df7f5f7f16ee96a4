"""Packing flows for the kernel refuses a value that does not fit its field, naming the
field, instead of a bare ``struct.error`` or a silent truncation by ctypes."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.datapath import layout
from controlplane.datapath.store import Flow
from controlplane.kernel.maps import flow_key_struct, flow_value_struct, pack_flows
from icegate.inet import addr16

KEY = (addr16("100.64.1.2"), 40000, 0)
GOOD = Flow(1, 1, 11, 5_000, 6_000, 1, 100, 1, 100)


def test_good_entries_pack() -> None:
    keys, values = pack_flows([(KEY, GOOD)])
    assert len(keys) == layout.FLOW_KEY.size and len(values) == layout.FLOW_VALUE.size


@pytest.mark.parametrize(
    ("flow", "field"),
    [
        (dataclasses.replace(GOOD, created_ns=-1), "FlowValue.created_ns = -1"),
        (dataclasses.replace(GOOD, last_seen_ns=1 << 64), "FlowValue.last_seen_ns"),
        (dataclasses.replace(GOOD, cluster=70_000), "FlowValue.backend.cluster = 70000"),
        (dataclasses.replace(GOOD, token_tag=-5), "FlowValue.token_tag"),
        (dataclasses.replace(GOOD, bytes_out=-1), "FlowValue.bytes_out"),
    ],
)
def test_a_value_out_of_range_names_its_field(flow: Flow, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        pack_flows([(KEY, GOOD), (KEY, flow)])
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        flow_value_struct(flow)  # ctypes alone would truncate it silently


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ((KEY[0], 70_000, 0), "FlowKey.client_port = 70000"),
        ((KEY[0], 0x1FFFF, 0), "FlowKey.client_port"),  # swap16 would fold it to 0xffff
        ((KEY[0], -1, 0), "FlowKey.client_port = -1"),
        ((KEY[0], 40000, 1 << 16), "FlowKey.vip_index"),
        ((KEY[0][:4], 40000, 0), "FlowKey.client_addr must be 16 bytes"),
    ],
)
def test_a_key_out_of_range_names_its_field(key: tuple[bytes, int, int], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        pack_flows([(key, GOOD)])
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        flow_key_struct(key)
