"""``icegate demo``: the main job, real voice sessions through the relay in the lab.

1. ``lab up``: namespaces, veths, routes, Redis (:mod:`labkit.lab`).
2. A route key in Redis (``icegate token init``), then, side by side in their
   namespaces: ``icegate relay run`` (XDP, or the userspace twin where XDP is not
   available: the relay logs which and why, and the demo says so), two transceivers
   (cluster 1, index 1 and 2) and an agent (``echo`` or ``tone``) beside each. Ready when
   the relay's ``/readyz`` and both transceivers' ``/readyz`` answer 200 and the relay
   has synced both backends from Redis.
3. N sessions at once, spread over both client hosts and both transceivers: one load
   client per client host (``python -m labkit.loadclient``: every session of that host
   on one event loop, sessions started ``RAMP_S`` apart). Each session speaks a pitch of
   its own for a few turns; the load client writes every session's JSON result and its
   self-check (was it the bottleneck?). A process per session, as before issue 15, spent
   most of a 2-core machine on the clients themselves.
4. The relay's side: its datapath counters (``/metrics``, the same numbers as
   ``icegate stats``), its flows with their packet counters (``icegate flows ls --json``
   in its namespace: the pinned maps, or the twin's maps over its HTTP endpoint) and the
   flow-cache records it wrote to Redis.
5. A summary (table or ``--json``, with the load clients' self-checks, each transceiver's
   mux counters and session outcomes, and the CPU seconds of every lab process while the
   clients ran), then ``lab down`` (always, also on Ctrl-C, unless
   ``--keep``). Exit 0 only if every session carried audio both ways through the relay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
import redis as redis_sync
import yaml

from icegate import netns
from icegate.cli import Renamed
from icegate.errors import DemoError, LinkError
from icegate.schema import Keys
from labkit import demo_report, loadclient
from labkit.lab import Lab, LabConfig, TransceiverSettings
from labkit.lab.config import DEFAULT_NAME, SecondRegionConfig
from labkit.lab.geofiles import CATALOG_FILE

AGENT_PORT = 8090
TONE_AGENT_HZ = 440.0
# Client pitches (F4 G4 B4 C5 D5 E5 F5 G5): distinct per session, so an echo proves that each
# client heard its own voice, and none is the tone agent's 440 Hz.
PITCHES = (349.2, 392.0, 493.9, 523.3, 587.3, 659.3, 698.5, 784.0)
# --agent speech: what the clients say, each session starting at its own line.
SPEECH_SCRIPT = (
    "hello",
    "what is the weather",
    "tell me a joke",
    "what is your name",
    "thank you",
    "goodbye",
)
READY_TIMEOUT_S = 45.0  # bcc compiles the XDP program at start: seconds on a busy 2-core host
# Between session starts in one load client: a DTLS handshake holds its event loop for
# milliseconds, and 32 at once made the other sessions' frames late (its self-check).
RAMP_S = 0.025
CLIENT_SLACK_S = 45.0  # start-up (importing aiortc), connect, last answer, hang-up
TX_METRIC_RE = re.compile(
    r"^icegate_transceiver_(?P<name>mux_packets|sessions)_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)
METRIC_RE = re.compile(r"^icegate_relay_packets_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


@dataclass(frozen=True)
class Options:
    sessions: int = 4
    agent: str = "echo"
    mode: str = "auto"
    duration_s: float = 3.0
    lab_name: str = DEFAULT_NAME
    keep: bool = False
    # Session continuity (docs/CONTINUITY.md): None keeps the product's defaults (30 s each).
    consent_window_s: float | None = None  # the transceivers' consent window
    flow_idle_s: float | None = None  # the relay's expiry of idle confirmed flows
    regions: int = 1  # 2: a second region, the geo front door steers every client (docs/GEO.md)


@dataclass
class Progress:
    """Timestamped progress lines on stderr (stdout stays for the summary)."""

    started: float = field(default_factory=time.monotonic)
    quiet: bool = False

    def __call__(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.monotonic() - self.started:5.1f}s] {message}", err=True)


def icegate_argv() -> list[str]:
    """The ``icegate`` console script of this installation (the ``-c`` form if there is none)."""
    script = Path(sys.executable).with_name("icegate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from icegate.cli import main; main()"]


def http_get(namespace: str, url: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET ``url`` from inside ``namespace``; status 0 when nothing answers."""
    with netns.entered(namespace):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does: through the teardown.

    Only in this process: a forked helper (pyroute2 creates namespaces in one) inherits
    the handler and must still die of SIGTERM, not run the demo's teardown.
    """
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\n{log_tail(log)}" if log else ""
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(0.05)


class Demo:
    def __init__(self, options: Options, say: Progress) -> None:
        self.options = options
        self.say = say
        second = SecondRegionConfig() if options.regions == 2 else None
        self.lab = Lab(LabConfig(name=options.lab_name, second_region=second))
        self.icegate = icegate_argv()
        self.relay_http = self.lab.relay_config().http
        self.datapath = "unknown"
        self.datapath_reason = ""
        self.built = False  # this run created the lab (so it, and only it, tears it down)
        self.table = ""
        self.relay_config = Path()  # written by start_components
        self.load_clients: dict[str, dict[str, Any]] = {}  # client host -> the load client's self-check
        self.cpu: dict[str, float] = {}  # lab process -> CPU seconds when the sessions ended

    # ---- steps ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Steps 1-4; the caller tears down (``lab.down``) whatever happens."""
        started = time.monotonic()
        timings = self.up()
        before = self.relay_counters()
        plans = self.plan()
        clients_started = time.monotonic()
        results = self.run_clients(plans)
        timings["clients_s"] = round(time.monotonic() - clients_started, 2)
        timings["sessions_done_s"] = round(time.monotonic() - started, 2)
        summary = self.conclude(plans, results, before)
        summary["timings"] = timings
        return summary

    @contextlib.contextmanager
    def running(self) -> Iterator[Demo]:
        """:meth:`up`, then the lab torn down whatever happens (if this run built it)."""
        try:
            self.up()
            yield self
        finally:
            if self.built:
                self.down()

    def down(self) -> None:
        """Remove the lab (processes, namespaces, pins) and say how long it took."""
        gone = self.lab.down()
        what = "processes ended, namespaces and pins removed"
        self.say(f"lab {self.lab.name} down in {gone.seconds:.1f}s ({what})")

    def up(self) -> dict[str, float]:
        """Lab, relay, transceivers and agents, all ready (the e2e tests start browsers against this)."""
        started = time.monotonic()
        self.lab.up()
        self.built = True
        timings = {"lab_up_s": round(time.monotonic() - started, 2)}
        hosts = len(self.lab.topology.hosts)
        self.say(f"lab {self.lab.name} up: {hosts} namespaces, Redis in {self.lab.namespace('dc')}")
        self.start_components()
        timings["components_ready_s"] = round(time.monotonic() - started, 2)
        return timings

    def start_components(self) -> None:
        lab, opts = self.lab, self.options
        self.lab.run("dc", [*self.icegate, "token", "init", "--redis-url", lab.redis_url,
                             "--region", lab.config.region])  # fmt: skip
        relay: dict[str, Any] = {"mode": opts.mode, "sync_interval_s": 0.5}
        if opts.flow_idle_s is not None:
            idle = opts.flow_idle_s
            relay["expiry"] = {"idle_s": idle, "pending_s": min(3.0, idle), "interval_s": min(10.0, idle / 4)}
        self.relay_config = lab.write_relay_config(relay)
        lab.start_process(
            "relay",
            "relay",
            [*self.icegate, "relay", "run", "--config", str(self.relay_config), "--log-json"],
        )
        compiling = "" if opts.mode == "userspace" else "; bcc compiles the XDP program"
        self.say(f"relay starting in {lab.namespace('relay')} (mode {opts.mode}{compiling})")
        consent = {} if opts.consent_window_s is None else {"consent_window_s": opts.consent_window_s}
        for tx in lab.transceivers():
            self.start_transceiver(tx, consent)
            self.say(f"transceiver {tx.name} (cluster {tx.cluster}, index {tx.index}) + {opts.agent} agent")

        self.start_second_region()
        relay_ns, relay_log = lab.namespace("relay"), self.log("relay")
        readyz = f"http://{self.relay_http.address}:{self.relay_http.port}/readyz"

        def relay_ready() -> bool:
            self.alive("relay")
            return http_get(relay_ns, readyz)[0] == 200

        wait_until(relay_ready, READY_TIMEOUT_S, "the relay's /readyz", relay_log)
        self.datapath, self.datapath_reason = datapath_of(self.relay_status())
        self.say(f"relay ready: {describe_datapath(self.datapath, self.datapath_reason)}")
        for tx in lab.transceivers():

            def tx_ready(name: str = tx.name, url: str = tx.signaling_url) -> bool:
                self.alive(name)
                self.alive(f"agent-{name}")
                # the agent listens once its models are loaded (the speech agent's take seconds)
                agent_up = http_get(lab.namespace(name), f"http://127.0.0.1:{AGENT_PORT}/")[0] != 0
                return agent_up and http_get(lab.namespace(name), f"{url}/readyz")[0] == 200

            wait_until(tx_ready, READY_TIMEOUT_S, f"{tx.name}'s /readyz", self.log(tx.name))
        count = len(lab.config.transceivers)
        wait_until(
            lambda: self.active_backends() == count, 15, "the relay to sync the transceivers", relay_log
        )
        self.say(f"transceivers ready; the relay routes to {count} backends")
        self.second_region_ready()

    def start_transceiver(self, tx: TransceiverSettings, settings: Mapping[str, Any]) -> None:
        """Start TX's voice agent, then TX itself; SETTINGS go into its config section."""
        lab = self.lab
        agent = [*self.icegate, "agent", "run", "--kind", self.options.agent,
                 "--listen", f"127.0.0.1:{AGENT_PORT}", "--tone-hz", str(TONE_AGENT_HZ)]  # fmt: skip
        lab.start_process(f"agent-{tx.name}", tx.name, agent)
        section = tx.config_section() | {
            "agent_url": f"ws://127.0.0.1:{AGENT_PORT}/",
            "stats_interval_s": 1.0,
            "drain_deadline_s": 1.0,  # teardown: SIGTERM drains; do not hold live sessions for minutes
            **settings,
        }
        path = lab.dir / f"{tx.name}.yaml"
        path.write_text(yaml.safe_dump({"transceiver": section}, sort_keys=False))
        lab.start_process(tx.name, tx.name, [*self.icegate, "transceiver", "run", "--config", str(path)])

    # ---- the second region and the front door (`--regions 2`) ------------------------------
    def relays(self) -> list[tuple[str, Path]]:
        """(lab host, relay config) of every relay: the first region's, then the second's."""
        r2 = self.lab.config.second_region
        extra = [(r.name, self.lab.dir / f"{r.name}.yaml") for r in r2.relays] if r2 is not None else []
        return [("relay", self.relay_config), *extra]

    def start_second_region(self) -> None:
        lab, r2 = self.lab, self.lab.config.second_region
        if r2 is None:
            return
        lab.run("dc2", [*self.icegate, "token", "init", "--redis-url", r2.redis_url, "--region", r2.region])
        for relay in r2.relays:
            mode = self.options.mode if relay.mode == "auto" else relay.mode
            path = lab.write_region_relay_config(relay.name, {"mode": mode, "sync_interval_s": 0.5})
            lab.start_process(relay.name, relay.name, [*self.icegate, "relay", "run", "--config", str(path),
                                                       "--log-json"])  # fmt: skip
            self.say(f"region {r2.region}: relay {relay.name} (priority {relay.priority}, mode {mode})")
        catalog = lab.dir / CATALOG_FILE
        lab.start_process("frontdoor", "inet", [*self.icegate, "geo", "serve", "--config", str(catalog)])
        self.say(f"geo front door in {lab.namespace('inet')} at {', '.join(lab.front_door_urls())}")

    def second_region_ready(self) -> None:
        lab, r2 = self.lab, self.lab.config.second_region
        if r2 is None:
            return
        for relay in r2.relays:

            def ready(name: str = relay.name) -> bool:
                self.alive(name)
                return self.active_backends(name) == len(r2.transceivers)

            wait_until(
                ready,
                READY_TIMEOUT_S,
                f"relay {relay.name} to route to region {r2.region}",
                self.log(relay.name),
            )
        url = lab.front_door_urls()[0]

        def door_ready() -> bool:
            self.alive("frontdoor")
            status, body = http_get(lab.namespace("inet"), f"{url}/v1/route?lat=1.35&lon=103.82")
            return status == 200 and f'"region": "{r2.region}"' in body

        wait_until(door_ready, READY_TIMEOUT_S, "the front door to see both regions", self.log("frontdoor"))
        self.say(f"region {r2.region} ready: {len(r2.relays)} relays, front door steering")

    def plan(self) -> list[demo_report.Plan]:
        """Spread sessions over every (client host, transceiver) pair: c1/tx1, c2/tx2, c1/tx2, c2/tx1, ...

        Two regions: the clients take turns (c1, c2, c3, ...) and POST to the front door (IPv6
        for dual-stack clients), which steers each to its own region."""
        clients, txs = self.lab.clients(), self.lab.transceivers()
        plans = []
        if self.lab.config.second_region is not None:
            door4, door6 = self.lab.front_door_urls()
            for i in range(self.options.sessions):
                client = clients[i % len(clients)]
                hz = PITCHES[i % len(PITCHES)]
                expect = hz if self.options.agent == "echo" else TONE_AGENT_HZ
                url = door6 if client.address6 else door4
                plans.append(demo_report.Plan(i + 1, client.name, "(geo)", url, hz, expect, client.region))
            return plans
        for i in range(self.options.sessions):
            client = clients[i % len(clients)]
            tx = txs[(i + i // len(clients)) % len(txs)]
            hz = PITCHES[i % len(PITCHES)]
            expect = {"echo": hz, "tone": TONE_AGENT_HZ}.get(self.options.agent, 0.0)  # speech: words
            plans.append(demo_report.Plan(i + 1, client.name, tx.name, tx.signaling_url, hz, expect))
        return plans

    def run_clients(self, plans: list[demo_report.Plan]) -> dict[int, dict[str, Any]]:
        """One load client (:mod:`labkit.loadclient`) per client host runs that host's sessions."""
        opts = self.options
        hosts = sorted({p.client for p in plans}, key=lambda h: [p.client for p in plans].index(h))
        self.say(
            f"{len(plans)} sessions from {len(hosts)} load clients ({', '.join(hosts)}): "
            f"turns for {opts.duration_s:g} s each, {opts.agent} agent answering"
        )
        results_dir = self.lab.dir / "results"  # not beside the process records (<name>.json)
        results_dir.mkdir(exist_ok=True)
        cpu_before = self.cpu_seconds()
        outputs = {}
        for host in hosts:
            mine = [p for p in plans if p.client == host]
            plan_file, out = results_dir / f"plan-{host}.json", results_dir / f"loadclient-{host}.json"
            loadclient.write_plan(plan_file, [self.session_plan(p) for p in mine])
            argv = [sys.executable, "-m", "labkit.loadclient", str(plan_file), "--out", str(out),
                    "--ramp", str(RAMP_S)]  # fmt: skip
            self.lab.start_process(f"loadclient-{host}", host, argv)
            outputs[host] = out
        # All sessions start at once; the slowest may need its whole connect timeout.
        deadline = time.monotonic() + opts.duration_s + CLIENT_SLACK_S + len(plans) / 4
        running = set(hosts)
        while running and time.monotonic() < deadline:
            for host in sorted(running):
                record = self.lab.process(f"loadclient-{host}")
                if record is None or not record.alive:
                    running.discard(host)
                    done = read_json(outputs[host]) or {}
                    for index, result in sorted(done.get("sessions", {}).items(), key=lambda kv: int(kv[0])):
                        self.say(f"session {index} finished: {brief(result)}")
                    if "self_check" in done:
                        self.say(f"load client {host}: {loadclient.describe(done['self_check'])}")
            time.sleep(0.05)
        self.cpu = {
            name: round(cpu - cpu_before.get(name, 0.0), 2) for name, cpu in self.cpu_seconds().items()
        }
        results: dict[int, dict[str, Any]] = {}
        for host in hosts:
            done = read_json(outputs[host]) or {}
            if "self_check" in done:
                self.load_clients[host] = done["self_check"]
            for p in plans:
                if p.client != host:
                    continue
                result = done.get("sessions", {}).get(str(p.index))
                if result is None:
                    still = " (still running, ended)" if host in running else ""
                    log = log_tail(self.log(f"loadclient-{host}"))
                    result = {"error": f"load client {host} wrote no result{still}:\n{log}"}
                results[p.index] = result
        for host in running:
            self.lab.stop_process(f"loadclient-{host}")
        return results

    def session_plan(self, p: demo_report.Plan) -> loadclient.SessionPlan:
        speech: tuple[str, ...] = ()
        if self.options.agent == "speech":
            start = (p.index - 1) % len(SPEECH_SCRIPT)
            speech = SPEECH_SCRIPT[start:] + SPEECH_SCRIPT[:start]
        return loadclient.SessionPlan(p.index, p.url, p.tone_hz, self.options.duration_s, speech)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system, all threads) each live lab process has used so far (a load
        client that has exited is not counted here: it reports its own in its self-check)."""
        out = {}
        for record in self.lab.processes():
            if record.alive:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    out[record.name] = process_cpu_seconds(record.pid)
        return out

    def conclude(
        self, plans: list[demo_report.Plan], results: dict[int, dict[str, Any]], before: dict[str, int]
    ) -> dict[str, Any]:
        sessions = [demo_report.Session(p, results[p.index]) for p in plans]
        for host, config in self.relays():
            demo_report.match_flows(sessions, self.relay_flows(host, config), host)
        cached = self.cached_flows()
        vips = [f"{a}:{p}" for a, p in self.all_vips()]
        for s in sessions:
            s.cached = any(local in cached for local in s.result.get("local", []))
            demo_report.judge(s, vips)
            demo_report.judge_steering(s)
        total = demo_report.totals(self.relay_counters(), before)
        if total["fast_path_packets"] == 0:
            for s in sessions:
                if s.relay in (None, "relay"):  # the first region's relay: the counters read here
                    s.problems.append("the relay's counters show no forwarded packets")
        ok = bool(sessions) and all(s.ok for s in sessions)
        self.table = demo_report.table(sessions)
        return {
            "ok": ok,
            "lab": self.lab.name,
            "agent": self.options.agent,
            "mode": self.options.mode,
            "datapath": self.datapath,
            "datapath_reason": self.datapath_reason,
            "sessions": [s.to_json() for s in sessions],
            "stats": demo_report.session_stats(sessions),
            "relay": total,
            "load_clients": self.load_clients,
            "load_clients_ok": bool(self.load_clients)
            and not any(c["bottleneck"] for c in self.load_clients.values()),
            "cpu_s": self.cpu,
            "transceivers": {tx.name: self.transceiver_counters(tx) for tx in self.lab.transceivers()},
        }

    # ---- reading the components ------------------------------------------------------------
    def log(self, name: str) -> str:
        return str(self.lab.dir / f"{name}.log")

    def alive(self, name: str) -> None:
        record = self.lab.process(name)
        if record is None or not record.alive:
            raise DemoError(f"{name} exited:\n{log_tail(self.log(name))}")

    def relay_metrics(self) -> str:
        url = f"http://{self.relay_http.address}:{self.relay_http.port}/metrics"
        status, body = http_get(self.lab.namespace("relay"), url, timeout=3.0)
        if status != 200:
            raise DemoError(f"relay /metrics answered {status}:\n{log_tail(self.log('relay'))}")
        return body

    def all_vips(self) -> list[tuple[str, int]]:
        r2 = self.lab.config.second_region
        port = self.lab.config.public.vip_port
        extra = [(v, port) for r in r2.relays for v in (r.vip6, r.vip4)] if r2 is not None else []
        return [*self.lab.vips, *extra]

    def active_backends(self, host: str = "relay") -> int:
        status, body = http_get(
            self.lab.namespace(host), f"http://{self.relay_http.address}:{self.relay_http.port}/metrics"
        )
        for line in body.splitlines() if status == 200 else []:
            if line.startswith('icegate_relay_backends{state="active"} '):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def transceiver_counters(self, tx: TransceiverSettings) -> dict[str, int]:
        """``in/delivered``, ``in/closed``, ``in/no_flow``... (its mux) and ``session/<outcome>``,
        from the transceiver's ``/metrics``."""
        status, body = http_get(self.lab.namespace(tx.name), f"{tx.signaling_url}/metrics", timeout=3.0)
        out = {}
        for line in body.splitlines() if status == 200 else []:
            m = TX_METRIC_RE.match(line)
            if m and int(float(m["value"])):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
                key = (
                    f"session/{labels['outcome']}"
                    if m["name"] == "sessions"
                    else (f"{labels.get('direction')}/{labels.get('result')}")
                )
                out[key] = int(float(m["value"]))
        return out

    def relay_counters(self) -> dict[str, int]:
        """``verdict/reason`` -> packets, from the relay's ``icegate_relay_packets_total``."""
        return parse_counters(self.relay_metrics())

    def operator_view(
        self, *command: str, check: bool = True, host: str = "relay", config: Path | None = None
    ) -> Any:
        """``icegate COMMAND --json --config <relay config>`` in the relay's namespace, as an
        operator would run it: the pinned maps (XDP) or the twin's over its HTTP endpoint."""
        argv = [*self.icegate, *command, "--json", "--config", str(config or self.relay_config)]
        try:
            out = self.lab.run(host, argv, check=check)
            return json.loads(out) if out.strip() else None
        except (LinkError, ValueError) as exc:
            raise DemoError(f"icegate {' '.join(command)} failed: {exc}") from None

    def relay_status(self) -> dict[str, Any]:
        # `relay status` exits 1 when unhealthy; its JSON still says why
        status: dict[str, Any] = self.operator_view("relay", "status", check=False) or {}
        return status

    def relay_flows(self, host: str = "relay", config: Path | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.operator_view("flows", "ls", host=host, config=config) or []
        return rows

    def cached_flows(self) -> set[str]:
        """``client:port`` of every flow the relays wrote to their region's Redis flow cache."""
        return set(self.cached_flow_ttls())

    def cached_flow_ttls(self) -> dict[str, int]:
        """``client:port`` -> seconds left (Redis TTL) of every cached flow record."""
        cfg = self.lab.config
        regions = [("dc", cfg.region, self.lab.redis_url, list(self.lab.vips))]
        if cfg.second_region is not None:
            r2 = cfg.second_region
            vips = [(v, cfg.public.vip_port) for r in r2.relays for v in (r.vip4, r.vip6)]
            regions.append(("dc2", r2.region, r2.redis_url, vips))
        found: dict[str, int] = {}
        for host, region, url, region_vips in regions:
            keys = Keys(region)
            with netns.entered(self.lab.namespace(host)):
                r = redis_sync.Redis.from_url(url, socket_timeout=3)
                try:
                    for address, port in region_vips:
                        prefix = len(keys.flow_pattern(address, port)) - 1
                        for key in r.scan_iter(match=keys.flow_pattern(address, port), count=1000):
                            client, client_port = key.decode()[prefix:].rsplit(":", 1)
                            found[f"{client}:{client_port}"] = int(r.ttl(key))
                finally:
                    r.close()
        return found


# ---- helpers over logs and text ------------------------------------------------------------
def parse_counters(metrics: str) -> dict[str, int]:
    out = {}
    for line in metrics.splitlines():
        m = METRIC_RE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
            out[f"{labels.get('verdict')}/{labels.get('reason')}"] = int(float(m["value"]))
    return out


def datapath_of(status: dict[str, Any]) -> tuple[str, str]:
    """The datapath the relay runs and why, from ``icegate relay status --json``."""
    mode = str(status.get("mode") or "unknown")
    if mode.startswith("xdp"):
        return mode, ",".join(f"{a['interface']}:{a['mode']}" for a in status.get("attached", []))
    reason, detail = status.get("reason") or "", status.get("detail") or ""
    return mode, f"{reason}: {detail}" if detail else reason


def describe_datapath(mode: str, reason: str) -> str:
    if mode.startswith("xdp"):
        return f"XDP {mode.removeprefix('xdp-')} (in-kernel fast path; {reason})"
    if mode == "userspace":
        return f"userspace twin ({reason or 'no reason given'})"
    return f"datapath {mode}"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def brief(result: dict[str, Any] | None) -> str:
    if result is None:
        return "no result"
    if result.get("error"):
        return f"error: {str(result['error']).splitlines()[0]}"
    rtts = [t["rtt_ms"] for t in result.get("turns", []) if t.get("rtt_ms") is not None]
    return f"setup {result.get('setup_ms')} ms, {len(result.get('turns', []))} turns, rtt {rtts} ms"


def render(summary: dict[str, Any], table: str) -> str:
    stats = summary["stats"]
    lines = [
        "",
        table,
        "",
        demo_report.relay_line(summary["datapath"], summary["relay"]),
        f"medians: setup {stats['setup_ms_median']} ms, turn round trip {stats['rtt_ms_median']} ms "
        f"(end of speech -> first agent audio; includes the agent's 600 ms end-of-turn wait)",
    ]
    if summary["agent"] == "speech":
        lines += ["", "spoken turns (said -> the agent heard -> the agent answered -> the client heard):"]
        lines += demo_report.spoken_lines(summary["sessions"])
    for host, check in summary.get("load_clients", {}).items():
        lines.append(f"load client {host}: {loadclient.describe(check)}")
    for name, counters in summary.get("transceivers", {}).items():
        shown = [f"{k} {v}" for k, v in sorted(counters.items()) if k.startswith(("in/", "session/"))]
        lines.append(f"transceiver {name}: {', '.join(shown)}")
    if summary.get("cpu_s"):
        used = ", ".join(
            f"{name} {cpu:.1f}" for name, cpu in sorted(summary["cpu_s"].items()) if name != "redis"
        )
        lines.append(
            f"CPU seconds used: {used} (in the {summary['timings'].get('clients_s', 0):g} s the clients ran)"
        )
    failed = [s for s in summary["sessions"] if not s["ok"]]
    for s in failed:
        lines.append(f"session {s['index']} FAILED: " + "; ".join(s["problems"]))
    n = len(summary["sessions"])
    lines.append(f"{n - len(failed)}/{n} sessions carried audio both ways through the relay")
    return "\n".join(lines)


@click.command(short_help="voice sessions through the relay in the lab")
@click.option(
    "--sessions",
    type=click.IntRange(1, 128),
    default=4,
    show_default=True,
    help="Concurrent voice sessions (spread over both client hosts).",
)
@click.option(
    "--agent",
    type=click.Choice(["echo", "tone", "speech"]),
    default="echo",
    show_default=True,
    help="The voice agent behind the transceivers; speech: clients speak phrases (espeak-ng), "
    "the agent recognises and answers (pocketsphinx).",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "xdp", "userspace"]),
    default="auto",
    show_default=True,
    help="Relay datapath; auto falls back to the userspace twin where XDP is unavailable.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    default=3.0,
    show_default=True,
    help="Each client starts new turns for this many seconds (one turn takes ~2 s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (`icegate lab down` removes it).")
