"""B3: first packets of new sessions at 1, 100 and 1,000 new sessions/s, XDP and the twin.

    .venv/bin/python -m bench.b3_first_packets [--quick] [--out bench/results]

Each session is a new client port that sends a STUN Binding request whose USERNAME
carries a valid route token (alternately for transceiver 1/1 at 10.70.0.11 and 1/2 at
10.70.0.12). A sink on both transceiver addresses plays the transceiver: it decapsulates
the Geneve, answers every check with a Binding success response sent back through the
relay's tunnel (which confirms the flow, DATAPATH.md §3 r9), and checks that every DTLS
record arrives at the transceiver its session's token names. The client sends its DTLS
records the moment the success response reaches it, as an ICE agent does: a pending flow
carries only STUN (issue 12), so the first DTLS packet of a session is the one that
proves the flow was installed and confirmed in time. Reported: sessions, checks answered,
DTLS sent, lost, misrouted (target: 0 and 0), and the check -> answer round trip.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import struct
import threading
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.lab import netlab as nl
from icegate import geneve, inet, netns, token
from labkit.packets import check, success

NAME = "b3_first_packets"
RATES = ((1, 5.0), (100, 3.0), (1000, 2.0))  # (new sessions/s, seconds)
QUICK_RATES = ((100, 1.0),)
DTLS_PER_SESSION = 3
FIRST_PORT = 30000
TRANSCEIVERS = {0: nl.SINK_IP, 1: nl.SINK_IP2}  # session i -> index i % 2 + 1


class GeneveSink:
    """Sockets on both transceiver addresses in the sink namespace; records, per session,
    which transceiver each DTLS record reached."""

    def __init__(self, ns: str) -> None:
        self.socks = []
        with netns.entered(ns):
            for addr in TRANSCEIVERS.values():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                s.bind((addr, nl.SINK_PORT))
                s.settimeout(0.2)
                self.socks.append((addr, s))
        self.seen: list[tuple[int, str]] = []  # (session, transceiver address) per DTLS record
        self.stun = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._recv, args=(a, s), daemon=True) for a, s in self.socks]
        for t in self._threads:
            t.start()

    def _recv(self, addr: str, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            inner = data[8:]  # Geneve without options (the relay writes none)
            sport = struct.unpack("!H", inner[20:22])[0]
            payload = inner[28:]
            if payload[:1] == b"\x17":
                self.seen.append((sport - FIRST_PORT, addr))
            elif payload[:2] == b"\x00\x01":  # a Binding request: answer it, as the transceiver
                self.stun += 1
                client = (inet.text_address(inner[12:16]), sport)
                vip = inet.text_address(inner[16:20])
                vport = struct.unpack("!H", inner[22:24])[0]
                answer = inet.build_udp(vip, vport, client[0], client[1], success(client))
                vni = int.from_bytes(data[4:7], "big")
                sock.sendto(geneve.encapsulate(answer, vni), (nl.TUNNEL_IP, nl.SINK_PORT))

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for _, s in self.socks:
            s.close()


class Clients:
    """New sessions from new ports; each sends its DTLS records when its check is answered."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.answered = 0
        self.rtts_us: list[float] = []
        self._sent_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answers, daemon=True)
        self._thread.start()

    def start(self, i: int) -> None:
        """Session ``i``: a check with a fresh token from port FIRST_PORT + i (in the generator's netns)."""
        ufrag = token.mint(0, nl.KEY, 1, i % 2 + 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((nl.GEN_IP, FIRST_PORT + i))
        s.setblocking(False)
        self._sent_at[i] = time.monotonic()
        self.selector.register(s, selectors.EVENT_READ, i)
        s.sendto(check(ufrag), (nl.VIP, nl.VIP_PORT))

    def _answers(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                s, i = key.fileobj, key.data
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    continue
                if data[:2] != b"\x01\x01":  # not a Binding success response
                    continue
                self.answered += 1
                self.rtts_us.append((time.monotonic() - self._sent_at[i]) * 1e6)
                for k in range(DTLS_PER_SESSION):
                    s.sendto(b"\x17\xfe\xfd" + struct.pack("!IH", i, k) + bytes(160), (nl.VIP, nl.VIP_PORT))
                self.selector.unregister(s)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def median_us(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def sessions(clients: Clients, lab: nl.BenchLab, rate: int, seconds: float, first: int) -> int:
    """Start ``rate`` sessions per second for ``seconds`` from new ports; returns how many."""
    count = int(rate * seconds)
    start = time.monotonic()
    with netns.entered(lab.gen_ns):
        for n in range(count):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            clients.start(first + n)
    return count


def run_peer(lab: nl.BenchLab, peer: str, rates: tuple[tuple[int, float], ...]) -> list[dict[str, Any]]:
    rows = []
    make = (lambda: nl.xdp_relay(lab)) if peer == "xdp" else (lambda: nl.twin_relay(lab, "uvloop"))
    first = 0
    with make():
        for rate, seconds in rates:
            sink = GeneveSink(lab.sink_ns)
            clients = Clients()
            try:
                count = sessions(clients, lab, rate, seconds, first)
                deadline = time.monotonic() + 5
                want = count * DTLS_PER_SESSION
                while len(sink.seen) < want and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                clients.close()
                sink.close()
            expected = {first + n: TRANSCEIVERS[(first + n) % 2] for n in range(count)}
            misrouted = sum(1 for s, addr in sink.seen if expected.get(s) != addr)
            row = {
                "peer": peer,
                "sessions_per_s": rate,
                "sessions": count,
                "dtls_sent": count * DTLS_PER_SESSION,
                "dtls_received": len(sink.seen),
                "lost": count * DTLS_PER_SESSION - len(sink.seen),
                "misrouted": misrouted,
                "stun_received": sink.stun,
                "answered": clients.answered,
                "answer_rtt_us_p50": median_us(clients.rtts_us),
                "loadavg": nl.loadavg(),
            }
            print(row, flush=True)
            rows.append(row)
            first += count
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    return report.markdown_table(
        (
            "relay",
            "new sessions/s",
            "sessions",
            "checks answered",
            "check→answer p50 µs",
            "DTLS sent",
            "lost",
            "misrouted",
        ),
        [
            (
                r["peer"],
                r["sessions_per_s"],
                r["sessions"],
                r["answered"],
                r["answer_rtt_us_p50"],
                r["dtls_sent"],
                r["lost"],
                r["misrouted"],
            )
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 sessions/s for 1 s (smoke)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    os.sched_setaffinity(0, {nl.GEN_CPU})
    rates = QUICK_RATES if args.quick else RATES
    with nl.bench_lab("pb3") as lab:
        rows = run_peer(lab, "xdp", rates) + run_peer(lab, "twin (uvloop)", rates)
    text = table(rows)
    report.write(NAME, {"rows": rows, "quick": args.quick}, text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
