"""Voice clients (:mod:`transceiver.client`) inside the lab: :func:`run_in_namespace` runs a
client coroutine on its own event loop (uvloop when installed, as :mod:`labkit.loadclient`
does) in a thread inside a lab namespace (the tests and ``bench.sessions`` use it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from icegate import netns
from labkit.loadclient import run_loop

T = TypeVar("T")


def run_in_namespace(
    namespace: str | None, main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 300
) -> T:
    """Run ``main()`` on a new event loop in a thread inside ``namespace`` (None: here); return its result.

    Every socket the coroutine opens (aiortc's ICE sockets, HTTP) lives in that namespace.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            if namespace is None:
                result.append(run_loop(main))
            else:
                with netns.entered(namespace):
                    result.append(run_loop(main))
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=body, name=f"client-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"client run in {namespace} did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]