@click.option(
    "--name",
    "--lab-name",
    "lab_name",
    cls=Renamed,
    default=DEFAULT_NAME,
    show_default=True,
    help="Lab name (namespace prefix), as `icegate lab --name`.",
)
@click.option(
    "--regions",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="2: two regions (Frankfurt; Singapore, dual-stack), clients steered by the geo front door.",
)
def demo(
    sessions: int,
    agent: str,
    mode: str,
    duration: float,
    as_json: bool,
    keep: bool,
    lab_name: str,
    regions: int,
) -> None:
    """Voice sessions through the relay in a network-namespace lab, then a summary.

    Exit status 0 only if every session carried audio both ways through the relay.
    """
    options = Options(sessions, agent, mode, duration, lab_name, keep, regions=regions)
    say = Progress()
    say(f"icegate demo: {sessions} sessions, {agent} agent, relay mode {mode}, lab {lab_name}")
    runner = Demo(options, say)
    try:
        with terminate_as_interrupt():
            summary = runner.run()
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130) from None
    finally:
        if not runner.built:
            pass  # nothing of ours to remove (e.g. a lab of that name already existed)
        elif keep:
            say(f"lab {lab_name} left up: see `icegate lab status --name {lab_name}`; remove it with "
                f"`icegate lab down --name {lab_name}`")  # fmt: skip
        else:
            runner.down()
    summary["timings"]["total_s"] = round(time.monotonic() - say.started, 2)
    click.echo(json.dumps(summary, indent=1) if as_json else render(summary, runner.table))
    if not summary["ok"]:
        raise SystemExit(1)


__all__ = ["DemoError", "Options", "demo"]
