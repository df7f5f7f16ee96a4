"""Redis with an ACL user and TLS (issue 12): a real redis-server with ``--tls-port`` and
a user of its own; the relay's RedisStore speaks to it through ``rediss://user:pass@``
with the CA in the URL (``ssl_ca_certs``), and the password never reaches a log line.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.cluster.redisio import RedisStore
from controlplane.config import RedisConfig
from icegate.errors import StoreError
from icegate.schema import RouteKeySet
from labkit.support import Processes, free_port, wait_for

PASSWORD = "s3cret-acl-password"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "icegate-test-redis")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def secure_redis(procs: Processes, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server on TLS only, the default user off, user ``icegate`` with a password."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed: run scripts/setup"
    cert, key = self_signed(tmp_path)
    port = free_port()
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
    argv += ["--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--loglevel", "warning"]
    argv += [
        "--user",
        "default",
        "off",
        "--user",
        "icegate",
        "on",
        f">{PASSWORD}",
        "~icegate:*",
        "&*",
        "+@all",
    ]
    proc = procs.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        return asyncio.run(_ping(url(port, cert))) is None

    wait_for(up, timeout=10, what="redis-server with TLS")
    try:
        yield port, cert
    finally:
        procs.stop(proc)


def url(port: int, ca: Path, user: str = "icegate", password: str = PASSWORD, scheme: str = "rediss") -> str:
    return f"{scheme}://{user}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"


async def _ping(address: str) -> str | None:
    store = RedisStore(RedisConfig(url=address, region="secure", timeout_s=1.0))
    try:
        await store.ping()
        return None
    except StoreError as exc:
        return str(exc)
    finally:
        await store.close()


def test_acl_user_over_tls(secure_redis: tuple[int, Path], caplog: pytest.LogCaptureFixture) -> None:
    port, ca = secure_redis

    async def main() -> RouteKeySet | None:
        store = RedisStore(RedisConfig(url=url(port, ca), region="secure", timeout_s=1.0))
        try:
            await store.update_route_keys(lambda _: RouteKeySet({0: bytes(range(16))}, 0))
            return await store.route_key_set()
        finally:
            await store.close()

    with caplog.at_level(logging.DEBUG):
        keys = asyncio.run(main())
    assert keys is not None and keys.current == 0 and keys.keys[0] == bytes(range(16))
    assert PASSWORD not in caplog.text


# redis-py leaves the SSL transport of a refused connection to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_wrong_password_plain_text_and_the_default_user_are_refused(secure_redis: tuple[int, Path]) -> None:
    port, ca = secure_redis
    assert asyncio.run(_ping(url(port, ca, password="wrong"))) is not None
    plain = f"redis://icegate:{PASSWORD}@127.0.0.1:{port}/0"
    assert asyncio.run(_ping(plain)) is not None  # no TLS: the server hangs up
    assert (
        asyncio.run(_ping(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")) is not None
    )  # default user off
    problem = asyncio.run(_ping(url(port, ca, password="wrong")))
    assert problem is not None and "wrong" not in problem
