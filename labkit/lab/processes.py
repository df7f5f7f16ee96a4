"""Processes started in the lab, recorded so that ``lab down`` ends them (and nothing else).

Each process has one JSON record, ``<lab dir>/<name>.json`` (pid, start time, argv,
namespace, log path), and a log, ``<lab dir>/<name>.log``. A record names exactly one
process: the pid *and* its start time (``/proc/<pid>/stat`` field 22), plus a check
that ``/proc/<pid>/cmdline`` still looks like the recorded argv, so a recycled pid is
never signalled. Processes start in their own session (a Ctrl-C in the terminal that
ran ``lab up`` does not reach them) through ``nsenter --net`` (:func:`icegate.netns.spawn`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icegate import netns
from icegate.errors import LinkError

PROCESS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STATE_FILE = "lab.json"  # the lab's own record; so "lab" is not a process name

log = logging.getLogger(__name__)

# Children of *this* Python process, kept so they are reaped when they end (no zombies,
# no "subprocess still running" warnings); processes started by another `icegate lab`
# run are ended through /proc only.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class LabProcess:
    name: str
    namespace: str
    argv: tuple[str, ...]
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: with the pid, names exactly one process
    log: str
    started_at: float  # unix time
    infra: bool = False  # started by `lab up` itself (Redis): ended after everything else

    @property
    def alive(self) -> bool:
        return same_process(self)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        data["alive"] = self.alive
        return data


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ")"
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    raw = raw.rstrip(b"\0")
    return [part.decode(errors="replace") for part in raw.split(b"\0")] if raw else []


def cmdline_matches(cmdline: Sequence[str], argv: Sequence[str], wrapper: Sequence[str]) -> bool:
    """Whether ``cmdline`` is ``argv`` as the kernel shows it.

    Allowed shapes: exactly ``argv``; the ``nsenter`` wrapper before it has exec'ed;
    a script run through its ``#!`` interpreter (``python3 /path/icegate relay run``);
    a process that rewrote its title (redis-server shows ``redis-server 10.70.0.100:6379``).
    All of them start, within their first three words, with the program's base name.
    """
    if not cmdline:
        return False
    if list(cmdline) in (list(argv), list(wrapper)):
        return True
    program = os.path.basename(argv[0])
    words = " ".join(cmdline).split()[:3]
    return any(os.path.basename(word) == program for word in words)


def reap() -> None:
    """Collect the exit status of every child of this process that has ended."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def alive_pid(pid: int, start_ticks: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start_ticks


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def same_process(record: LabProcess) -> bool:
    """Whether ``record``'s process is still running: same pid and start time, and it still
    looks like the recorded program (command line, or executable for retitled processes).

    The start time alone already tells a recycled pid apart; the program check guards
    against a wrong record. An empty command line (mid-exec, or mid-retitle) is not a
    mismatch.
    """
    if not alive_pid(record.pid, record.start_ticks):
        return False
    cmdline = _cmdline(record.pid)
    if not cmdline or cmdline_matches(cmdline, record.argv, netns.command(record.namespace, record.argv)):
        return True
    program = shutil.which(record.argv[0]) or record.argv[0]
    return _exe(record.pid) == os.path.realpath(program)


def identity(pid: int) -> tuple[int, int] | None:
    stat = _stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else (pid, stat[1])


def end(targets: Iterable[tuple[int, int]], timeout: float) -> list[int]:
    """SIGTERM every (pid, start ticks) still alive, SIGKILL what remains after ``timeout``.

    Returns the pids that were signalled. Each is checked against its start time just
    before every signal, so a pid recycled meanwhile is left alone.
    """
    live = [t for t in targets if alive_pid(*t)]
    signalled = [pid for pid, _ in live]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        for pid, ticks in live:
            if alive_pid(pid, ticks):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            live = [t for t in live if alive_pid(*t)]
            if live:
                time.sleep(0.01)
        if not live:
            break
    if live:
        raise LinkError(f"processes {', '.join(str(pid) for pid, _ in live)} survived SIGKILL")
    reap()
    return signalled


class Registry:
    """The JSON records in one lab's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> LabProcess | None:
        try:
            data = json.loads(self.path(name).read_text())
            data.pop("alive", None)
            data["argv"] = tuple(data["argv"])
            return LabProcess(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # not written by Registry.start (or cut short): name the file, never guess a pid
            raise LinkError(f"unreadable process record {self.path(name)}: {exc!r}") from exc

    def all(self) -> list[LabProcess]:
        if not self.directory.is_dir():
            return []
        records = []
        for path in self.directory.glob("*.json"):
            if path.name == STATE_FILE:
                continue
            try:
                record = self.read(path.stem)
            except LinkError as exc:
                # `lab down` still ends whatever runs in the lab's namespaces (by namespace)
                log.warning("skipping %s", exc)
                continue
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.started_at)

    def forget(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def start(
        self,
        name: str,
        namespace: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | Path | None = None,
        infra: bool = False,
    ) -> LabProcess:
        if not PROCESS_NAME_RE.match(name) or name == Path(STATE_FILE).stem:
            raise ValueError(f"process name {name!r} must match {PROCESS_NAME_RE.pattern} and not be 'lab'")
        if not argv:
            raise ValueError("empty argv")
        program = argv[0]
        if ("/" in program and not os.access(program, os.X_OK)) or (
            "/" not in program and not shutil.which(program)
        ):
            raise LinkError(f"cannot start {name}: {program} is not an executable program")
        previous = self.read(name)
        if previous is not None and previous.alive:
            raise LinkError(f"process {name} is already running (pid {previous.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"{name}.log"
        full_env = None if env is None else {**os.environ, **env}
        with open(log_path, "ab") as out:
            out.write(f"=== {time.strftime('%F %T')} {namespace}: {' '.join(argv)}\n".encode())
            out.flush()
            child = netns.spawn(
                namespace,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        _CHILDREN[child.pid] = child
        stat = _stat(child.pid)
        record = LabProcess(
            name=name,
            namespace=namespace,
            argv=tuple(argv),
            pid=child.pid,
            start_ticks=stat[1] if stat else 0,
            log=str(log_path),
            started_at=time.time(),
            infra=infra,
        )
        tmp = self.path(name).with_suffix(".tmp")
        data = asdict(record)
        data["argv"] = list(record.argv)
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path(name))
        return record

    def stop(self, records: Iterable[LabProcess], timeout: float) -> list[str]:
        """End the recorded processes that are still the same processes; forget all of them."""
        records = list(records)
        targets = [(r.pid, r.start_ticks) for r in records if same_process(r)]
        end(targets, timeout)
        stopped = [r.name for r in records if (r.pid, r.start_ticks) in targets]
        for r in records:
            self.forget(r.name)
        return stopped
