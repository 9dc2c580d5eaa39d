"""Helpers of the remittance tests: funded, approved customers, quotes, sends and waiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import Api

ADA = {
    "name": "Ada Lovelace",
    "account_number": "GB29NWBK60161331926819",
    "bank_code": "NWBKGB2L",
    "country": "GB",
}
FAST_PAYOUTS: dict[str, Any] = {
    "payout_simulated_latency_seconds": 0.0,
    "payout_poll_seconds": 0.05,
    "payout_retry_base_seconds": 0.05,
}


async def approved_customer(api: Api) -> tuple[str, dict[str, str]]:
    """A customer who uploaded their documents and was approved: (id, auth headers)."""
    user_id, token = await api.approved_customer()
    return user_id, api.bearer(token)


async def funded_customer(api: Api, amount: str = "1000.00") -> tuple[str, dict[str, str]]:
    user_id, headers = await approved_customer(api)
    _, teller = await api.user_token("TELLER")
    deposited = await api.http.post(
        "/v1/wallet/deposit",
        json={"user_id": user_id, "amount": amount, "currency": "USD", "reference": "B-1"},
        headers={**api.bearer(teller), "Idempotency-Key": key()},
    )
    assert deposited.status_code == 201, deposited.text
    return user_id, headers


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def quote(api: Api, headers: dict[str, str], amount: str = "100.00") -> dict[str, Any]:
    response = await api.http.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": amount},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def send(
    api: Api,
    headers: dict[str, str],
    quote_id: str,
    idem: str | None = None,
    beneficiary: dict[str, str] | None = None,
) -> Any:
    return await api.http.post(
        "/v1/remit/send",
        json={"quote_id": quote_id, "beneficiary": beneficiary or ADA, "purpose": "family"},
        headers={**headers, "Idempotency-Key": idem or key()},
    )


async def usd(api: Api, headers: dict[str, str]) -> dict[str, str]:
    response = await api.http.get("/v1/wallet/balance", headers=headers)
    return {w["currency"]: w for w in response.json()["wallets"]}["USD"]


async def settled(
    api: Api, headers: dict[str, str], reference: str, *, within_seconds: float = 10.0
) -> dict[str, Any]:
    """The transaction once it reached a final status (within `within_seconds`)."""
    for _ in range(int(within_seconds / 0.05)):
        response = await api.http.get(f"/v1/remit/transactions/{reference}", headers=headers)
        assert response.status_code == 200, response.text
        body = dict(response.json())
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{reference} still {body['status']}")


@asynccontextmanager
async def wallet_held(api: Api, user_id: str, currency: str = "USD") -> AsyncIterator[None]:
    """The user's wallet row locked by a transaction of the test's own, until the block ends: a
    request that moves its money is held open in the middle of its statement meanwhile."""
    async with api.container.db.connection() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM wallet_accounts WHERE user_id = $1 AND kind = 'WALLET'"
            " AND currency = $2 FOR UPDATE",
            uuid.UUID(user_id),
            currency,
        )
        yield


async def waiting_on_a_lock(api: Api, *, within_seconds: float = 10.0) -> None:
    """Return once a statement of the app's database waits on a lock (a request held open by
    `wallet_held`)."""
    for _ in range(int(within_seconds / 0.02)):
        waiting = await api.value(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no request is waiting on the held wallet")
