"""The Redis client over TLS (`rediss://`), against a real redis-server with a TLS port and a
password.

The server's certificate is signed by a CA made for the test; the client trusts it the way a
deployment with a private CA would, through OpenSSL's `SSL_CERT_FILE`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from currencyex.platform.cache.redis_url import redis_from_url
from redis_support import ping_fails

from conftest import free_port

pytestmark = pytest.mark.integration

PASSWORD = "tls-secret"


class TlsRedis(NamedTuple):
    port: int
    ca_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificates(folder: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("currencyex test CA"))
        .issuer_name(_name("currencyex test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, folder / "server.key")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is needed on PATH"
    folder = tmp_path_factory.mktemp("tls-redis")
    _certificates(folder)
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(folder / "server.pem"),
            "--tls-key-file", str(folder / "server.key"),
            "--tls-ca-cert-file", str(folder / "ca.pem"),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, "redis-server with TLS did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server with TLS did not listen"
                time.sleep(0.05)
        yield TlsRedis(port, folder / "ca.pem")
    finally:
        process.terminate()
        process.wait(10)


async def test_commands_go_over_tls_to_a_server_whose_ca_is_trusted(
    tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    client = redis_from_url(f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/2", timeout=5.0)
    try:
        assert await client.set("cx:tls", "over tls") is True
        assert await client.get("cx:tls") == b"over tls"
        replies = await asyncio.gather(*(client.incr("cx:tls:count") for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        info = await client.client_info()
        assert info["db"] == 2  # the handshake's SELECT went over TLS too
    finally:
        await client.aclose()


async def test_a_server_whose_certificate_is_not_trusted_is_refused(tls_redis: TlsRedis) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
    await ping_fails(url, client_timeout=5.0, match="CERTIFICATE_VERIFY_FAILED")


async def test_a_wrong_password_is_refused_as_an_outage(
    tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    url = f"rediss://:not-{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
    await ping_fails(url, client_timeout=5.0, match="(?i)password")


async def test_plain_text_to_a_tls_port_fails_within_the_timeout(tls_redis: TlsRedis) -> None:
    started = time.monotonic()
    await ping_fails(f"redis://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0", client_timeout=1.0)
    assert time.monotonic() - started < 5
