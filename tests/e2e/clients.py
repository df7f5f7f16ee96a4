"""Test-side helpers around the product's voice client (:mod:`transceiver.client`).

:class:`DirectAnswerer` is a plain aiortc answerer with its own sockets and no relay:
the baseline for set-up time comparisons. :func:`run_in_namespace` runs a client
coroutine on its own event loop in a thread inside a lab namespace.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from icegate import netns
from transceiver.client import VoiceClient

T = TypeVar("T")


class DirectAnswerer:
    """A plain aiortc answerer (own sockets, no relay, no mux) that echoes audio back."""

    def __init__(self) -> None:
        self.peers: list[RTCPeerConnection] = []

    async def answer(self, offer: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.peers))


async def connect_direct(client: VoiceClient, answerer: DirectAnswerer, timeout: float = 15.0) -> float:
    """Like :meth:`VoiceClient.connect` but answered in-process by ``answerer``: the baseline."""
    offer = await client.offer()
    started = time.monotonic()
    answer = await answerer.answer(offer)
    return await client.accept(answer, started, timeout)


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values))) if values else float("nan")


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
                result.append(asyncio.run(main()))
            else:
                with netns.entered(namespace):
                    result.append(asyncio.run(main()))
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
