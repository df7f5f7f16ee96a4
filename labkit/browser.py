"""Headless Chromium in a lab namespace: its flags, the page's web server, and a clean end.

Shared by the Chromium e2e tests and B5 (bench/b5_voice.py). The page is served on
127.0.0.1 inside the client's namespace and POSTs its JSON report to ``/report``;
Chromium runs as a session leader so that :func:`end_session` can remove every process
it started (renderers, GPU and network services) and nothing else.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from icegate import netns
from icegate.errors import IcegateError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",  # pages play what they hear
]  # fmt: skip
MEDIA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


class PageServer:
    """``page`` on GET and the page's reports (``POST``, JSON) in :attr:`reports`, on
    127.0.0.1 inside ``namespace``."""

    def __init__(self, namespace: str, page: Path) -> None:
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        reports = self.reports

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                reports.put(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        with netns.entered(namespace):  # the listening socket lives in the client's namespace
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def first_report(
    namespace: str, argv: list[str], server: PageServer, log: Path, timeout: float
) -> dict[str, Any]:
    """Run Chromium (``argv``, its page's URL last) in ``namespace``, its output in ``log``;
    the page's first report to ``server``. Chromium's session and the server end either way;
    IcegateError with the log's tail if no report came within ``timeout`` seconds."""
    with log.open("w") as out:
        proc = netns.spawn(namespace, argv, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        return server.reports.get(timeout=timeout)
    except queue.Empty:
        raise IcegateError(f"no report from Chromium:\n{log.read_text()[-3000:]}") from None
    finally:
        end_session(proc)
        server.close()


def end_session(leader: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """End Chromium (started as a session leader) and every process of its session only;
    RuntimeError if some survive ``timeout`` seconds of SIGKILL."""
    if leader.poll() is None:
        leader.terminate()
        try:
            leader.wait(10)
        except subprocess.TimeoutExpired:
            leader.kill()
            leader.wait(5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and session_of(int(p.name)) == leader.pid
        ]
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise RuntimeError(f"processes of chromium's session {leader.pid} survived")


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (``/proc/<pid>/stat``), or None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None
