"""A load client: many real WebRTC voice sessions in one process, and proof that it kept up.

``python -m labkit.loadclient PLAN.json --out RESULT.json`` runs every session of the plan
(a JSON list of :class:`SessionPlan` fields) at once on one asyncio event loop (uvloop
when installed): each is a :class:`transceiver.client.VoiceClient` with its own
``RTCPeerConnection`` doing real ICE, DTLS and SRTP with a transceiver through the relay,
and the whole scripted conversation of :func:`transceiver.client.converse`. ``icegate
demo`` starts one per client namespace; ``bench.sessions`` (B6) runs :func:`run_sessions`
in a thread of its own.

What makes one process enough (a process per session spends most of the machine on
starting Python and importing aiortc, then on per-frame work):

- **one DTLS certificate** for every peer connection (:func:`peer_connection`): aiortc
  1.16 makes an ECDSA key and certificate per ``RTCPeerConnection`` and has no setting for
  it (``RTCConfiguration`` takes none), so the certificate list it keeps in the private
  ``RTCPeerConnection._RTCPeerConnection__certificates`` is replaced before the first
  transport is made. The DTLS handshake and fingerprint check run as ever; the
  far end only sees the same fingerprint in every offer. ``tests/unit/test_loadclient.py``
  fails if an upgrade moves the attribute;
- **pre-encoded audio** (:class:`transceiver.client.EncodedScriptTrack`): Opus packets
  encoded once per script, silence as one cached packet, so aiortc's sender only
  packetises and encrypts;
- **received audio decoded on the loop** (:class:`InlineDecoding`) instead of on a thread per
  session, kept as one mono numpy view per frame (no resampler); the transceiver's
  encoded silence is recognised and not decoded at all.

The self-check (:class:`SelfCheck`): this process's share of a core over the run, the
event loop's lag (a 10 ms ticker's oversleep), and how many 20 ms frames the
microphones handed to their senders late (:data:`transceiver.client.LATE_S`). The run
says ``bottleneck: true`` when any passes its limit (:data:`LIMITS`): its sessions' set-up
and turn times then include its own queueing, and the figures are not the system's. It
also reports how long the loop's thread waited for a busy CPU (scheduler statistics):
when that is long, the cause is the machine (the system under test and everything else
on the same cores), not the client's own work.

``--ramp S`` starts the sessions S seconds apart: a DTLS handshake holds the loop for
milliseconds, and dozens at the same instant make every running session's frames late.
:func:`prefer_this_thread` (B6 uses it) raises the loop thread's scheduling priority.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RTCCertificate
from av import AudioFrame

from transceiver.audio import MonoConverter, silence_payload
from transceiver.client import (
    FRAME,
    EncodedScriptTrack,
    Heard,
    Microphone,
    SpokenTurns,
    VoiceClient,
    converse,
)

T = TypeVar("T")
TICK_S = 0.01  # the lag probe's period
STALL_S = 0.05  # a lag this long is listed with its time
PREFERRED_NICE = -5  # prefer_this_thread
LIMITS = {
    "cpu_share": 0.85,  # of one core: a Python process cannot use more than one
    "loop_lag_ms_p99": 50.0,  # longer stalls delay ICE, DTLS and every frame behind them
    "frames_late_share": 0.01,  # frames handed to the sender over 20 ms after they were due
}
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30.0)
SILENCE_PAYLOAD = silence_payload()
SILENT_FRAME = np.zeros(FRAME, np.int16)
SILENT_FRAME.flags.writeable = False  # shared by every silent frame heard


@dataclass(frozen=True)
class SessionPlan:
    """One session of a load run: where to POST the offer and what to say."""

    index: int
    url: str
    hz: float = 392.0
    duration_s: float = 2.0
    speech: tuple[str, ...] = ()  # phrases (--agent speech) instead of tones
    token: str | None = None


def shared_certificate() -> RTCCertificate:
    return RTCCertificate.generateCertificate()


def peer_connection(certificate: RTCCertificate | None = None) -> RTCPeerConnection:
    """An ``RTCPeerConnection`` without STUN servers that uses ``certificate`` for DTLS."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if certificate is not None:
        if not hasattr(pc, "_RTCPeerConnection__certificates"):
            raise RuntimeError("aiortc's RTCPeerConnection has no certificate list to share")
        pc._RTCPeerConnection__certificates = [certificate]
    return pc


