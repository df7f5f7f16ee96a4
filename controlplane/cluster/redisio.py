"""Redis for the control plane: one asyncio client, a per-command timeout, degraded mode.

Everything the relay reads from or writes to Redis goes through :class:`RedisStore`;
the key names and records are :mod:`icegate.schema`. redis-py, socket and timeout
errors are translated here to :class:`~icegate.errors.StoreError` (``raise ... from``),
so the rest of the control plane handles one error type.

Degraded mode. Nothing in the packet path waits on Redis: the first command that fails
to reach Redis marks the store *down*, and from then on every command fails at once
with ``StoreError`` (the slow path gives up on that packet instead of waiting out a
timeout). :meth:`RedisStore.supervise` alone probes Redis, with exponential backoff
from ``retry_min_s`` to ``retry_max_s``; when a probe succeeds it runs the *restore
hooks* (full sync of backends and route keys, flush of queued flow-cache writes) and
only then reports the store up again, so state is reconciled without a restart.
Replies that parse badly (``ResponseError``) are counted but do not degrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from controlplane.config import RedisConfig
from icegate import redisurl
from icegate.errors import StoreError
from icegate.schema import CachedFlow, Keys, Registration, RouteKeySet

log = logging.getLogger(__name__)

RestoreHook = Callable[[], Awaitable[None]]
FlowAddr = tuple[str, int, str, int]  # (vip, vip port, client, client port), text addresses
BATCH = 1000  # commands per pipeline round trip

# Errors that mean "Redis is not reachable" (degrade) rather than "Redis said no".
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def _fields(record: dict[str, str]) -> Mapping[Any, Any]:
    return record  # redis-py's stubs want a Mapping of its own key union


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """The relay's view of its region's Redis. Not thread-safe: one event loop."""

    def __init__(self, cfg: RedisConfig) -> None:
        self.cfg = cfg
        self.keys = Keys(cfg.region)
        # No client-side retries: supervise() is the one place that retries, with backoff.
        self._client: aioredis.Redis = redisurl.client(  # plain, TLS, unix or Sentinel (icegate.redisurl)
            cfg.url,
            socket_timeout=cfg.timeout_s,
            socket_connect_timeout=cfg.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._up = False  # reachable and reconciled
        self._down = False  # fail fast: a command found Redis unreachable
        self._lost = asyncio.Event()
        self._up_event = asyncio.Event()
        self._hooks: list[RestoreHook] = []
        self.errors_total = 0  # commands that failed (unreachable or bad reply)
        self.skipped_total = 0  # commands refused without trying while down
        self.restores_total = 0
        self.last_error = "not connected yet"
        self.down_since: float | None = time.monotonic()

    # ---- health ----
    @property
    def degraded(self) -> bool:
        return not self._up

    async def wait_up(self) -> None:
        """Return once Redis is reachable and reconciled."""
        await self._up_event.wait()

    def on_restore(self, hook: RestoreHook) -> None:
        """Run ``hook`` after every (re)connection, before the store reports up."""
        self._hooks.append(hook)

    async def supervise(self) -> None:
        """Forever: probe while down (exponential backoff), restore, then wait for the next loss."""
        delay = self.cfg.retry_min_s
        while True:
            if self._up:
                await self._lost.wait()
                self._lost.clear()
                delay = self.cfg.retry_min_s
                continue
            if self.restores_total:
                # Pooled connections to the Redis that went away are dead: drop them all, so
                # the first command after the restore does not fail and flap the state.
                await self._client.connection_pool.disconnect()
            self._lost.clear()  # from here on, a failure of any command means "not restored"
            self._down = False  # let the probe and the restore hooks through
            try:
                await self.ping()
                for hook in self._hooks:
                    await hook()
                if self._lost.is_set():  # another task's command failed while the hooks ran
                    raise StoreError(f"redis lost during the restore ({self.last_error})")
            except StoreError as exc:
                self._down = True
                log.debug("redis still unreachable retry_in_s=%.2f error=%s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max_s)
                continue
            outage = time.monotonic() - self.down_since if self.down_since is not None else 0.0
            self._up, self.down_since = True, None
            self.restores_total += 1
            self._up_event.set()
            log.info("redis reachable url=%s outage_s=%.2f", self._safe_url, outage)

    @property
    def _safe_url(self) -> str:
        return redisurl.safe(self.cfg.url)

    def _failed(self, what: str, exc: BaseException) -> StoreError:
        self.errors_total += 1
        message = f"redis {what}: {type(exc).__name__}: {exc}"
        if isinstance(exc, _UNREACHABLE):
            self.last_error = message
            if self._up:
                log.warning("redis unreachable, degraded error=%s", message)
                self.down_since = time.monotonic()
            self._up, self._down = False, True
            self._up_event.clear()
            self._lost.set()
        return StoreError(message)

    @contextlib.asynccontextmanager
    async def _command(self, what: str) -> AsyncIterator[aioredis.Redis]:
        if self._down:
            self.skipped_total += 1
            raise StoreError(f"redis degraded ({self.last_error})")
        try:
            yield self._client
        except (RedisError, *_UNREACHABLE) as exc:
            raise self._failed(what, exc) from exc

    async def ping(self) -> None:
        async with self._command("PING") as r:
            await r.ping()

    async def close(self) -> None:
        await self._client.aclose()

    # ---- transceiver registrations ----
    async def registrations(self) -> dict[tuple[int, int], Registration]:
        """Every registration in the region; records that do not parse are logged and skipped."""
        async with self._command("SCAN tx") as r:
            names = [k async for k in r.scan_iter(match=self.keys.transceiver_pattern, count=BATCH)]
            records = await self._hgetall_many(r, names)
        out: dict[tuple[int, int], Registration] = {}
        for name, record in zip(names, records, strict=True):
            if not record:
                continue  # expired between SCAN and HGETALL
            try:
                reg = Registration.decode(record)
            except StoreError as exc:
                log.warning("skipping registration key=%s error=%s", _text(name), exc)
                continue
            out[(reg.cluster, reg.index)] = reg
        return out

    async def registration(self, cluster: int, index: int) -> Registration | None:
        async with self._command("HGETALL tx") as r:
            record = await r.hgetall(self.keys.transceiver(cluster, index))
        return Registration.decode(record) if record else None

    async def set_transceiver_state(self, cluster: int, index: int, state: str) -> bool:
        """Write ``state`` into an existing registration and announce it; False if not registered."""
        if state not in Registration.STATES:
            raise ValueError(f"state must be one of {Registration.STATES}, got {state!r}")
        name = self.keys.transceiver(cluster, index)
        async with self._command("HSET tx state") as r:
            if not await r.exists(name):
                return False
            await r.hset(name, "state", state)
            await r.publish(self.keys.transceiver_events, f"{cluster}:{index}")
        return True

    async def transceiver_events(self, poll_s: float = 1.0) -> AsyncIterator[tuple[int, int] | None]:
        """Yield ``(cluster, index)`` per ``tx-events`` message, ``None`` every ``poll_s`` of silence."""
        async with self._command("SUBSCRIBE tx-events") as r:
            pubsub = r.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self.keys.transceiver_events)
        try:
            while True:
                async with self._command("pubsub read"):
                    message = await pubsub.get_message(timeout=poll_s)
                if message is None:
                    yield None
                    continue
                cluster, _, index = _text(message["data"]).partition(":")
                try:
                    yield int(cluster), int(index)
                except ValueError:
                    log.warning("ignoring tx-events message data=%r", message["data"])
        finally:
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                await pubsub.aclose()

    # ---- route keys ----
    async def route_key_set(self) -> RouteKeySet | None:
        async with self._command("HGETALL route-keys") as r:
            record = await r.hgetall(self.keys.route_keys)
        return RouteKeySet.decode(record) if record else None

    async def update_route_keys(self, change: Callable[[RouteKeySet | None], RouteKeySet]) -> RouteKeySet:
        """Replace the route-key set with ``change(current)`` atomically (WATCH/MULTI)."""
        name = self.keys.route_keys
        async with self._command("route-keys transaction") as r, r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    record = await pipe.hgetall(name)
                    new = change(RouteKeySet.decode(record) if record else None)
                    pipe.multi()
                    pipe.delete(name)
                    pipe.hset(name, mapping=_fields(new.encode()))
                    await pipe.execute()
                    return new
                except aioredis.WatchError:
                    continue

    # ---- flow cache ----
    def flow_key(self, addr: FlowAddr) -> str:
        return self.keys.flow(*addr)

    async def put_flows(self, items: Sequence[tuple[FlowAddr, CachedFlow]], ttl_s: int) -> None:
        """Write cached flows with a TTL, pipelined."""
        async with self._command("HSET flows") as r:
            for start in range(0, len(items), BATCH):
                async with r.pipeline(transaction=False) as pipe:
                    for addr, flow in items[start : start + BATCH]:
                        name = self.flow_key(addr)
                        pipe.hset(name, mapping=_fields(flow.encode()))
                        pipe.expire(name, ttl_s)
                    await pipe.execute()

    async def touch_flows(self, addrs: Sequence[FlowAddr], ttl_s: int) -> list[bool]:
        """Refresh TTLs, pipelined; False where the key no longer exists (the caller rewrites it)."""
        found: list[bool] = []
        async with self._command("EXPIRE flows") as r:
            for start in range(0, len(addrs), BATCH):
                async with r.pipeline(transaction=False) as pipe:
                    for addr in addrs[start : start + BATCH]:
                        pipe.expire(self.flow_key(addr), ttl_s)
                    found.extend(bool(x) for x in await pipe.execute())
        return found

    async def get_flows(self, addrs: Sequence[FlowAddr]) -> list[CachedFlow | None]:
        """Look cached flows up, one pipelined round trip per batch; bad records count as missing."""
        async with self._command("HGETALL flows") as r:
            records = await self._hgetall_many(r, [self.flow_key(a) for a in addrs])
        return [self._decode_flow(rec) for rec in records]

    async def scan_flows(self, vip: str, vip_port: int) -> list[tuple[str, int, CachedFlow]]:
        """Every cached flow of one VIP: ``(client, client port, flow)``."""
        prefix = self.keys.flow(vip, vip_port, "", 0)[: -len(":0")]
        async with self._command("SCAN flows") as r:
            names = [
                _text(k) async for k in r.scan_iter(match=self.keys.flow_pattern(vip, vip_port), count=BATCH)
            ]
            records = await self._hgetall_many(r, names)
        out = []
        for name, record in zip(names, records, strict=True):
            client, _, port = name[len(prefix) :].rpartition(":")
            flow = self._decode_flow(record)
            if flow is not None and client and port.isdigit():
                out.append((client, int(port), flow))
        return out

    async def shorten_flows(self, names: Sequence[str], ttl_s: int) -> int:
        """Lower the TTLs of flow records to at most ``ttl_s`` (``EXPIRE … LT``, never raised),
        pipelined; returns how many records were shortened."""
        shortened = 0
        async with self._command("EXPIRE LT flows") as r:
            for start in range(0, len(names), BATCH):
                async with r.pipeline(transaction=False) as pipe:
                    for name in names[start : start + BATCH]:
                        pipe.expire(name, ttl_s, lt=True)
                    shortened += sum(1 for ok in await pipe.execute() if ok)
        return shortened

    @staticmethod
    def _decode_flow(record: dict[Any, Any]) -> CachedFlow | None:
        if not record:
            return None
        try:
            return CachedFlow.decode(record)
        except StoreError as exc:
            log.warning("ignoring cached flow error=%s", exc)
            return None

    @staticmethod
    async def _hgetall_many(r: aioredis.Redis, names: Sequence[Any]) -> list[dict[Any, Any]]:
        out: list[dict[Any, Any]] = []
        for start in range(0, len(names), BATCH):
            async with r.pipeline(transaction=False) as pipe:
                for name in names[start : start + BATCH]:
                    pipe.hgetall(name)
                out.extend(await pipe.execute())
        return out
