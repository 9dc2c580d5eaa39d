"""End to end over real sockets: `currencyex serve` (and a `worker --service` for each service's
consumers) as a user would start them, and the split deployment (`serve-split`: the gateway in
front of the five services).

The issue's acceptance walk: a customer registers, logs in and calls /me; an admin made with
`currencyex create-admin` creates a teller and a customer trying the same gets 403/2003; a forged
token gets 401/2002; a sixth login within a minute gets 429 with Retry-After; the welcome email
goes out through the outbox and the bus. The documents walk: a customer uploads the three
required documents, lands in the compliance queue, a COMPLIANCE user opens each through its
signed URL and approves; on the embedded default (a local folder) and on the real services
(an S3-compatible server).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from currencyex.bootstrap import WORKERS
from currencyex.kernel.principal import LOCAL_PRINCIPAL_SECONDS
from serve_support import (
    Server,
    base_env,
    fresh_database,
    funded_customer,
    ip,
    login,
    real_services_env,
    submit_kyc,
)
from ws_support import next_update

from conftest import S3_CREDENTIALS, embedded_workdir

BENEFICIARY = {
    "name": "Ada Lovelace",
    "account_number": "GB29NWBK60161331926819",
    "bank_code": "NWBKGB2L",
    "country": "GB",
}


# One server per topology for the module's walks (each walks its own fresh users): starting the
# split deployment takes most of a minute.
@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("real", marks=pytest.mark.integration),
        pytest.param("split", marks=pytest.mark.integration),
    ],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp(f"serve-{request.param}")
    with ExitStack() as cleanup:
        if request.param == "embedded":
            # No database URL: `serve` starts its own PostgreSQL in the data folder.
            env = base_env(cleanup.enter_context(embedded_workdir()))
        else:
            env = base_env(tmp_path)
            env.update(
                real_services_env(cleanup.enter_context(fresh_database())),
                CURRENCYEX_S3_ENDPOINT=request.getfixturevalue("s3_url"),
                CURRENCYEX_S3_BUCKET=f"cx-e2e-{uuid.uuid4().hex[:10]}",  # created by the server
                CURRENCYEX_S3_SERVER_SIDE_ENCRYPTION="AES256",
                **{f"CURRENCYEX_{k.upper()}": str(v) for k, v in S3_CREDENTIALS.items()},
            )
        srv = Server(env, tmp_path)
        cleanup.callback(srv.stop)  # before the database is dropped
        if request.param == "embedded":
            srv.start("serve", log="serve.log")  # consumers run inside: the bus is in-process
        elif request.param == "split":
            # The gateway on the port, the five services and their workers behind it.
            srv.start("serve-split", "--port", str(srv.port), log="split.log")
            srv.wait_healthy(timeout=120)
            # The docs service decides KYC; the gateway vouches for who the customer is.
            srv.sees_changes_within = LOCAL_PRINCIPAL_SECONDS
        else:
            assert srv.run("migrate").returncode == 0
            # Split processes: the API relays the outbox, and each service's worker consumes its
            # events from NATS (tests/e2e/test_two_gateways.py runs one worker for them all).
            srv.start("serve", log="serve.log")
            for service in WORKERS:
                srv.start("worker", "--service", service, log=f"worker-{service}.log")
        srv.wait_healthy()
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client on the server, closed even when the walk fails half-way."""
    with httpx.Client(base_url=server.base, timeout=10) as opened:
        yield opened


