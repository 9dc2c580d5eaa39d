"""Shared fixtures: settings for the embedded default and for the real services, and apps on them.

The real services are PostgreSQL, Redis and NATS JetStream on loopback (bin/test starts any that
is down) and an S3-compatible server (moto's, started here on a free loopback port when a test
first needs it). Both backends run on PostgreSQL: each test session migrates its own databases
and drops them at the end, and each test starts on empty tables.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from currencyex.app import create_app
from currencyex.bootstrap import Container, build
from currencyex.config import Settings
from currencyex.platform.db.database import Database, driver_url
from currencyex.platform.db.embedded import EmbeddedPostgres
from currencyex.platform.db.migrate import upgrade
from currencyex.platform.db.schemas import EVERY_SCHEMA
from currencyex.platform.observability.logging import configure_logging

pytest_plugins = ["redis_cluster"]  # the `redis_cluster` fixture: three masters on loopback

PG_ADMIN_URL = os.environ.get(
    "CURRENCYEX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CURRENCYEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("CURRENCYEX_TEST_NATS_URL", "nats://127.0.0.1:4222")
# This session's own stream and subjects on the shared NATS server: two suites run at once (or
# one after a run that left events behind) never take each other's events. Deleted at the end.
_NATS_SESSION = uuid.uuid4().hex[:10]
NATS_STREAM = f"FULL_{_NATS_SESSION}"
NATS_SUBJECT_PREFIX = f"s{_NATS_SESSION}."
NATS_SETTINGS: dict[str, Any] = {
    "nats_stream": NATS_STREAM,
    "nats_subject_prefix": NATS_SUBJECT_PREFIX,
}
S3_BUCKET = "cx-test-documents"
S3_CREDENTIALS: dict[str, Any] = {
    "s3_access_key_id": "testing",
    "s3_secret_access_key": "testing",
    "s3_region": "us-east-1",
    "s3_path_style": True,
}

BACKENDS = ["embedded", pytest.param("real", marks=pytest.mark.integration)]

# Cheap argon2 parameters: the tests exercise the logic, not the cost.
FAST_HASHING: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}


@pytest.fixture(scope="session", autouse=True)
def json_logs() -> None:
    """Log as production does (structlog's default console renderer is slow on tracebacks)."""
    configure_logging("INFO", json=True)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(driver_url(PG_ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, migrated to head, dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The PostgreSQL database of this test session's "real" backend, migrated to head."""
    yield from _database("cx_test")


@contextmanager
def embedded_workdir() -> Iterator[Path]:
    """A working folder for the embedded server, removed at the end, outside pytest's.

    As root the server runs as another user, who must pass through every folder above its
    data, and pytest takes other users' rights away from its own base folder whenever a
    session starts: one started beside this test would pull them mid-way.
    """
    path = Path(tempfile.mkdtemp(prefix="cx-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_pg_url() -> Iterator[str]:
    """The database of this test session's "embedded" backend: the embedded default's own
    PostgreSQL server (the wheel's, as `bin/serve` runs it) in a folder of this session,
    migrated to head, stopped and removed at the end."""
    with embedded_workdir() as folder, EmbeddedPostgres(folder / "postgres").running() as server:
        upgrade(server.url)
        yield server.url


USER_TABLES = (
    "auth_refresh_tokens",
    "auth_users",
    "docs_documents",
    "audit_log",
    "outbox",
    "processed_events",
    "idempotency_keys",
    "remit_mismatches",
    "remit_status_history",
    "remit_transactions",
    "wallet_entries",
    "wallet_holds",
    "wallet_journals",
    "wallet_accounts",
)


async def connect(url: str) -> asyncpg.Connection:
    """A connection of its own to the database at `url`, seeing every schema, as the one-process
    deployment's connections do."""
    return await asyncpg.connect(driver_url(url), server_settings={"search_path": EVERY_SCHEMA})


async def _truncate(url: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(USER_TABLES)} CASCADE")
    finally:
        await conn.close()


async def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement on the database at `url`, on a connection of its own."""
    conn = await connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def eventually(
    probe: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> None:
    """Poll `probe` until it is true; fail the test after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server for this test session: moto's, on a free loopback port, stopped
    at the end. moto does not check presigned signatures, so the refusal of altered and expired
    links is tested on the local folder store."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto's S3 server exited at start:\n{log.read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:  # lists the buckets
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto's S3 server did not answer on {url}:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once on the embedded default and once on the real services."""
    return str(request.param)


@pytest_asyncio.fixture
async def make_settings(
    request: pytest.FixtureRequest, pg_url: str, embedded_pg_url: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for a backend ("embedded" or "real") with overrides, on an empty database.

    The embedded backend keeps documents in a local folder under the test's data dir; the real
    one in a bucket of the S3-compatible server, with server-side encryption on.
    """

    async def factory(backend: str, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "var",
            "rate_limits_enabled": False,
            "outbox_poll_seconds": 0.05,
            "run_workers": True,  # consumers inside the app, on NATS too
            **FAST_HASHING,
        }
        if backend == "embedded":
            await _truncate(embedded_pg_url)
            base["database_url"] = embedded_pg_url
        elif backend == "real":
            await _truncate(pg_url)
            base.update(
                database_url=pg_url,
                redis_url=REDIS_URL,
                nats_url=NATS_URL,
                **NATS_SETTINGS,
                s3_endpoint=request.getfixturevalue("s3_url"),
                s3_bucket=S3_BUCKET,
                s3_server_side_encryption="AES256",
                **S3_CREDENTIALS,
            )
        else:
            raise ValueError(backend)
        base.update(overrides)
        return Settings(**base)

    return factory


def _png(width: int = 1, height: int = 1) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height)))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# Small files that begin as each accepted format does (the service judges by the first bytes).
SAMPLE_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
SAMPLE_PNG = _png()
SAMPLE_PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
KYC_SET = (
    ("passport_front", SAMPLE_JPEG, "image/jpeg", "passport.jpg"),
    ("utility_bill", SAMPLE_PDF, "application/pdf", "bill.pdf"),
    ("selfie", SAMPLE_PNG, "image/png", "me.png"),
)


class Api:
    """An app on a started container, and an HTTP client speaking to it in-process."""

    def __init__(
        self, container: Container, client: httpx.AsyncClient, *, db: Database | None = None
    ) -> None:
        self.container = container
        self.http = client
        # What `rows` reads with: the app's own database, unless its process sees only its
        # service's schema (a split service), then one that sees every schema.
        self._db = db or container.db

    async def register(
        self, email: str | None = None, password: str = "correct-horse-42", **extra: Any
    ) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.http.post(
            "/v1/auth/register",
            json={"email": email, "password": password, "full_name": "Test User", **extra},
        )
        assert response.status_code == 201, response.text
        return {**response.json(), "password": password}

    async def login(self, email: str, password: str = "correct-horse-42") -> dict[str, Any]:
        response = await self.http.post(
            "/v1/auth/login", json={"email": email, "password": password}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def user_token(self, role: str = "CUSTOMER") -> tuple[str, str]:
        """A fresh user of `role` and its access token: (user_id, token)."""
        from currencyex.kernel.principal import Role

        email = f"{role.lower()}-{uuid.uuid4().hex[:10]}@example.com"
        if role == "CUSTOMER":
            user_id = (await self.register(email))["id"]
        else:
            user = await self.container.auth.create_staff(
                email, "correct-horse-42", "Staff Member", Role(role)
            )
            user_id = str(user.id)
        return user_id, (await self.login(email))["access_token"]

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement on the app's database."""
        async with self._db.connection() as conn:
            found: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return found

    async def value(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of one statement on the app's database."""
        return (await self.rows(sql, *args))[0][0]

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def upload(
        self,
        token: str,
        doc_type: str = "passport_front",
        content: bytes = SAMPLE_JPEG,
        *,
        filename: str = "document",
        content_type: str | None = None,
    ) -> httpx.Response:
        """POST /v1/docs/upload; without a content type httpx sends the one the file name
        suggests (application/octet-stream for the default name)."""
        part = (filename, content, content_type) if content_type else (filename, content)
        return await self.http.post(
            "/v1/docs/upload",
            data={"doc_type": doc_type},
            files={"file": part},
            headers=self.bearer(token),
        )

    async def kyc_status(self, token: str) -> str | None:
        """The caller's KYC status; None for staff, who carry none."""
        response = await self.http.get("/v1/auth/me", headers=self.bearer(token))
        assert response.status_code == 200, response.text
        status = response.json()["kyc_status"]
        return None if status is None else str(status)

    async def wait_for_kyc(self, token: str, status: str) -> None:
        """Until /auth/me shows `status` (the compliance check runs on the bus, after commit)."""
        deadline = time.monotonic() + 15
        while (current := await self.kyc_status(token)) != status:
            assert time.monotonic() < deadline, f"KYC stayed {current}, never became {status}"
            await asyncio.sleep(0.02)

    async def submit_kyc(self, token: str) -> list[str]:
        """Upload a complete document set and wait until the KYC is IN_REVIEW; the ids."""
        ids = []
        for doc_type, content, content_type, filename in KYC_SET:
            response = await self.upload(
                token, doc_type, content, filename=filename, content_type=content_type
            )
            assert response.status_code == 201, response.text
            ids.append(str(response.json()["document_id"]))
        await self.wait_for_kyc(token, "IN_REVIEW")
        return ids

    async def approved_customer(self, reviewer: str | None = None) -> tuple[str, str]:
        """A customer who uploaded their documents and whose KYC was approved: (id, token)."""
        user_id, token = await self.user_token()
        await self.submit_kyc(token)
        await self.approve_kyc(user_id, reviewer)
        return user_id, token

    async def approve_kyc(self, user_id: str, reviewer: str | None = None) -> None:
        """A COMPLIANCE user (`reviewer`'s token, or a new one) approves the user's KYC."""
        if reviewer is None:
            _, reviewer = await self.user_token("COMPLIANCE")
        decided = await self.http.post(
            f"/v1/admin/kyc/{user_id}/decision",
            json={"decision": "APPROVED", "reason": "documents match"},
            headers=self.bearer(reviewer),
        )
        assert decided.status_code == 200, decided.text


@asynccontextmanager
async def running_app(settings: Settings, **build_options: Any) -> AsyncIterator[Api]:
    """The app on `settings`, started; `build_options` go to bootstrap.build (a partner, say)."""
    container = build(settings, **build_options)
    app = create_app(container)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(container, client)


@pytest_asyncio.fixture
async def api(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Api]:
    """The whole app on `backend`, started; rate limits off unless a test turns them on."""
    async with running_app(await make_settings(backend)) as started:
        yield started


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """Collect after every test, so an unclosed connection is reported by the test that leaked
    it rather than by whichever later test the garbage collector happens to run in."""
    yield
    gc.collect()


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def delete_session_stream() -> AsyncIterator[None]:
    """Delete this session's NATS stream (and its consumers) at the end, if it was made."""
    yield
    import nats
    import nats.js.errors

    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception:  # NATS not there: nothing was made on it
        return
    try:
        await nc.jetstream().delete_stream(NATS_STREAM)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def close_leftover_nats_clients() -> AsyncIterator[None]:
    """Close, and name, any NATS client still open when the session ends.

    Two connections per full run outlive their test (not yet traced to their owner); left
    open they are reported as unclosed sockets after the loop has closed, which fails the run.
    """
    yield
    from nats.aio.client import Client

    leftovers = [obj for obj in gc.get_objects() if isinstance(obj, Client) and not obj.is_closed]
    for client in leftovers:
        print(f"closing a NATS client left open: {client.connected_url!r}", file=sys.stderr)
        await client.close()
