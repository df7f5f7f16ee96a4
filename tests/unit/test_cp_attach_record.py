"""Where the XDP program was attached: the record ``Loader.attach`` writes for ``status``
and ``detach`` run from another namespace (the namespace switch itself is tested in
tests/integration/test_xdp_relay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.kernel import loader
from icegate import netns


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(loader, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


def test_record_round_trip_and_own_namespace(run_dir: Path) -> None:
    pin_dir = Path("/sys/fs/bpf/icegate/r1")
    loader.write_attach_record(pin_dir, 42, {"pub0": "native", "priv0": "generic"})
    path = run_dir / "r1" / "attach.json"
    assert loader.attach_record_path(pin_dir) == path and [p.name for p in path.parent.iterdir()] == [
        "attach.json"  # written in one rename: no temporary file left
    ]
    record = loader.read_attach_record(pin_dir)
    assert record is not None
    assert (record.pin_dir, record.prog_id, record.interfaces) == (
        str(pin_dir),
        42,
        {"pub0": "native", "priv0": "generic"},
    )
    assert (record.netns_dev, record.netns_inode) == netns.identity()
    with loader.attach_namespace(pin_dir) as where:
        assert where is None  # attached here: nothing to enter
    loader.remove_attach_record(pin_dir)
    assert not path.parent.exists()


def test_another_relays_record_is_left_alone(run_dir: Path) -> None:
    """The same relay name under another bpffs is another relay."""
    loader.write_attach_record(Path("/other/bpffs/icegate/r1"), 7, {"eth0": "native"})
    mine = Path("/sys/fs/bpf/icegate/r1")
    assert loader.read_attach_record(mine) is None
    loader.remove_attach_record(mine)
    assert loader.read_attach_record(Path("/other/bpffs/icegate/r1")) is not None


def test_unreadable_or_gone_namespace_means_here(run_dir: Path) -> None:
    pin_dir = Path("/sys/fs/bpf/icegate/r2")
    path = loader.attach_record_path(pin_dir)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert loader.read_attach_record(pin_dir) is None
    record = {
        "pin_dir": str(pin_dir),
        "prog_id": 1,
        "netns_dev": 0,
        "netns_inode": 1,  # no namespace has inode 1 on device 0
        "netns_name": None,
        "interfaces": {},
    }
    path.write_text(json.dumps(record))
    assert loader.read_attach_record(pin_dir) is not None
    with loader.attach_namespace(pin_dir) as where:
        assert where is None