class InlineDecoding:
    """Stands in for an ``RTCRtpReceiver``'s decoder queue: decodes each Opus frame on the event
    loop as the receiver hands it over and adds it to ``heard``.

    aiortc 1.16 decodes on a thread per receiver, which hands every frame back to the loop
    with ``run_coroutine_threadsafe``: with dozens of sessions in one process those threads
    and wake-ups contend for the GIL with the loop that runs ICE, DTLS and the senders (the
    self-check saw its lag reach 100-300 ms). Decoding a 20 ms Opus frame takes tens of
    microseconds; here it costs no thread hop. The thread aiortc still starts waits in
    :meth:`get` until the receiver stops (``put(None)``), then ends the track as usual."""

    def __init__(self, heard: Heard) -> None:
        self.heard = heard
        self.errors = 0
        self._decoder: Decoder | None = None
        self._converter = MonoConverter()
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, encoded = item
        now = time.monotonic()
        if encoded.data == SILENCE_PAYLOAD:
            # The transceiver's encoded silence (transceiver.audio), most of what a quiet agent
            # sends: heard as silence without decoding. The decoder misses those packets; its
            # first frame after them may differ a little, which neither loudness nor pitch notices.
            self.heard.frames.append(SILENT_FRAME)
            self.heard.arrivals.append(now)
            return
        if self._decoder is None:
            self._decoder = get_decoder(codec)
        try:
            frames = self._decoder.decode(encoded)
        except av.FFmpegError:
            self.errors += 1
            return
        for frame in frames:
            assert isinstance(frame, AudioFrame)
            self.heard.frames.append(np.frombuffer(self._converter.convert(frame), np.int16))
            self.heard.arrivals.append(now)

    def get(self) -> None:
        self._stopped.wait()


