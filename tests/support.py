"""Helpers shared by the test tiers: real redis-server processes, owned subprocesses, ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from icegate import netns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Processes:
    """Subprocesses a test started; all are ended (by pid) when the test ends."""

    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, argv: Sequence[str], *, ns: str | None = None, **popen: Any) -> subprocess.Popen[Any]:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.STDOUT)
        proc = netns.spawn(ns, argv, **popen) if ns else subprocess.Popen(list(argv), **popen)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.started.clear()


@dataclass
class RedisServer:
    host: str
    port: int
    proc: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is not installed: run scripts/setup")
    return found


@contextlib.contextmanager
def redis_server(
    procs: Processes, host: str = "127.0.0.1", port: int | None = None, ns: str | None = None
) -> Iterator[RedisServer]:
    """A real redis-server (no persistence) on ``host:port``, optionally inside namespace ``ns``."""
    port = port or free_port()
    argv = [
        redis_binary(),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    proc = procs.start(argv, ns=ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        cmd = ["redis-cli", "-h", host, "-p", str(port), "ping"]
        argv2 = netns.command(ns, cmd) if ns else cmd
        out = subprocess.run(argv2, capture_output=True, text=True)
        return out.stdout.strip() == "PONG"

    wait_for(ready, timeout=10, what=f"redis-server on {host}:{port}")
    try:
        yield RedisServer(host, port, proc)
    finally:
        procs.stop(proc)
