"""Per-packet cost stays in the expected range (tests/bpf/speed.py prints the numbers).

Bounds are loose, ten times what this two-core VM measures, so that a noisy neighbour
does not fail the build but an accidental per-byte loop or helper storm does. The two
timing methods must agree on the drop path, which is what makes the forward numbers
(timed one run per call) trustworthy.
"""

from __future__ import annotations

from tests.bpf.harness import XdpRelay
from tests.bpf.speed import measure

BOUNDS_NS = {
    "flow hit, forward (DTLS, confirmed flow)": 8000,
    "return, decapsulate (RTP, confirmed flow)": 8000,
    "first STUN (token check, new pending flow)": 15000,
    "drop: not WebRTC": 1000,
    "drop: forged token (SipHash)": 3000,
}


def test_ns_per_packet(xdp: XdpRelay) -> None:
    timings = measure(xdp, runs=20_000)
    for t in timings:
        if t.path in BOUNDS_NS:
            assert 0 < t.ns < BOUNDS_NS[t.path], t
    drops = [t.ns for t in timings if t.path == "drop: not WebRTC"]
    assert len(drops) == 2 and abs(drops[0] - drops[1]) < max(100.0, 0.5 * max(drops)), drops