def test_acceptance_walk_over_real_http(server: Server, client: httpx.Client) -> None:
    me_ip = ip()

    # A customer registers, logs in, calls /me.
    email = f"walk-{uuid.uuid4().hex[:8]}@example.com"
    registered = client.post(
        "/v1/auth/register",
        json={"email": email, "password": "correct-horse-42", "full_name": "Walker"},
        headers={"X-Forwarded-For": me_ip},
    )
    assert registered.status_code == 201, registered.text
    logged_in = client.post(
        "/v1/auth/login",
        json={"email": email, "password": "correct-horse-42"},
        headers={"X-Forwarded-For": me_ip},
    )
    assert logged_in.status_code == 200, logged_in.text
    customer = {"Authorization": f"Bearer {logged_in.json()['access_token']}"}
    me = client.get("/v1/auth/me", headers=customer)
    assert me.status_code == 200
    assert me.json()["email"] == email
    assert me.headers["x-request-id"]
    assert "server" not in me.headers  # no banner naming the server software
    assert me.headers["x-ratelimit-remaining"]

    # An admin made on the command line creates a teller; the customer may not.
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    made = server.run("create-admin", "--email", admin_email, "--password", "admin-pass-4242")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout.strip().splitlines()[-1])["role"] == "ADMIN"
    admin_login = client.post(
        "/v1/auth/login",
        json={"email": admin_email, "password": "admin-pass-4242"},
        headers={"X-Forwarded-For": ip()},
    )
    assert admin_login.status_code == 200, admin_login.text
    admin = {"Authorization": f"Bearer {admin_login.json()['access_token']}"}
    teller = {
        "email": f"teller-{uuid.uuid4().hex[:8]}@example.com",
        "password": "teller-pass-42",
        "full_name": "Tess",
        "role": "TELLER",
    }
    assert client.post("/v1/admin/staff", json=teller, headers=admin).status_code == 201
    refused = client.post("/v1/admin/staff", json=teller, headers=customer)
    assert refused.status_code == 403
    assert refused.json()["code"] == 2003

    # A forged token is refused.
    forged = client.get("/v1/auth/me", headers={"Authorization": "Bearer eyJhbGciOi.forged.x"})
    assert forged.status_code == 401
    assert forged.json()["code"] == 2002

    # The sixth login within a minute from one client gets 429 with Retry-After.
    burst_ip = ip()
    statuses = []
    for _ in range(6):
        attempt = client.post(
            "/v1/auth/login",
            json={"email": f"nobody-{uuid.uuid4().hex[:6]}@example.com", "password": "x" * 12},
            headers={"X-Forwarded-For": burst_ip},
        )
        statuses.append(attempt.status_code)
    assert statuses == [401] * 5 + [429]
    assert attempt.json()["code"] == 3001
    assert int(attempt.headers["retry-after"]) >= 1

    # The welcome email left through the outbox and the bus.
    def mailed() -> bool:
        return any(event.get("to") == email for event in server.log_events())

    deadline = time.monotonic() + 15
    while not mailed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mailed()
    assert "correct-horse-42" not in server.logs()


def test_documents_walk_over_real_http(server: Server, client: httpx.Client) -> None:
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    made = server.run("create-admin", "--email", admin_email, "--password", "admin-pass-4242")
    assert made.returncode == 0, made.stderr
    admin = login(client, admin_email, "admin-pass-4242")
    reviewer_email = f"compliance-{uuid.uuid4().hex[:8]}@example.com"
    staff = {"email": reviewer_email, "password": "review-pass-42", "full_name": "Rita"}
    created = client.post("/v1/admin/staff", json={**staff, "role": "COMPLIANCE"}, headers=admin)
    assert created.status_code == 201, created.text
    reviewer = login(client, reviewer_email, "review-pass-42")

    email = f"docs-{uuid.uuid4().hex[:8]}@example.com"
    user = client.post(
        "/v1/auth/register",
        json={"email": email, "password": "correct-horse-42", "full_name": "Dora"},
        headers={"X-Forwarded-For": ip()},
    ).json()
    customer = login(client, email, "correct-horse-42")
    uploaded = submit_kyc(client, customer)
    assert client.get("/v1/docs", headers=customer).json()["missing"] == []

    queue = client.get("/v1/admin/kyc/queue", headers=reviewer).json()["items"]
    [entry] = [item for item in queue if item["user_id"] == user["id"]]
    assert {d["document_id"] for d in entry["documents"]} == set(uploaded)
    with httpx.Client(timeout=10) as anyone:  # a signed URL needs no token
        for document_id, content in uploaded.items():
            signed = client.get(f"/v1/docs/{document_id}/url", headers=reviewer).json()
            served = anyone.get(signed["url"])
            assert served.status_code == 200, served.text
            assert served.content == content

    approved = client.post(
        f"/v1/admin/kyc/{user['id']}/decision",
        json={"decision": "APPROVED", "reason": "documents match"},
        headers=reviewer,
    )
    assert approved.status_code == 200, approved.text
    assert client.get("/v1/auth/me", headers=customer).json()["kyc_status"] == "APPROVED"