def decode_inline(pc: RTCPeerConnection, heard: Heard) -> None:
    """Make ``pc``'s audio receivers decode on the loop into ``heard`` (before they start)."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            receiver = transceiver.receiver
            if not hasattr(receiver, "_RTCRtpReceiver__decoder_queue"):
                raise RuntimeError("aiortc's RTCRtpReceiver has no decoder queue to replace")
            receiver._RTCRtpReceiver__decoder_queue = InlineDecoding(heard)


@dataclass
class LoadVoiceClient(VoiceClient):
    """A :class:`VoiceClient` that is cheap to run by the dozen: a shared certificate (give it
    ``pc=peer_connection(certificate)``), an encoded microphone, audio decoded on the loop."""

    mic: Microphone = field(default_factory=EncodedScriptTrack)

    async def offer(self) -> str:
        sdp = await super().offer()  # adds the audio transceiver, whose receiver starts on connect
        decode_inline(self.pc, self.heard)
        return sdp


def load_voice_client(url: str, certificate: RTCCertificate, token: str | None = None) -> VoiceClient:
    return LoadVoiceClient(url, token=token, pc=peer_connection(certificate))


# ---- the self-check -----------------------------------------------------------------------------
@dataclass
class LoopLag:
    """How late a ``TICK_S`` ticker wakes up: the event loop's queueing delay."""

    samples: list[float] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, lag) over STALL_S
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            lag = max(0.0, time.monotonic() - before - TICK_S)
            self.samples.append(lag)
            if lag > STALL_S:
                self.stalls.append((round(before - started, 2), round(lag * 1000, 1)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def percentile_ms(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def prefer_this_thread(niceness: int = PREFERRED_NICE) -> bool:
    """Give the calling thread (the load client's loop) scheduling priority over the lab's other
    processes on its CPU, so that a busy CPU delays the system under test before the load
    generator; False when not allowed (not root)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:
        return False
    return True


def waited_for_cpu_s() -> float:
    """Seconds this thread was runnable but waiting for a CPU (``/proc/thread-self/schedstat``,
    field 2; 0 where the kernel keeps no scheduler statistics)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class SelfCheck:
    """Was this process the bottleneck? Started before the sessions, read after (on the loop's thread)."""

    lag: LoopLag = field(default_factory=LoopLag)
    _wall: float = 0.0
    _cpu: float = 0.0
    _waited: float = 0.0

    def start(self) -> None:
        self._wall, self._cpu, self._waited = time.monotonic(), time.process_time(), waited_for_cpu_s()
        self.lag.start()

    async def finish(self, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
        await self.lag.stop()
        wall = time.monotonic() - self._wall
        cpu = time.process_time() - self._cpu
        sent = sum(r.get("frames_sent", 0) for r in results)
        late = sum(r.get("frames_late", 0) for r in results)
        figures = {
            "cpu_share": round(cpu / wall, 3) if wall > 0 else 0.0,
            "loop_lag_ms_p99": self.lag.percentile_ms(0.99),
            "frames_late_share": round(late / sent, 4) if sent else 0.0,
        }
        over = [name for name, limit in LIMITS.items() if figures[name] >= limit]
        waited = waited_for_cpu_s() - self._waited
        return {
            "pid": os.getpid(),
            "sessions": len(results),
            "seconds": round(wall, 2),
            "cpu_s": round(cpu, 2),
            **figures,
            # The loop's thread was ready to run but every CPU was busy (other processes, the
            # system under test): lag that is the machine's, not this process's own work.
            "waited_for_cpu_share": round(waited / wall, 3) if wall > 0 else 0.0,
            "loop_lag_ms_p50": self.lag.percentile_ms(0.5),
            "loop_lag_ms_max": self.lag.percentile_ms(1.0),
            "frames_sent": sent,
            "frames_late": late,
            "max_late_ms": max((r.get("max_late_ms", 0.0) for r in results), default=0.0),
            "stalls": self.lag.stalls[:50],
            "limits": LIMITS,
            "over_limits": over,
            "bottleneck": bool(over),
        }


def describe(check: dict[str, Any]) -> str:
    """One line for a self-check: its figures and the verdict."""
    verdict = "not the bottleneck"
    if check["bottleneck"]:
        verdict = (
            f"BOTTLENECK ({', '.join(check['over_limits'])} over the limit: the figures include "
            "the client's own delays"
        )
        if check.get("waited_for_cpu_share", 0.0) >= check["cpu_share"] / 2:
            verdict += "; it waited for a busy CPU more than half as long as it ran: the machine is saturated"
        verdict += ")"
    return (
        f"{check['sessions']} sessions, {check['cpu_share'] * 100:.0f}% of a core, "
        f"waited for a CPU {check.get('waited_for_cpu_share', 0.0) * 100:.0f}% of the time, "
        f"loop lag p99 {check['loop_lag_ms_p99']} ms, "
        f"frames late {check['frames_late']}/{check['frames_sent']}: {verdict}"
    )


# ---- running sessions -----------------------------------------------------------------------------
async def run_sessions(
    plans: Sequence[SessionPlan], *, ramp_s: float = 0.0, prefer: bool = False
) -> dict[str, Any]:
    """Every plan's :func:`converse` at once on this loop (session ``i`` starts ``i * ramp_s`` in);
    the results by index, and the self-check. ``prefer``: :func:`prefer_this_thread` first."""
    if prefer:
        prefer_this_thread()
    certificate = shared_certificate()
    check = SelfCheck()
    check.start()

    async def one(n: int, plan: SessionPlan, http: aiohttp.ClientSession) -> dict[str, Any]:
        await asyncio.sleep(n * ramp_s)
        client = load_voice_client(plan.url, certificate, plan.token)
        spoken = SpokenTurns(list(plan.speech)) if plan.speech else None
        return await converse(plan.url, plan.hz, plan.duration_s, spoken=spoken, client=client, http=http)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT, connector=connector) as http:
        results = await asyncio.gather(*(one(n, p, http) for n, p in enumerate(plans)))
    return {
        "sessions": {str(p.index): r for p, r in zip(plans, results, strict=True)},
        "self_check": await check.finish(results),
    }


def run_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())``, on uvloop when it is installed (less per-packet overhead)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def read_plan(path: Path) -> list[SessionPlan]:
    return [SessionPlan(**{**p, "speech": tuple(p.get("speech", ()))}) for p in json.loads(path.read_text())]


def write_plan(path: Path, plans: Sequence[SessionPlan]) -> None:
    path.write_text(json.dumps([asdict(p) for p in plans], indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path, help="JSON list of sessions (SessionPlan fields)")
    parser.add_argument("--out", type=Path, required=True, help="write the results here (JSON)")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds between session starts")
    args = parser.parse_args()
    plans = read_plan(args.plan)
    result = run_loop(lambda: run_sessions(plans, ramp_s=args.ramp))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    errors = [r for r in result["sessions"].values() if r.get("error")]
    print(f"loadclient: {describe(result['self_check'])}; {len(errors)} sessions with an error")
    raise SystemExit(0)


if __name__ == "__main__":
    main()


__all__ = ["SessionPlan", "describe", "peer_connection", "run_sessions"]
