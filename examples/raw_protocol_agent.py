#!/usr/bin/env python3
"""A tone-answering voice agent for icegate agent protocol version 1.

Written from docs/AGENT_PROTOCOL.md alone, by a developer who had not seen icegate's code
(the check that the document is enough to build an agent: issue 17). No icegate import;
only aiohttp and numpy, so the same shape ports to any language.

  python examples/raw_protocol_agent.py --port 23456 [--host 127.0.0.1]
  icegate agent check ws://127.0.0.1:23456/

Per call (one WebSocket):
  * handshake: hello -> accept (16 kHz in, 24 kHz out, 20 ms frames when offered)
  * reads every binary frame (the caller's audio) and tracks the turn's audio
  * on end_of_turn: transcript (user: what it "heard"), transcript (agent),
    data (turn statistics), response_started, 700 ms of 523 Hz paced to at most
    min(1 s, max_queued_ms/2) ahead of real time, response_done
  * on barge_in: stops the response in progress and sends its response_done
  * on hangup: stops and closes the socket
  * WebSocket pings are answered by aiohttp (autoping)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

PROTOCOL_VERSION = 1
MAX_EVENT_BYTES = 16_384
MAX_DATA_PAYLOAD_BYTES = 8_192

WANT_INPUT_RATE = 16_000
WANT_OUTPUT_RATE = 24_000
WANT_FRAME_MS = 20

TONE_HZ = 523.0
TONE_MS = 700
TONE_AMPLITUDE = 0.3

LEAD_MS = 1000  # the SDK's lead; §5 caps it at about max_queued_ms / 2
HANDSHAKE_TIMEOUT_S = 5.0  # ours, waiting for hello (the transceiver's own is 2 s for accept)

log = logging.getLogger("indep-agent")


class ProtocolError(Exception):
    pass


def choose(offered: Any, want: int, field: str) -> int:
    """Pick `want` if offered, else the offered value closest to it (ties: the larger)."""
    if (
        not isinstance(offered, list)
        or not offered
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in offered)
    ):
        raise ProtocolError(f"hello.audio.{field}: expected a non-empty list of integers, got {offered!r}")
    if want in offered:
        return want
    return min(offered, key=lambda v: (abs(v - want), -v))


def tone(rate: int, ms: int, hz: float) -> np.ndarray:
    n = rate * ms // 1000
    t = np.arange(n, dtype=np.float64) / rate
    pcm = TONE_AMPLITUDE * np.sin(2 * math.pi * hz * t)
    # 5 ms fades so the tone does not click
    fade = min(n // 2, rate * 5 // 1000)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        pcm[:fade] *= ramp
        pcm[-fade:] *= ramp[::-1]
    return np.round(pcm * 32767).astype("<i2")


class Call:
    """One call = one WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.session = "?"
        self.send_lock = asyncio.Lock()
        self.input_rate = self.output_rate = 0
        self.input_frame_ms = self.output_frame_ms = 0
        self.input_frame_bytes = self.output_frame_samples = 0
        self.max_queued_ms = 4000
        self.lead_ms = 1000
        # input accounting
        self.frames_in = 0
        self.bad_frames = 0
        self.turn_start_frame: int | None = None  # frame index (in input frames) where the current turn began
        self.turn_onset_ms = 0
        # responses
        self.next_response = 1
        self.response_id: int | None = None
        self.response_task: asyncio.Task | None = None
        self.closed = False

    # ---- sending -------------------------------------------------------------------
    async def send_event(self, ev: dict) -> None:
        text = json.dumps(ev, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) > MAX_EVENT_BYTES:
            raise ValueError(f"event {ev.get('type')} is over {MAX_EVENT_BYTES} bytes")
        if self.ws.closed:
            return
        async with self.send_lock:
            await self.ws.send_str(text)

    async def send_frame(self, frame: bytes) -> None:
        if self.ws.closed:
            return
        async with self.send_lock:
            await self.ws.send_bytes(frame)

    async def send_error(self, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.send_event({"type": "error", "code": code, "message": message})

    # ---- handshake -----------------------------------------------------------------
    async def handshake(self) -> bool:
        try:
            msg = await self.ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            await self.send_error("protocol", "no hello")
            await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"no hello")
            return False
        if msg.type != WSMsgType.TEXT:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return False
            await self.send_error("protocol", "the first message must be hello")
            await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"expected hello")
            return False
        try:
            hello = json.loads(msg.data)
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                raise ProtocolError("the first message must be a hello event")
            version = hello.get("version")
            if version != PROTOCOL_VERSION:
                await self.send_error(
                    "version", f"this agent speaks version {PROTOCOL_VERSION}, got {version!r}"
                )
                await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"unsupported version")
                return False
            self.session = str(hello.get("session", "?"))
            audio = hello.get("audio")
            if not isinstance(audio, dict):
                raise ProtocolError("hello.audio missing")
            if audio.get("encoding", "s16le") != "s16le" or audio.get("channels", 1) != 1:
                raise ProtocolError(
                    f"unsupported audio format {audio.get('encoding')!r}/{audio.get('channels')!r}"
                )
            self.input_rate = choose(audio.get("input_rates"), WANT_INPUT_RATE, "input_rates")
            self.output_rate = choose(audio.get("output_rates"), WANT_OUTPUT_RATE, "output_rates")
            frame_ms = choose(audio.get("frame_ms"), WANT_FRAME_MS, "frame_ms")
            flow = hello.get("flow") or {}
            if isinstance(flow.get("max_queued_ms"), (int, float)) and flow["max_queued_ms"] > 0:
                self.max_queued_ms = int(flow["max_queued_ms"])
        except (ValueError, ProtocolError) as e:  # json.JSONDecodeError is a ValueError
            await self.send_error("protocol", f"bad hello: {e}")
            await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"bad hello")
            return False

        self.input_frame_ms = self.output_frame_ms = frame_ms
        self.input_frame_bytes = self.input_rate * frame_ms // 1000 * 2
        self.output_frame_samples = self.output_rate * frame_ms // 1000
        # §5: no more than about half of max_queued_ms ahead; the SDK uses 1 s.
        self.lead_ms = min(LEAD_MS, self.max_queued_ms // 2)
        await self.send_event(
            {
                "type": "accept",
                "version": PROTOCOL_VERSION,
                "input_rate": self.input_rate,
                "output_rate": self.output_rate,
                "input_frame_ms": self.input_frame_ms,
                "output_frame_ms": self.output_frame_ms,
            }
        )
        log.info(
            "[%s] accepted: in %d Hz, out %d Hz, %d ms frames, metadata=%s, endpointing=%s",
            self.session,
            self.input_rate,
            self.output_rate,
            frame_ms,
            hello.get("metadata"),
            hello.get("endpointing"),
        )
        return True

    # ---- the call --------------------------------------------------------------------
    async def run(self) -> None:
        if not await self.handshake():
            return
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    self.on_frame(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        ev = json.loads(msg.data)
                    except ValueError:
                        log.warning("[%s] undecodable event ignored: %.80r", self.session, msg.data)
                        continue
                    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                        log.warning("[%s] event without a type ignored: %.80r", self.session, msg.data)
                        continue
                    if await self.on_event(ev):
                        break
                elif msg.type == WSMsgType.ERROR:
                    log.warning("[%s] websocket error: %s", self.session, self.ws.exception())
                    break
        finally:
            await self.stop_response(send_done=False)
            if not self.ws.closed:
                await self.ws.close()
            log.info(
                "[%s] call over: %d frames in (%d malformed)", self.session, self.frames_in, self.bad_frames
            )

    def on_frame(self, frame: bytes) -> None:
        if len(frame) != self.input_frame_bytes:
            self.bad_frames += 1
            if self.bad_frames <= 3:
                log.warning(
                    "[%s] input frame of %d bytes, expected %d",
                    self.session,
                    len(frame),
                    self.input_frame_bytes,
                )
        self.frames_in += 1
        # Here a recogniser would be fed (on a thread); we only count.

    async def on_event(self, ev: dict) -> bool:
        """Returns True when the call is over."""
        t = ev["type"]
        if t == "speech_started":
            if not ev.get("resumed", False) or self.turn_start_frame is None:
                onset = int(ev.get("onset_ms") or 0)
                self.turn_onset_ms = onset
                # the last onset_ms of audio received were the start of the speech
                self.turn_start_frame = self.frames_in - onset // max(self.input_frame_ms, 1)
            log.info("[%s] speech_started %s", self.session, ev)
        elif t == "speech_stopped":
            log.info("[%s] speech_stopped %s", self.session, ev)
        elif t == "end_of_turn":
            log.info("[%s] end_of_turn %s", self.session, ev)
            await self.on_end_of_turn(ev)
        elif t == "barge_in":
            log.info("[%s] barge_in %s", self.session, ev)
            # §6: the transceiver has already cut the audio; stop sending and say response_done.
            await self.stop_response(send_done=True)
        elif t == "hangup":
            log.info("[%s] hangup %s", self.session, ev)
            await self.stop_response(send_done=False)
            await self.ws.close(code=WSCloseCode.OK, message=b"hangup")
            return True
        elif t == "error":
            log.warning("[%s] error from the transceiver: %s", self.session, ev)
            if ev.get("code") == "protocol":
                return True  # the transceiver closes the socket
        elif t in ("transcript", "data"):
            log.info("[%s] from the client: %s", self.session, ev)
        else:
            log.info("[%s] unknown event ignored: %s", self.session, t)
        return False

    async def on_end_of_turn(self, ev: dict) -> None:
        turn = ev.get("turn")
        speech_ms = ev.get("speech_ms")
        trailing_ms = int(ev.get("trailing_ms") or 0)
        if self.turn_start_frame is not None:
            heard_ms = (self.frames_in - self.turn_start_frame) * self.input_frame_ms - trailing_ms
        else:
            heard_ms = speech_ms if isinstance(speech_ms, int) else 0
        self.turn_start_frame = None
        log.info(
            "[%s] turn %s: speech_ms=%s, audio received from onset to the last voiced frame: %d ms",
            self.session,
            turn,
            speech_ms,
            heard_ms,
        )
        # A new answer replaces one still playing.
        await self.stop_response(send_done=True)
        await self.send_event(
            {
                "type": "transcript",
                "role": "user",
                "text": f"(a turn of {speech_ms} ms of speech; {heard_ms} ms of audio received)",
                "final": True,
            }
        )
        await self.send_event(
            {
                "type": "transcript",
                "role": "agent",
                "text": f"(a {TONE_MS} ms tone at {TONE_HZ:g} Hz)",
                "final": True,
            }
        )
        await self.send_event(
            {
                "type": "data",
                "payload": {
                    "turn": turn,
                    "speech_ms": speech_ms,
                    "received_ms": heard_ms,
                    "trailing_ms": trailing_ms,
                },
            }
        )
        rid = self.next_response
        self.next_response += 1
        self.response_id = rid
        self.response_task = asyncio.create_task(self.play_response(rid))

    async def play_response(self, rid: int) -> None:
        pcm = tone(self.output_rate, TONE_MS, TONE_HZ)
        n = self.output_frame_samples
        if len(pcm) % n:  # every binary message is exactly one frame: pad the last one
            pcm = np.concatenate([pcm, np.zeros(n - len(pcm) % n, dtype="<i2")])
        frames = [pcm[i : i + n].tobytes() for i in range(0, len(pcm), n)]
        await self.send_event({"type": "response_started", "response": rid})
        start = time.monotonic()
        for i, frame in enumerate(frames):
            # frame i no earlier than i * frame_ms - lead after the first (§5)
            due = start + (i * self.output_frame_ms - self.lead_ms) / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send_frame(frame)
        # done: from here on a barge-in or a new turn has nothing to stop
        self.response_task = None
        self.response_id = None
        await self.send_event({"type": "response_done", "response": rid})
        log.info("[%s] response %d sent (%d frames)", self.session, rid, len(frames))

    async def stop_response(self, send_done: bool) -> None:
        task, rid = self.response_task, self.response_id
        self.response_task = self.response_id = None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("[%s] response %s failed", self.session, rid)
        if send_done and not self.ws.closed:
            await self.send_event({"type": "response_done", "response": rid})
            log.info("[%s] response %s stopped", self.session, rid)


async def handle(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text="this is a WebSocket endpoint (icegate agent protocol v1)\n")
    await ws.prepare(request)
    call = Call(ws, request.remote or "?")
    try:
        await call.run()
    except Exception:
        log.exception("[%s] call failed", call.session)
        await call.send_error("agent", "internal error")
        await ws.close(code=WSCloseCode.INTERNAL_ERROR)
    return ws


def main() -> None:
    global TONE_MS, LEAD_MS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tone-ms", type=int, default=TONE_MS, help="length of the answer (ms)")
    ap.add_argument(
        "--lead-ms",
        type=int,
        default=1000,
        help="how far ahead of real time to send (ms, capped at max_queued_ms/2)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    TONE_MS, LEAD_MS = args.tone_ms, args.lead_ms
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)  # agent_url may carry any path
    web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
