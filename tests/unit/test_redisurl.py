"""icegate.redisurl: Sentinel URLs parsed, bad ones refused naming the field at start."""

from __future__ import annotations

import pytest

from controlplane.config import RedisConfig
from icegate.config import build
from icegate.errors import ConfigError
from icegate.redisurl import SentinelUrl, check, parse_sentinel, safe


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://10.0.0.1:26379/icg", SentinelUrl((("10.0.0.1", 26379),), "icg")),
        (
            "redis+sentinel://:s3cr%40t@a:1,b:2,c/icg/3",
            SentinelUrl((("a", 1), ("b", 2), ("c", 26379)), "icg", 3, "s3cr@t"),
        ),
        ("redis+sentinel://[fd00::1]/svc", SentinelUrl((("fd00::1", 26379),), "svc")),
    ],
)
def test_sentinel_urls(url: str, expected: SentinelUrl) -> None:
    assert parse_sentinel(url) == expected
    assert check(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://a:26379", "names the service"),
        ("redis+sentinel://a:x/svc", "not a number"),
        ("redis+sentinel://a:70000/svc", "out of range"),
        ("redis+sentinel://:1/svc", "no host"),
        ("redis+sentinel://a/svc/zero", "db number"),
        ("http://a/svc", "expected redis://"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "need rediss://"),
        ("redis://h/0?socket_tiemout=1", "'socket_tiemout'"),
        ("redis://h:99999/0", "Port out of range"),
        ("redis://h/0?socket_timeout=abc", "socket_timeout"),
    ],
)
def test_bad_urls_say_why(url: str, reason: str) -> None:
    problem = check(url)
    assert problem is not None and reason in problem


def test_bad_sentinel_url_fails_at_start_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        build(RedisConfig, {"url": "redis+sentinel://a:1"}, "relay.redis")
    assert "relay.redis.url" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        build(RedisConfig, {"url": "redis://h/0?ssl_ca_certs=/ca.pem"}, "relay.redis")
    assert "relay.redis.url" in str(caught.value) and "rediss://" in str(caught.value)
    for good in ("rediss://h/0?ssl_ca_certs=/ca.pem", "unix:///run/redis.sock?db=2", "redis://u:p@h:6379/1"):
        assert check(good) is None, good
    ok = build(RedisConfig, {"url": "redis+sentinel://a:1,b:2/icg"}, "relay.redis")
    assert ok.url.startswith("redis+sentinel://")


def test_logs_never_show_the_password() -> None:
    assert safe("redis+sentinel://:pw@a:1,b:2/icg") == "redis+sentinel://a:1,b:2/icg"
    assert safe("redis://u:pw@h:6379/0") == "redis://h:6379/0"
    assert safe("redis://h:6379/0") == "redis://h:6379/0"
