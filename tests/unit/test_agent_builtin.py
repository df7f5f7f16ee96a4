"""transceiver.agent.builtin: the loopback agent B5 measures mouth-to-ear with."""

from __future__ import annotations

import asyncio

import numpy as np

from transceiver.agent import builtin


def test_loopback_agent_sends_each_bursts_first_loud_frame_back_at_once() -> None:
    sent: list[np.ndarray] = []

    class Probe(builtin.LoopbackAgent):
        def respond(self, pcm: np.ndarray, rate: int | None = None) -> int:
            sent.append(pcm)
            return len(sent)

    agent = Probe()
    quiet = np.zeros(960, np.int16)
    loud = builtin.tone(300.0, 20, 48000)
    faint = (loud // 100).astype(np.int16)  # -43 dBFS: line noise, not a burst

    async def feed() -> None:
        for frame in (quiet, loud, loud, faint, quiet, loud, quiet):
            await agent.on_audio(frame)

    asyncio.run(feed())
    assert len(sent) == 2 and all(s is loud for s in sent)