def test_money_walk_over_real_http(server: Server, client: httpx.Client) -> None:
    """A teller deposits 1,000.00 USD for an approved customer, who quotes USD->EUR, exchanges
    and sees exactly the quoted amounts; a reused quote is 1003, an expired one 1002; and
    `currencyex ledger verify` passes."""
    customer = funded_customer(server, client)

    quote = client.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"},
        headers=customer,
    ).json()
    done = client.post(
        "/v1/wallet/exchange",
        json={"quote_id": quote["quote_id"]},
        headers={**customer, "Idempotency-Key": "walk-exchange"},
    )
    assert done.status_code == 201, done.text
    wallets = {
        w["currency"]: w
        for w in client.get("/v1/wallet/balance", headers=customer).json()["wallets"]
    }
    assert Decimal(wallets["USD"]["balance"]) == Decimal("1000.00") - Decimal(quote["total_debit"])
    assert wallets["EUR"]["balance"] == quote["target_amount"]
    lines = client.get("/v1/wallet/statement", headers=customer).json()["items"]
    assert {line["journal_id"] for line in lines[:2]} == {done.json()["journal_id"]}

    reused = client.post(
        "/v1/wallet/exchange",
        json={"quote_id": quote["quote_id"]},
        headers={**customer, "Idempotency-Key": "walk-exchange-again"},
    )
    assert (reused.status_code, reused.json()["code"]) == (409, 1003)

    stale = client.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "10.00"},
        headers=customer,
    ).json()
    time.sleep(3.5)
    expired = client.post(
        "/v1/wallet/exchange",
        json={"quote_id": stale["quote_id"]},
        headers={**customer, "Idempotency-Key": "walk-expired"},
    )
    assert (expired.status_code, expired.json()["code"]) == (409, 1002)

    verify = server.run("ledger", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "ledger verify: ok" in verify.stdout


def test_send_walk_with_live_status_over_real_http(server: Server, client: httpx.Client) -> None:
    """An approved, funded customer watching /v1/ws sends 100.00 USD to a beneficiary: the
    socket tells PROCESSING then COMPLETED, the transaction's history says the same, and its
    receipt is a signed link to a PDF."""
    customer = funded_customer(server, client)
    token = customer["Authorization"].removeprefix("Bearer ")
    ws_url = f"ws://127.0.0.1:{server.port}/v1/ws?token={token}"

    async def send_and_watch() -> tuple[dict[str, Any], list[str]]:
        async with (
            websockets.connect(ws_url, open_timeout=10) as ws,
            httpx.AsyncClient(base_url=server.base, timeout=10, headers=customer) as http,
        ):
            body = {"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"}
            quote = (await http.post("/v1/remit/quote", json=body)).json()
            sent = await http.post(
                "/v1/remit/send",
                json={"quote_id": quote["quote_id"], "beneficiary": BENEFICIARY},
                headers={"Idempotency-Key": "walk-send"},
            )
            assert sent.status_code == 201, sent.text
            statuses: list[str] = []
            while "COMPLETED" not in statuses:
                update = await next_update(ws, within=20)
                statuses.append(update["data"]["status"])
            return sent.json(), statuses

    sent, statuses = asyncio.run(send_and_watch())
    assert statuses == ["CREATED", "PROCESSING", "COMPLETED"]
    reference = sent["reference_id"]
    details = client.get(f"/v1/remit/transactions/{reference}", headers=customer).json()
    assert details["status"] == "COMPLETED"
    receipt = client.get(f"/v1/remit/transactions/{reference}/receipt", headers=customer)
    assert receipt.status_code == 200, receipt.text
    pdf = httpx.get(receipt.json()["url"], timeout=10)
    assert pdf.content.startswith(b"%PDF"), pdf.status_code
    verify = server.run("ledger", "verify")
    assert verify.returncode == 0, verify.stderr


@pytest.mark.integration
def test_a_worker_with_a_port_answers_probes_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`worker --port` (one Deployment per worker on Kubernetes) answers liveness, readiness of
    its parts and metrics, and ends cleanly when the orchestrator sends SIGTERM."""
    with fresh_database() as database_url:
        env = base_env(tmp_path) | real_services_env(database_url)
        srv = Server(env, tmp_path)
        try:
            assert srv.run("migrate").returncode == 0
            srv.start("worker", "--service", "remit", "--port", str(srv.port), log="worker.log")
            srv.wait_healthy()
            ready = httpx.get(f"{srv.base}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "database": "ok",
                "cache": "ok",
                "bus": "ok",
                "storage": "ok",
            }
            metrics = httpx.get(f"{srv.base}/metrics", timeout=5)
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert httpx.get(f"{srv.base}/v1/rates/live", timeout=5).status_code == 404
            [(process, _)] = srv.processes
            process.terminate()  # drained, stopped, then the status of a SIGTERM'd command
            assert process.wait(timeout=20) == 128 + signal.SIGTERM, srv.logs()
        finally:
            srv.stop()
