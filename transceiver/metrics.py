"""Prometheus metrics of one transceiver: ``icegate_transceiver_<what>_<unit>``.

Observations that happen at an instant (set-up time, turn latency, per-session RTP
quality) are histograms, unlabelled, so label sets stay bounded however many sessions
come and go. Counts that already live somewhere (sessions, mux counters, Redis health)
are read at scrape time by :class:`_Snapshot`, never copied by a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from icegate.observe import register_process

PREFIX = "icegate_transceiver"
OUTCOMES = ("completed", "failed", "reaped", "rejected", "drained", "consent_expired")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
JITTER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class Snapshot:
    """What the scrape reads: filled in by the service with callables over live state."""

    sessions: Callable[[], int] = lambda: 0
    outcomes: Callable[[], dict[str, int]] = dict
    mux_counters: Callable[[], dict[tuple[str, str], int]] = dict
    redis_up: Callable[[], bool] = lambda: True
    draining: Callable[[], bool] = lambda: False


class _Snapshot(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._s
        yield GaugeMetricFamily(f"{PREFIX}_sessions_active", "Sessions alive now.", value=s.sessions())
        ended = CounterMetricFamily(f"{PREFIX}_sessions", "Sessions ended, by outcome.", labels=["outcome"])
        outcomes = s.outcomes()
        for outcome in OUTCOMES:
            ended.add_metric([outcome], outcomes.get(outcome, 0))
        yield ended
        mux = CounterMetricFamily(
            f"{PREFIX}_mux_packets",
            "Packets through the Geneve mux, by direction and result.",
            labels=["direction", "result"],
        )
        for (direction, result), count in sorted(s.mux_counters().items()):
            mux.add_metric([direction, result], count)
        yield mux
        yield GaugeMetricFamily(
            f"{PREFIX}_redis_up", "1 if the last Redis heartbeat worked.", value=s.redis_up()
        )
        yield GaugeMetricFamily(f"{PREFIX}_draining", "1 while draining.", value=s.draining())


@dataclass
class TransceiverMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    snapshot: Snapshot = field(default_factory=Snapshot)

    def __post_init__(self) -> None:
        r = self.registry
        self.setup_seconds = Histogram(
            f"{PREFIX}_setup_seconds",
            "Offer received to connected (ICE + DTLS).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_latency_seconds = Histogram(
            f"{PREFIX}_turn_latency_seconds",
            "End of the user's speech (endpoint) to the first agent audio frame played.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rtt_seconds = Histogram(
            f"{PREFIX}_rtt_seconds",
            "Per-session RTCP round-trip time samples.",
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.jitter_seconds = Histogram(
            f"{PREFIX}_jitter_seconds",
            "Per-session inbound interarrival jitter samples.",
            buckets=JITTER_BUCKETS,
            registry=r,
        )
        self.loss_ratio = Histogram(
            f"{PREFIX}_packet_loss_ratio",
            "Per-session inbound packet loss samples.",
            buckets=LOSS_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(f"{PREFIX}_barge_ins", "Agent audio cut because the user spoke.", registry=r)
        # Session continuity (transceiver/continuity.py, docs/CONTINUITY.md).
        self.latches = Counter(
            f"{PREFIX}_latches", "Outbound paths moved to a client address proven by a check.", registry=r
        )
        self.latch_seconds = Histogram(
            f"{PREFIX}_latch_seconds",
            "First authentic check from a new client address to media moved there.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ice_restarts = Counter(f"{PREFIX}_ice_restarts", "ICE restarts over WHIP PATCH.", registry=r)
        self.latch_checks = Counter(
            f"{PREFIX}_latch_checks",
            "Checks from a new client address, by result (moved, failed, busy, unauthenticated).",
            ["result"],
            registry=r,
        )
        self.agent_drops = Counter(
            f"{PREFIX}_agent_drops",
            "Agent link drops and failures by reason (docs/AGENT_PROTOCOL.md §5, §7).",
            ["reason"],
            registry=r,
        )
        self.agent_unreachable = Counter(
            f"{PREFIX}_agent_unreachable",
            "Sessions whose voice agent could not be reached or failed the handshake "
            "(then per agent.on_failure: hang-up after the fallback, or no agent).",
            registry=r,
        )
        register_process(r, "transceiver")
        r.register(_Snapshot(self.snapshot))

    def count_agent(self, reason: str) -> None:
        self.agent_drops.labels(reason).inc()
        if reason == "agent_unreachable":
            self.agent_unreachable.inc()
