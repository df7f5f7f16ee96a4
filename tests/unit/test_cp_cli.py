"""The operator CLI against known map contents (MemoryStore) and a real redis-server."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import click
import pytest
import redis as redis_sync
from click.testing import CliRunner, Result

from controlplane.config import HttpConfig
from controlplane.datapath.layout import BackendState, Stat
from controlplane.datapath.store import Backend, Flow, MemoryStore, Vip
from controlplane.operator import cli, cli_backends
from controlplane.operator.cli import CliEnv, Target
from icegate import token as tokens
from icegate.errors import RelayNotRunning
from icegate.inet import addr16
from icegate.schema import Keys, Registration, RouteKeySet
from labkit.support import RedisServer, free_port, unique_region

S = 10**9
NOW = 1000 * S


class Counters:
    def __init__(self, samples: list[list[tuple[int, int]]]) -> None:
        self.samples = samples

    def counters(self) -> Sequence[tuple[int, int]]:
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def known_maps() -> MemoryStore:
    maps = MemoryStore()
    maps.set_vips([Vip("192.0.2.10", 3478, 0), Vip("2001:db8::10", 3478, 1)])
    maps.put_backend(Backend(1, 1, "10.70.0.11", 6081, BackendState.ACTIVE, 3))
    maps.put_backend(Backend(1, 2, "10.70.0.12", 6081, BackendState.DRAINING, 1))
    maps.put_flow(
        (addr16("100.64.1.2"), 40000, 0), Flow(1, 1, 11, NOW - 90 * S, NOW - 2 * S, 10, 1000, 9, 900)
    )
    maps.put_flow((addr16("100.64.1.10"), 40002, 0), Flow(1, 2, 12, NOW - 5 * S, NOW, 3, 300, 0, 0))
    maps.put_flow(
        (addr16("2001:db8:100::2"), 40001, 1), Flow(1, 1, 13, NOW - 7200 * S, NOW - S, 1, 100, 1, 100)
    )
    maps.put_pending((addr16("100.64.1.2"), 40005, 0), Flow(1, 2, 14, NOW - S, NOW - S, 1, 120, 0, 0))
    return maps


def env_for(
    maps: MemoryStore, samples: list[list[tuple[int, int]]] | None = None, control_plane: str = "ready"
) -> CliEnv:
    def info(target: Target) -> dict[str, Any]:
        return {"mode": "userspace", "program_id": None, "attached": []}

    counters = Counters(samples or [[(0, 0)] * len(Stat)])
    return CliEnv(
        open_maps=lambda t: maps,
        open_counters=lambda t: counters,
        relay_info=info,
        capacities=cli.limit_capacities,
        control_plane=lambda t: control_plane,
        clock_ns=lambda: NOW,
        sleep=lambda s: None,
    )


def invoke(command: click.Command, args: list[str], env: CliEnv, **kw: Any) -> Result:
    """Run ``command`` with ``--name edge1`` after the subcommand name."""
    if isinstance(command, click.Group):
        args = [args[0], "--name", "edge1", *args[1:]]
    else:
        args = ["--name", "edge1", *args]
    return CliRunner().invoke(command, args, obj=env, **kw)


def test_flows_ls_table_and_json() -> None:
    env = env_for(known_maps())
    result = invoke(cli.flows, ["ls"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # issue 16: single-word headers (awk, cut)
    assert lines[0].split() == [
        "CLIENT", "VIP", "BACKEND", "STATE", "AGE", "IDLE", "PKTS_IN", "BYTES_IN", "PKTS_OUT", "BYTES_OUT"
    ]  # fmt: skip
    assert [line.split()[:6] for line in lines[1:]] == [
        ["100.64.1.2:40000", "192.0.2.10:3478", "1:1", "confirmed", "1m30s", "2.0s"],
        ["100.64.1.10:40002", "192.0.2.10:3478", "1:2", "confirmed", "5.0s", "0.0s"],
        ["[2001:db8:100::2]:40001", "[2001:db8::10]:3478", "1:1", "confirmed", "2h00m", "1.0s"],
    ]
    assert lines[1].split()[6:] == ["10", "1000", "9", "900"]
    bare = invoke(cli.flows, ["ls", "--no-headers"], env).output.splitlines()
    assert bare == lines[1:]
    wide = invoke(cli.flows, ["ls", "-o", "wide"], env).output.splitlines()
    assert wide[0].split()[-2:] == ["VIP_INDEX", "TOKEN_TAG"] and wide[1].split()[-2:] == ["0", "11"]
    assert json.loads(invoke(cli.flows, ["ls", "-o", "json"], env).output)[0]["token_tag"] == 11

    rows = json.loads(invoke(cli.flows, ["ls", "--json"], env).output)
    assert len(rows) == 3
    assert rows[0] == {
        "client": "100.64.1.2", "client_port": 40000, "vip": "192.0.2.10", "vip_port": 3478, "vip_index": 0,
        "backend": "1:1", "state": "confirmed", "token_tag": 11, "age_s": 90.0, "idle_s": 2.0,
        "packets_in": 10, "bytes_in": 1000, "packets_out": 9, "bytes_out": 900,
    }  # fmt: skip


def test_flows_ls_filters() -> None:
    env = env_for(known_maps())

    def clients(*args: str) -> list[tuple[str, int]]:
        result = invoke(cli.flows, ["ls", "--json", *args], env)
        assert result.exit_code == 0, result.output
        return [(r["client"], r["client_port"]) for r in json.loads(result.output)]

    assert clients("--backend", "1:2") == [("100.64.1.10", 40002)]
    assert clients("--client", "100.64.1.2") == [("100.64.1.2", 40000)]
    assert clients("--client", "100.64.1.2:40001") == []
    assert clients("--client", "[2001:db8:100::2]:40001") == [("2001:db8:100::2", 40001)]
    assert clients("--pending") == [("100.64.1.2", 40005)]
    bad = invoke(cli.flows, ["ls", "--backend", "x"], env)
    assert bad.exit_code == 2 and "CLUSTER:INDEX" in bad.output


def test_flows_show_and_flush() -> None:
    maps = known_maps()
    env = env_for(maps)
    result = invoke(cli.flows, ["show", "100.64.1.2"], env)
    assert result.exit_code == 0, result.output
    assert "state:        confirmed" in result.output and "state:        pending" in result.output
    rows = json.loads(invoke(cli.flows, ["show", "100.64.1.2:40005", "--json"], env).output)
    assert [(r["backend"], r["state"]) for r in rows] == [("1:2", "pending")]
    missing = invoke(cli.flows, ["show", "100.64.9.9"], env)
    assert missing.exit_code == 1 and "no flow for 100.64.9.9" in missing.output

    refused = invoke(cli.flows, ["flush"], env, input="n\n")
    assert refused.exit_code == 1 and sum(1 for _ in maps.flows()) == 3
    done = invoke(cli.flows, ["flush", "--yes"], env)
    assert done.exit_code == 0 and done.output == "flushed 4 flows\n"
    assert invoke(cli.flows, ["ls"], env).output == "no confirmed flows\n"
    again = json.loads(invoke(cli.flows, ["flush", "--yes", "--json", "--name", "edge1"], env).output)
    assert again == {"relay": "edge1", "flushed": 0}


def test_relay_not_running_is_one_clear_line() -> None:
    def missing(target: Target) -> MemoryStore:
        raise RelayNotRunning(f"relay {target.name!r} is not running: nothing pinned at {target.pin_dir}")

    result = invoke(cli.flows, ["ls"], CliEnv(open_maps=missing))
    assert result.exit_code == 1
    assert (
        result.output
        == "icegate: relay 'edge1' is not running: nothing pinned at /sys/fs/bpf/icegate/edge1\n"
    )


def test_stats_rates_and_json() -> None:
    zero = [(0, 0)] * len(Stat)
    first, second = list(zero), list(zero)
    first[Stat.FWD_FLOW], second[Stat.FWD_FLOW] = (100, 10_000), (300, 30_000)
    first[Stat.DROP_TOKEN_MAC], second[Stat.DROP_TOKEN_MAC] = (50, 5000), (50, 5000)
    second[Stat.FWD_RETURN] = (10, 1000)
    env = env_for(known_maps(), [first, second])
    result = invoke(cli.stats, ["--interval", "2", "--count", "2"], env)
    assert result.exit_code == 0, result.output
    snapshot, rates = result.output.split("\n\n")
    assert [line.split() for line in snapshot.splitlines()][1:] == [
        ["forward", "flow", "100", "10000", "-", "-"],
        ["drop", "token_mac", "50", "5000", "-", "-"],
    ]
    assert [line.split() for line in rates.splitlines()][1:] == [
        ["forward", "flow", "300", "30000", "100.0", "80.0k"],
        ["forward", "return", "10", "1000", "5.0", "4.0k"],
        ["drop", "token_mac", "50", "5000", "0.0", "0"],
    ]
    env = env_for(known_maps(), [first])
    sample = json.loads(invoke(cli.stats, ["--json"], env).output)
    assert sample["sample"] == 1 and [r["stat"] for r in sample["stats"]] == ["FWD_FLOW", "DROP_TOKEN_MAC"]


@pytest.mark.parametrize("control_plane", ["ready", "redis: degraded (connection refused)", "not running"])
def test_relay_status(control_plane: str) -> None:
    env = env_for(known_maps(), control_plane=control_plane)
    result = invoke(cli.relay, ["status", "--json"], env)
    # issue 16: non-zero when the control plane is degraded or unreachable
    assert result.exit_code == (0 if control_plane == "ready" else 1), result.output
    status = json.loads(result.output)
    assert status["healthy"] is (control_plane == "ready")
    assert status["maps"]["flows"] == {"entries": 3, "capacity": 262144}
    assert status["maps"]["backends"]["entries"] == 2 and status["mode"] == "userspace"
    assert status["control_plane"] == control_plane
    text = invoke(cli.relay, ["status"], env).output
    assert "  flows              3 / 262144   (0.0%)" in text
    assert f"control_plane: {control_plane}\n" in text


class ReadyzHandler(http.server.BaseHTTPRequestHandler):
    reply: tuple[int, str] = (200, "ready\n")

    def do_GET(self) -> None:
        code, body = self.reply if self.path == "/readyz" else (404, "")
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ((200, "ready\n"), "ready"),
        ((503, "redis: degraded\nprogram: not attached\n"), "redis: degraded; program: not attached"),
    ],
)
def test_readiness_reads_the_daemons_readyz(reply: tuple[int, str], expected: str) -> None:
    handler = type("Handler", (ReadyzHandler,), {"reply": reply})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert cli.readiness(HttpConfig("127.0.0.1", server.server_address[1])) == expected
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_of_a_port_nobody_listens_on_is_not_running() -> None:
    assert cli.readiness(HttpConfig("127.0.0.1", free_port())) == "not running"


def region() -> str:
    return unique_region("cli")


def test_backends_ls_merges_map_and_redis(redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = region()
    keys = Keys(name)
    r = redis_sync.Redis.from_url(redis.url)
    r.hset(
        keys.transceiver(1, 1),
        mapping=Registration(1, 1, "10.70.0.11", 6081, "http://x", "active", 3, 7).encode(),
    )
    r.hset(
        keys.transceiver(1, 3),
        mapping=Registration(1, 3, "10.70.0.13", 6081, "http://y", "active", 1).encode(),
    )
    maps = known_maps()
    # An ended call's flow (idle past the expiry timeout, 30 s) is not counted as live.
    maps.put_flow((addr16("100.64.1.99"), 40009, 0), Flow(1, 2, 15, NOW - 90 * S, NOW - 31 * S))
    monkeypatch.setattr(cli_backends, "clock_ns", lambda: NOW)
    env = env_for(maps)
    args = ["ls", "--json", "--redis-url", redis.url, "--region", name]
    rows = json.loads(invoke(cli.backends, args, env).output)
    brief = [
        (r["cluster"], r["index"], r["map_state"], r["redis_state"], r["sessions"], r["flows"]) for r in rows
    ]
    assert brief == [
        (1, 1, "active", "active", 7, 2),
        (1, 2, "draining", None, None, 1),
        (1, 3, None, "active", 0, 0),
    ]
    table = invoke(cli.backends, args[:1] + args[2:], env).output.splitlines()
    assert table[0].split()[:4] == ["BACKEND", "TUNNEL", "MAP_STATE", "MAP_GEN"]
    assert table[2].split()[:6] == ["1:2", "10.70.0.12:6081", "draining", "1", "-", "-"]

    drained = invoke(cli.backends, ["drain", "1:1", "--redis-url", redis.url, "--region", name], env)
    assert drained.exit_code == 0 and drained.output == "transceiver 1:1 draining\n"
    assert r.hget(keys.transceiver(1, 1), "state") == b"draining"
    as_json = invoke(
        cli.backends, ["drain", "1:3", "--json", "--redis-url", redis.url, "--region", name], env
    )
    assert json.loads(as_json.output) == {"backend": "1:3", "state": "draining"}
    assert r.hget(keys.transceiver(1, 3), "state") == b"draining"
    unknown = invoke(cli.backends, ["drain", "4:4", "--redis-url", redis.url, "--region", name], env)
    assert unknown.exit_code == 1 and "not registered" in unknown.output
    r.close()


def test_backends_ls_without_redis_options_reads_only_the_map() -> None:
    """issue 16: no --config/--redis-url: the map view alone, and a note saying so; no
    silent attempt on a localhost Redis."""
    result = invoke(cli.backends, ["ls", "--json"], env_for(known_maps()))
    assert result.exit_code == 0, result.output
    assert "redis view skipped" in result.stderr and "unavailable" not in result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and all(r["redis_state"] is None for r in rows)


def test_token_init_rotate_mint_decode(redis: RedisServer) -> None:
    name = region()
    keys = Keys(name)
    r = redis_sync.Redis.from_url(redis.url)
    env = env_for(known_maps())
    where = ["--redis-url", redis.url, "--region", name]
    assert invoke(cli.token, ["init", *where], env).output == "route keys: current id 0\n"
    assert invoke(cli.token, ["init", *where], env).output == "route keys: current id 0\n"
    first = RouteKeySet.decode(r.hgetall(keys.route_keys))
    old_ufrag = invoke(cli.token, ["mint", "--cluster", "1", "--index", "2", *where], env).output.strip()
    assert tokens.verify(old_ufrag, first.keys).index == 2

    rotated = invoke(cli.token, ["rotate", "--grace", "30", *where], env)
    assert rotated.exit_code == 0 and "current id 1, previous id 0 accepted until" in rotated.output
    second = RouteKeySet.decode(r.hgetall(keys.route_keys))
    assert second.current == 1 and second.previous == 0 and set(second.accepted()) == {0, 1}

    decoded = json.loads(invoke(cli.token, ["decode", old_ufrag, "--json", *where], env).output)
    assert (decoded["cluster"], decoded["index"], decoded["key_id"]) == (1, 2, 0)
    assert decoded["mac_valid"] is True and decoded["key_state"] == "previous"
    minted = json.loads(
        invoke(cli.token, ["mint", "--cluster", "5", "--index", "6", "--json", *where], env).output
    )
    assert (minted["cluster"], minted["index"], minted["key_id"]) == (5, 6, 1)
    assert tokens.verify(minted["ufrag"], second.keys).cluster == 5
    again = json.loads(invoke(cli.token, ["rotate", "--grace", "5", "--json", *where], env).output)
    assert (again["current"], again["previous"]) == (2, 1) and again["previous_until"] > time.time()
    assert json.loads(invoke(cli.token, ["init", "--json", *where], env).output)["current"] == 2
    new_ufrag = invoke(cli.token, ["mint", "--cluster", "3", "--index", "4", *where], env).output.strip()
    text = invoke(cli.token, ["decode", f"{new_ufrag}:clientufrag", *where], env).output
    assert "key_state:  current" in text and "mac_valid:  True" in text and "cluster:    3" in text

    forged_run = invoke(cli.token, ["decode", old_ufrag, "--json", "--key-hex", "00" * 16], env)
    forged = json.loads(forged_run.stdout)
    assert forged["mac_valid"] is False and forged["error"] == "token_mac"
    assert forged_run.exit_code == 1  # issue 16: a wrong MAC is a failure for scripts
    # A key id Redis does not have (or no longer accepts): refused by relays, exit 1.
    foreign = tokens.mint(9, bytes(16), 1, 2)
    absent = invoke(cli.token, ["decode", foreign, "--json", *where], env)
    assert absent.exit_code == 1 and json.loads(absent.stdout)["key_state"] == "absent"
    bad = invoke(cli.token, ["decode", "short", *where], env)
    assert bad.exit_code == 1 and "token_length" in bad.output
    r.close()


def test_token_decode_without_redis() -> None:
    """Redis down: the key comes from the relay's route_keys map; no relay either: the
    fields still decode and the MAC is reported unchecked, exit 0."""
    key = bytes(range(16))
    ufrag = tokens.mint(2, key, 7, 9)
    dead = ["--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    maps = known_maps()
    maps.set_route_keys({2: key})

    from_map = invoke(cli.token, ["decode", ufrag, "--json", *dead], env_for(maps))
    assert from_map.exit_code == 0, from_map.output
    row = json.loads(from_map.stdout)
    assert (row["cluster"], row["index"], row["key_id"]) == (7, 9, 2)
    assert row["key_state"] == "relay map" and row["mac_valid"] is True
    assert "redis view unavailable" in from_map.stderr

    def not_running(target: Target) -> MemoryStore:
        raise RelayNotRunning("relay 'edge1' is not running")

    env = dataclasses.replace(env_for(maps), open_maps=not_running)
    blind = invoke(cli.token, ["decode", ufrag, "--json", *dead], env)
    assert blind.exit_code == 0, blind.output
    row = json.loads(blind.stdout)
    assert (row["cluster"], row["index"]) == (7, 9)
    assert row["key_state"] == "unknown" and row["mac_valid"] is None and row["error"] == "token_key"
    assert "map view unavailable: relay 'edge1' is not running" in blind.stderr
