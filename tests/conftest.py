"""Fixtures for every tier. Everything a fixture creates it removes, also when the test fails.

Tiers (directories): unit (no root), bpf (BPF_PROG_TEST_RUN), integration (netns +
veth + real traffic), e2e (WebRTC sessions through the lab). The root tiers fail,
rather than skip, without root: a skipped tier in CI would be a green lie.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labkit.support import Processes, RedisServer, prefixed_namespaces, redis_server
from tests import programs

ROOT_TIERS = ("bpf", "integration", "e2e")
_ns_counter = itertools.count()

# Every external program this session executes, with the first test that ran it. A
# program missing from scripts/programs.txt fails the session (pytest_sessionfinish):
# the static scan of tests/unit/test_programs.py cannot see an argv built at run time.
_executed: dict[str, str] = {}


def _record_exec(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        program = programs.executed_program(args[1])
        if program and program not in _executed:
            _executed[program] = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]


sys.addaudithook(_record_exec)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    known = programs.inventory()
    missing = {program: test for program, test in _executed.items() if program not in known}
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for program, test in sorted(missing.items()):
            line = f"program {program!r} (first run by {test}) is not in scripts/programs.txt"
            if reporter:
                reporter.write_line(line, red=True)
            else:
                print(line, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ROOT_TIERS:
            item.add_marker(pytest.mark.root)


@pytest.fixture(autouse=True)
def _require_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this tier needs root: run `sudo scripts/test`")


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Start subprocesses through this; they are ended by pid after the test."""
    with Processes() as owned:
        yield owned


@pytest.fixture(scope="session")
def session_procs() -> Iterator[Processes]:
    with Processes() as owned:
        yield owned


@pytest.fixture(scope="session")
def redis(session_procs: Processes) -> Iterator[RedisServer]:
    """One real redis-server on loopback for the whole session (tests use distinct regions/keys)."""
    with redis_server(session_procs) as server:
        yield server


@pytest.fixture
def ns_prefix() -> Iterator[str]:
    """A unique namespace-name prefix; every namespace carrying it is removed afterwards."""
    with prefixed_namespaces(f"icgt{os.getpid() % 10000}x{next(_ns_counter)}-") as prefix:
        yield prefix
