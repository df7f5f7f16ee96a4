"""The transceiver in Redis: registration heartbeat, route keys, drain requests.

Every ``heartbeat_interval_s`` one round trip (a pipeline) does two things:

1. a Lua script refreshes ``Keys.transceiver(cluster, index)`` (an
   :class:`icegate.schema.Registration` hash) with TTL ``heartbeat_ttl_s``. It never
   overwrites ``state`` of a record this process wrote: ``icegate backends drain`` sets
   ``state = draining`` there, and the script returns it, which starts our drain. A
   missing record, or one left by an earlier process (other ``generation``), is written
   whole and announced on ``tx-events``, as is our own switch to draining;
2. ``HGETALL route-keys``: the current route key for minting ufrags.

When Redis is unreachable the transceiver keeps serving with the keys it has
(``up`` is False, ``/readyz`` says degraded) and retries with exponential backoff.
Without ``redis_url`` the static ``route_key`` from the configuration is used and
nothing is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from icegate import redisurl, token
from icegate.errors import StoreError
from icegate.schema import Keys, Registration, RouteKeySet
from transceiver.config import TransceiverConfig

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0

# KEYS: registration hash, events channel.
# ARGV: ttl ms, announcement, our generation, our state, then field, value, ... (no state).
_HEARTBEAT = """
local state = redis.call('HGET', KEYS[1], 'state')
local generation = redis.call('HGET', KEYS[1], 'generation')
if state and generation == ARGV[3] then
    if ARGV[4] == 'draining' and state ~= 'draining' then
        state = 'draining'
        redis.call('HSET', KEYS[1], 'state', state)
        redis.call('PUBLISH', KEYS[2], ARGV[2])
    end
    redis.call('HSET', KEYS[1], unpack(ARGV, 5))
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return state
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', ARGV[4], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return ARGV[4]
"""


class Registry:
    def __init__(
        self,
        config: TransceiverConfig,
        *,
        sessions: Callable[[], int],
        on_drain: Callable[[], None],
    ) -> None:
        self.config = config
        self.keys = Keys(config.region)
        self.generation = int(time.time() * 1000)
        self.state = "active"
        self.up = config.redis_url is None
        self.route_keys: RouteKeySet | None = None
        self._static = config.route_key_bytes
        self._sessions = sessions
        self._on_drain = on_drain
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        if config.redis_url is not None:
            self._redis = redisurl.client(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._script = self._redis.register_script(_HEARTBEAT)

    # -- route tokens ----------------------------------------------------------------

    def current_key(self) -> tuple[int, bytes] | None:
        if self.route_keys is not None:
            return self.route_keys.current, self.route_keys.keys[self.route_keys.current]
        if self._static is not None:
            return self.config.route_key_id, self._static
        return None

    def mint(self) -> str:
        """A fresh ufrag routing to this transceiver; :class:`StoreError` if no route key is known."""
        key = self.current_key()
        if key is None:
            raise StoreError("no route key yet: Redis has no route-keys and none is configured")
        return token.mint(key[0], key[1], self.config.cluster, self.config.index)

    # -- heartbeat -------------------------------------------------------------------

    def registration(self) -> Registration:
        return Registration(
            cluster=self.config.cluster,
            index=self.config.index,
            tunnel_addr=self.config.advertised_tunnel,
            tunnel_port=self.config.tunnel_port,
            signaling_url=self.config.advertised_signaling,
            state=self.state,
            generation=self.generation,
            sessions=self._sessions(),
        )

    async def beat(self) -> None:
        """One heartbeat; raises :class:`StoreError` when Redis fails."""
        if self._redis is None:
            return
        record = self.registration().encode()
        record.pop("state")
        args: list[Any] = [
            int(self.config.heartbeat_ttl_s * 1000),
            f"{self.config.cluster}:{self.config.index}",
            str(self.generation),
            self.state,
        ]
        for name, value in record.items():
            args += [name, value]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._script(
                    keys=[
                        self.keys.transceiver(self.config.cluster, self.config.index),
                        self.keys.transceiver_events,
                    ],
                    args=args,
                    client=pipe,
                )
                pipe.hgetall(self.keys.route_keys)
                stored_state, route_keys = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"heartbeat to {self.config.redis_url} failed: {exc}") from exc
        if route_keys:
            self.route_keys = RouteKeySet.decode(route_keys)
        stored = stored_state.decode() if isinstance(stored_state, bytes) else str(stored_state)
        if stored == "draining" and self.state != "draining":
            logger.info("drain requested source=redis")
            self.state = "draining"
            self._on_drain()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.beat()
            except StoreError as exc:
                if self.up or failures == 0:
                    logger.warning("redis degraded action=serving_on,retrying_with_backoff error=%s", exc)
                self.up = False
                failures += 1
            else:
                if not self.up:
                    logger.info("redis restored heartbeat=ok")
                self.up = True
                failures = 0
            delay = self.config.heartbeat_interval_s
            if failures:
                delay = min(MAX_BACKOFF_S, delay * 2 ** min(failures - 1, 8)) * random.uniform(0.8, 1.2)
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
            # coincides with the timeout, and stop() would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def start(self) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(StoreError):
            await self.beat()
            self.up = True
        self._task = asyncio.create_task(self._run())

    def drain(self) -> None:
        """Announce draining at the next heartbeat, which happens now."""
        self.state = "draining"
        self._wake.set()

    async def stop(self, *, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._redis is None:
            return
        if deregister:
            key = self.keys.transceiver(self.config.cluster, self.config.index)
            with contextlib.suppress(RedisError, OSError):
                # Only our own record: a successor may have registered meanwhile.
                if await self._redis.hget(key, "generation") == str(self.generation).encode():
                    await self._redis.delete(key)
                    await self._redis.publish(
                        self.keys.transceiver_events, f"{self.config.cluster}:{self.config.index}"
                    )
        await self._redis.aclose()
