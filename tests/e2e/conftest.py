"""Fixtures of the end-to-end tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.lab import Lab


@pytest.fixture
def lab_name(ns_prefix: str) -> Iterator[str]:
    """A unique name for a lab that the test's command builds; whatever it leaves behind
    (it should leave nothing) is removed."""
    name = ns_prefix.rstrip("-")
    try:
        yield name
    finally:
        Lab.load(name).down()
