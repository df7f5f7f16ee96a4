"""The lab's process records: written by start, read back exactly; foreign or damaged
JSON in the lab directory is named in an error and skipped by ``all`` (``lab down``
still ends what runs in the lab's namespaces, by namespace)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from icegate import netns
from icegate.errors import LinkError
from labkit.lab.processes import Registry


def test_start_read_stop_round_trip(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    record = registry.start("sleeper", "", [sys.executable, "-c", "import time; time.sleep(30)"])  # "": here
    assert netns.command("", record.argv) == list(record.argv)  # no nsenter wrapper to race with
    try:
        assert registry.read("sleeper") == record and record.alive
        assert [r.name for r in registry.all()] == ["sleeper"]
    finally:
        assert registry.stop([record], timeout=5) == ["sleeper"]
    assert not record.alive and registry.read("sleeper") is None


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"name": "x", "pid": 1}),  # no argv
        json.dumps([1, 2, 3]),
        json.dumps({"name": "x", "argv": ["a"], "pid": 1, "surprise": True}),
    ],
)
def test_foreign_record_named_and_skipped(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "stranger.json").write_text(text)
    (tmp_path / "lab.json").write_text("{}")  # the lab's own record is not a process
    registry = Registry(tmp_path)
    with pytest.raises(LinkError, match=r"unreadable process record .*stranger\.json"):
        registry.read("stranger")
    with caplog.at_level(logging.WARNING):
        assert registry.all() == []
    assert "stranger.json" in caplog.text
