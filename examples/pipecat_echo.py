"""A Pipecat pipeline as the agent behind an icegate transceiver: it echoes each utterance.

    pip install 'icegate[pipecat]'         # or scripts/setup --for test
    python examples/pipecat_echo.py --listen 127.0.0.1:8765
    icegate agent check ws://127.0.0.1:8765/
    icegate transceiver run ... --agent-url ws://127.0.0.1:8765/

The pipeline is ``transport.input() -> Echo() -> transport.output()``. ``Echo`` plays
the caller's utterance back once the turn ends, the way a Pipecat TTS service speaks
(``TTSStartedFrame``, ``TTSAudioRawFrame``s, ``TTSStoppedFrame``), says what it does
(``TTSTextFrame``: a ``transcript`` from the agent) and sends ``{"echo_ms": N}`` as
application data. It hears the caller at 16 kHz and speaks at 16 kHz into a transport
negotiated at 24 kHz: Pipecat's output transport resamples, as it would for a TTS at
another rate. Replace ``Echo`` with STT -> LLM -> TTS services for a real agent
(docs/PIPECAT.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import deque

from aiohttp import web
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from transceiver.agent.pipecat_transport import IcegateParams, IcegateTransport, make_app

PARAMS = IcegateParams(input_rate=16000, output_rate=24000, frame_ms=20)
PREROLL_MS = 40  # replayed before the detected onset: the VAD needs a few frames to be sure
MAX_UTTERANCE_MS = 30_000


class Echo(FrameProcessor):
    """Records from the VAD's onset to its stop (pauses included); replays it when the turn ends."""

    def __init__(self) -> None:
        super().__init__()
        self._recent: deque[bytes] = deque(maxlen=100)  # the last frames before speech
        self._utterance: list[bytes] | None = None
        self._listening = False
        self._rate = PARAMS.input_rate

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._rate = frame.sample_rate
            if self._utterance is not None and self._listening:
                if len(self._utterance) * 20 < MAX_UTTERANCE_MS:
                    self._utterance.append(frame.audio)
            else:
                self._recent.append(frame.audio)
            return  # the caller's voice goes no further
        if isinstance(frame, VADUserStartedSpeakingFrame):
            if self._utterance is None:
                keep = min(len(self._recent), round((frame.start_secs * 1000 + PREROLL_MS) / 20))
                self._utterance = list(self._recent)[len(self._recent) - keep :]
            self._listening = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._listening = False
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._utterance:
            await self.push_frame(frame, direction)
            await self._replay(b"".join(self._utterance))
            self._utterance = None
            self._recent.clear()
            return
        await self.push_frame(frame, direction)

    async def _replay(self, audio: bytes) -> None:
        ms = len(audio) * 1000 // (2 * self._rate)
        await self.push_frame(OutputTransportMessageFrame(message={"echo_ms": ms}))
        await self.push_frame(TTSStartedFrame())
        await self.push_frame(TTSTextFrame(text=f"echoing {ms} ms", text_type="sentence"))
        step = self._rate // 50 * 2  # 20 ms, as a TTS would stream it
        for i in range(0, len(audio), step):
            await self.push_frame(
                TTSAudioRawFrame(audio=audio[i : i + step], sample_rate=self._rate, num_channels=1)
            )
        await self.push_frame(TTSStoppedFrame())


async def bot(transport: IcegateTransport) -> None:
    """One call: the pipeline runs until either side hangs up."""
    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    worker = PipelineWorker(
        pipeline, params=transport.pipeline_params(), enable_rtvi=False, idle_timeout_secs=None
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    web.run_app(make_app(bot, PARAMS), host=host or "127.0.0.1", port=int(port), access_log=None)


if __name__ == "__main__":
    main()
