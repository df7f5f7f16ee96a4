"""The bpf tier's fixtures: one relay host namespace and one loaded program per session.

Compiling the program takes seconds, so it is loaded once; every test applies the state
it needs (``XdpRelay.apply``). Namespaces carry a per-process prefix and the pins a
per-process relay name; both are removed at the end, also after a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from labkit.bpf_harness import RelayHost, XdpRelay, relay_config, vectors
from labkit.support import prefixed_namespaces


@pytest.fixture(scope="session")
def bpf_prefix() -> Iterator[str]:
    with prefixed_namespaces(f"icgt{os.getpid() % 10000}b-") as prefix:
        yield prefix


@pytest.fixture(scope="session")
def relay_host(bpf_prefix: str) -> Iterator[RelayHost]:
    host = RelayHost(bpf_prefix, vectors()["topology"])
    try:
        host.build()
        yield host
    finally:
        host.remove()


@pytest.fixture(scope="session")
def xdp(relay_host: RelayHost) -> Iterator[XdpRelay]:
    relay = XdpRelay(relay_host, relay_config(f"test-bpf-{os.getpid()}", vectors()["state"]))
    try:
        relay.load()
        yield relay
    finally:
        relay.close()
