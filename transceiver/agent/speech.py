"""An agent that listens and speaks, offline: pocketsphinx -> rules -> espeak-ng.

- Recognition: pocketsphinx (PyPI ``pocketsphinx``; its wheel carries the US English
  acoustic model and dictionary) on the caller's voice at 16 kHz, fed frame by frame as
  it arrives. The search is a JSGF grammar of the phrases the dialogue knows
  (:data:`DIALOGUE`): a small closed vocabulary is what makes an offline recogniser
  reliable on synthetic voices (measured: 13/13 phrases with the grammar, 4/13 with the
  general language model, docs/AGENTS.md).
- Dialogue: a table from a recognised phrase to an answer; anything else gets
  :data:`NOT_UNDERSTOOD`.
- Synthesis: espeak-ng (:mod:`transceiver.agent.voice`), on a worker thread.

Both sides' words go to the client as ``transcript`` events (role ``user``, then
``agent``) so a client, a log or the demo can compare what was said and heard.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from transceiver.agent.sdk import Agent, BargeIn, EndOfTurn, SpeechStarted
from transceiver.agent.voice import synthesize

logger = logging.getLogger(__name__)

RATE = 16000  # what the acoustic model was trained on
POOL_SIZE = 2  # recognisers ready at start (concurrent calls beyond it load their own)
MAX_POOL = 16  # kept for reuse when calls end
PREROLL_MS = 200  # fed to the recogniser before the detected onset: the VAD decides late
# What the agent understands and what it answers (lower case, words the model's dictionary has).
DIALOGUE: dict[str, str] = {
    "hello": "hello how can i help you",
    "good morning": "good morning to you",
    "what time is it": "it is time for a demo",
    "what is the weather": "the weather is sunny",
    "tell me a joke": "i have no jokes today",
    "what is your name": "my name is ice gate",
    "how are you": "i am fine thank you",
    "thank you": "you are welcome",
    "goodbye": "goodbye and have a nice day",
}
NOT_UNDERSTOOD = "sorry please say that again"


def grammar(phrases: Iterable[str], name: str = "phrases") -> str:
    """A JSGF grammar accepting exactly one of ``phrases``."""
    alternatives = " | ".join(sorted(set(phrases)))
    return f"#JSGF V1.0;\ngrammar {name};\npublic <phrase> = {alternatives};\n"


class Recognizer:
    """pocketsphinx over one utterance at a time, constrained to ``phrases`` (None: the general model)."""

    def __init__(self, phrases: Iterable[str] | None = None) -> None:
        from pocketsphinx import Decoder

        self._decoder: Any = Decoder(samprate=RATE, loglevel="FATAL")
        if phrases is not None:
            self._decoder.add_jsgf_string("phrases", grammar(phrases))
            self._decoder.activate_search("phrases")
        self.active = False

    def start(self) -> None:
        self._decoder.start_utt()
        self.active = True

    def feed(self, samples: np.ndarray) -> None:
        if self.active:
            self._decoder.process_raw(samples.astype("<i2").tobytes(), False, False)

    def finish(self) -> str:
        """The utterance's words ("" when nothing matched)."""
        if not self.active:
            return ""
        self.active = False
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return str(hyp.hypstr) if hyp is not None else ""

    def recognize(self, samples: np.ndarray) -> str:
        self.start()
        for i in range(0, samples.size, RATE // 50):
            self.feed(samples[i : i + RATE // 50])
        return self.finish()


def answer(heard: str) -> str:
    return DIALOGUE.get(heard.strip().lower(), NOT_UNDERSTOOD)


class SpeechAgent(Agent):
    input_rate = RATE
    output_rate = 24000
    voice = "en-us+f2"
    wpm = 130

    # Loading the model takes 0.3-1 s and holds the GIL (the loop answers no pings meanwhile):
    # recognisers are made before the server listens and reused by later calls.
    _pool: ClassVar[list[Recognizer]] = []

    def __init__(self) -> None:
        super().__init__()
        self._recognizer = self._pool.pop() if self._pool else Recognizer(DIALOGUE)
        self._recent: deque[np.ndarray] = deque(maxlen=PREROLL_MS // self.frame_ms + 10)

    @classmethod
    def warm_up(cls) -> None:
        while len(cls._pool) < POOL_SIZE:
            cls._pool.append(Recognizer(DIALOGUE))

    async def on_close(self) -> None:
        self._recognizer.finish()
        if len(self._pool) < MAX_POOL:
            self._pool.append(self._recognizer)

    async def on_audio(self, samples: np.ndarray) -> None:
        if self._recognizer.active:
            self._recognizer.feed(samples)
        else:
            self._recent.append(samples)

    async def on_speech_started(self, ev: SpeechStarted) -> None:
        if ev.resumed or self._recognizer.active:
            return
        self._recognizer.start()
        keep = (ev.onset_ms + PREROLL_MS) // self.frame_ms
        for samples in list(self._recent)[-keep:]:
            self._recognizer.feed(samples)
        self._recent.clear()

    async def on_end_of_turn(self, ev: EndOfTurn) -> None:
        heard = self._recognizer.finish()
        reply = answer(heard)
        logger.info(
            "turn session=%s turn=%d heard=%r answer=%r",
            self.hello and self.hello.session,
            ev.turn,
            heard,
            reply,
        )
        await self.transcript(heard, role="user")
        pcm = await asyncio.to_thread(synthesize, reply, self.output_rate, voice=self.voice, wpm=self.wpm)
        await self.transcript(reply, role="agent")
        self.respond(pcm)

    async def on_barge_in(self, ev: BargeIn) -> None:
        logger.info("barge-in session=%s heard_ms=%d", self.hello and self.hello.session, ev.heard_ms)
