"""Redis URLs for every icegate component: plain, TLS, unix socket, or Sentinel-managed.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are. A Sentinel URL names
the sentinels and the monitored service, and the client follows the primary across failovers::

    redis+sentinel://[:password@]host:port[,host:port...]/service[/db]

``password`` is the primary's (``requirepass``), not the sentinels'. Commands go to the current
primary, which the client asks the sentinels for whenever it (re)connects; a connection to a
primary that was demoted (a ``READONLY`` reply) or that went away fails with a connection
error, and the caller's usual recovery (``RedisStore``'s degraded mode and retries, the
transceiver's next heartbeat) reconnects to the new one. Redis Cluster is not supported: the
flow cache and registrations use SCAN and multi-key pipelines across one keyspace
(docs/SCALING.md says why one primary per region is enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel://"
SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None


def check(url: str) -> str | None:
    """Why ``url`` is not a Redis URL icegate accepts, or None (config validation names the field)."""
    if not url.startswith(SCHEMES):
        return f"expected {', '.join(s.rstrip('/') + '//' for s in SCHEMES)}, got {url!r}"
    if url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel(url)
        except ValueError as exc:
            return str(exc)
        return None
    return _connection_options_problem(url)


def _connection_options_problem(url: str) -> str | None:
    """Build (never open) the connection redis-py would make for ``url``: an option its
    scheme does not take (``ssl_ca_certs`` on ``redis://``, a typo) or a bad value
    surfaces here, at start, instead of as a TypeError on the first command."""
    try:
        pool = aioredis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        option = str(exc).rpartition("argument ")[2].strip("'") or str(exc)
        hint = " (TLS options need rediss://)" if option.startswith("ssl") else ""
        return f"option {option!r} is not accepted by a {url.partition('://')[0]}:// connection{hint}"
    except ValueError as exc:
        return str(exc)
    return None


def parse_sentinel(url: str) -> SentinelUrl:
    """``redis+sentinel://[:password@]h:p,h:p/service[/db]``; ValueError with the reason."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL: {url!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    hosts, slash, path = rest.partition("/")
    password = None
    if "@" in hosts:
        auth, _, hosts = hosts.rpartition("@")
        password = unquote(auth.partition(":")[2] if ":" in auth else auth) or None
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        host = host.strip("[]")
        if not host:
            raise ValueError(f"sentinel address {item!r} has no host")
        try:
            number = int(port) if colon else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel address {item!r}: port {port!r} is not a number") from None
        if not 0 < number < 65536:
            raise ValueError(f"sentinel address {item!r}: port out of range")
        sentinels.append((host, number))
    parts = [p for p in path.split("/") if p] if slash else []
    if not parts:
        raise ValueError("a Sentinel URL names the service: redis+sentinel://host:port/<service>[/db]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"expected /<service>[/<db number>], got /{'/'.join(parts)}")
    return SentinelUrl(tuple(sentinels), parts[0], int(parts[1]) if len(parts) == 2 else 0, password)


class SentinelPrimary(aioredis.Redis):
    """The primary's client; closing it closes the connections to the sentinels too."""

    sentinels_of: Sentinel | None = None  # set by client()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for each in self.sentinels_of.sentinels if self.sentinels_of is not None else ():
            await each.aclose()


def client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; ``kwargs`` (timeouts, retry) apply to the data connections,
    and their timeouts to the sentinel connections too."""
    if not url.startswith(SENTINEL_SCHEME):
        return aioredis.Redis.from_url(url, **kwargs)
    spec = parse_sentinel(url)
    timeouts = {k: v for k, v in kwargs.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=dict(timeouts), **timeouts)
    primary = sentinel.master_for(
        spec.service, redis_class=SentinelPrimary, db=spec.db, password=spec.password, **kwargs
    )
    assert isinstance(primary, SentinelPrimary)
    primary.sentinels_of = sentinel
    return primary


def safe(url: str) -> str:
    """``url`` without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://{rest.split('@', 1)[1]}"
