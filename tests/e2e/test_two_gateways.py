"""Two gateway processes behind one bus each push the bus's events to the clients they hold.

Two `currencyex serve` processes (A and B) and one `currencyex worker` share a fresh PostgreSQL
database, Redis and NATS JetStream, as a scaled-out deployment would. A customer holds one
WebSocket on each gateway and sends money through A, then through B: both of her connections
see every status change of both sends, in order, and the KYC decision before them. Another
customer connected to B receives none of her updates, only his own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from currencyex.kernel.principal import LOCAL_PRINCIPAL_SECONDS
from serve_support import (
    Server,
    base_env,
    fresh_database,
    ip,
    login,
    real_services_env,
    submit_kyc,
)
from ws_support import messages_until, next_event, statuses

from conftest import free_port
from remit_support import ADA, FAST_PAYOUTS, key

pytestmark = pytest.mark.integration


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Gateways A and B, and a worker, on one database, Redis and NATS; stopped at the end."""
    with fresh_database() as database_url:
        env = {
            **base_env(tmp_path),  # one data folder for all: its signing keys among others
            **real_services_env(database_url),
            **{f"CURRENCYEX_{k.upper()}": str(v) for k, v in FAST_PAYOUTS.items()},
        }
        a = Server(env, tmp_path)
        b = Server({**env, "CURRENCYEX_PORT": str(free_port_other_than(a.port))}, tmp_path)
        try:
            assert a.run("migrate").returncode == 0
            # The token signing key, made before either gateway starts: two starting at once
            # on an empty folder would each make its own and refuse the other's tokens.
            made = a.run("rotate-key")
            assert made.returncode == 0, made.stderr
            for name, gateway in (("a", a), ("b", b)):
                address = ("--host", "127.0.0.1", "--port", str(gateway.port))
                gateway.start("serve", *address, log=f"gateway-{name}.log")
            # With NATS set, `serve` runs no consumers: the payouts and the KYC check run here.
            a.start("worker", log="worker.log")
            a.wait_healthy()
            b.wait_healthy()
            a.check_running()
            b.check_running()
            yield a, b
        finally:
            b.stop()
            a.stop()


def free_port_other_than(port: int) -> int:
    # B on A's port would fail to start while A answered its health checks.
    while (other := free_port()) == port:
        pass
    return other


@dataclass(frozen=True, slots=True)
class Cast:
    """Who takes part: the staff's and the customers' auth headers, and the customers' ids."""

    admin: dict[str, str]
    teller: dict[str, str]
    alice_id: str
    alice: dict[str, str]
    bob_id: str
    bob: dict[str, str]


@pytest.fixture
def cast(gateways: tuple[Server, Server]) -> Cast:
    """An admin, a teller, and two customers whose documents await review, made through A."""
    a, _ = gateways
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    made = a.run("create-admin", "--email", admin_email, "--password", "admin-pass-4242")
    assert made.returncode == 0, made.stderr
    with httpx.Client(base_url=a.base, timeout=10) as client:
        admin = login(client, admin_email, "admin-pass-4242")
        teller_email = f"teller-{uuid.uuid4().hex[:8]}@example.com"
        staff = {"email": teller_email, "password": "teller-pass-42", "full_name": "T"}
        created = client.post("/v1/admin/staff", json={**staff, "role": "TELLER"}, headers=admin)
        assert created.status_code == 201, created.text
        teller = login(client, teller_email, "teller-pass-42")
        alice_id, alice = customer_in_review(client, "alice")
        bob_id, bob = customer_in_review(client, "bob")
    return Cast(admin, teller, alice_id, alice, bob_id, bob)


def customer_in_review(client: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    registered = client.post(
        "/v1/auth/register",
        json={"email": email, "password": "correct-horse-42", "full_name": name.title()},
        headers={"X-Forwarded-For": ip()},
    )
    assert registered.status_code == 201, registered.text
    headers = login(client, email, "correct-horse-42")
    submit_kyc(client, headers)
    return str(registered.json()["id"]), headers


def live(gateway: Server, headers: dict[str, str]) -> Any:
    token = headers["Authorization"].split()[1]
    return websockets.connect(f"ws://127.0.0.1:{gateway.port}/v1/ws?token={token}")


async def approve(http: httpx.AsyncClient, admin: dict[str, str], user_id: str) -> None:
    decided = await http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "documents match"},
        headers=admin,
    )
    assert decided.status_code == 200, decided.text


async def send_through(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """Quote 100.00 USD to EUR and send it to Ada through `http`'s gateway: the txn id.

    A gateway reuses what it knows of a user for LOCAL_PRINCIPAL_SECONDS, so an approval made
    through the other one may still be unknown to it (1005) for that long, and no longer.
    """
    quoted = await http.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"},
        headers=headers,
    )
    assert quoted.status_code == 201, quoted.text
    body = {"quote_id": quoted.json()["quote_id"], "beneficiary": ADA, "purpose": "family"}
    idempotent = {**headers, "Idempotency-Key": key()}
    deadline = time.monotonic() + LOCAL_PRINCIPAL_SECONDS + 0.5
    while (
        sent := await http.post("/v1/remit/send", json=body, headers=idempotent)
    ).status_code == 403:
        assert sent.json()["code"] == 1005, sent.text
        assert time.monotonic() < deadline, "the approval was not seen within the reuse window"
        await asyncio.sleep(0.25)  # sparingly: sends are limited to 10 a minute
    assert sent.status_code == 201, sent.text
    return str(sent.json()["txn_id"])


async def test_both_gateways_push_a_customers_updates_to_her_connections_and_no_one_elses(
    gateways: tuple[Server, Server], cast: Cast
) -> None:
    a, b = gateways
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=10) as via_a,
        httpx.AsyncClient(base_url=b.base, timeout=10) as via_b,
        live(a, cast.alice) as alice_on_a,
        live(b, cast.alice) as alice_on_b,
        live(b, cast.bob) as bob_on_b,
    ):
        # Her approval, made through A, reaches her on both gateways.
        await approve(via_a, cast.admin, cast.alice_id)
        for ws in (alice_on_a, alice_on_b):
            assert (await next_event(ws, "kyc_update"))["data"]["status"] == "APPROVED"
        deposited = await via_a.post(
            "/v1/wallet/deposit",
            json={
                "user_id": cast.alice_id,
                "amount": "500.00",
                "currency": "USD",
                "reference": "B",
            },
            headers={**cast.teller, "Idempotency-Key": key()},
        )
        assert deposited.status_code == 201, deposited.text

        for via in (via_a, via_b):
            txn_id = await send_through(via, cast.alice)
            for ws in (alice_on_a, alice_on_b):
                assert await statuses(ws, txn_id) == ["CREATED", "PROCESSING", "COMPLETED"]

        # Bob is approved only now: had any of her updates been pushed to him, they would be
        # on his connection ahead of his own.
        await approve(via_b, cast.admin, cast.bob_id)
        seen = await messages_until(bob_on_b, "kyc_update")
        assert seen[-1]["data"]["status"] == "APPROVED"
        assert [m for m in seen if m["event"] == "transaction_update"] == []
