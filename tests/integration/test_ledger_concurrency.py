"""Many concurrent exchanges, holds and settlements against the same few wallets on PostgreSQL.

Afterwards: no negative available balance, `ledger verify` clean, and per currency the money in
customers' wallets plus the house's accounts equals what was deposited, to the minor unit.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import pytest

from currencyex.kernel.errors import InsufficientFunds
from currencyex.kernel.money import Money

from conftest import running_app

pytestmark = pytest.mark.integration

CUSTOMERS = 4
OPERATIONS = 240


async def _approved(api, admin_headers) -> tuple[str, dict[str, str]]:
    user_id, token = await api.user_token()
    await api.submit_kyc(token)
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "ok"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    return user_id, api.bearer(token)


async def test_concurrent_money_movements_keep_the_books_exact(make_settings):
    settings = await make_settings("real")
    async with running_app(settings) as api:
        _, admin = await api.user_token("ADMIN")
        admin_headers = api.bearer(admin)
        customers = [await _approved(api, admin_headers) for _ in range(CUSTOMERS)]
        deposited = Counter[str]()
        for user_id, _ in customers:
            for currency, amount in (("USD", "1000.00"), ("EUR", "500.00")):
                response = await api.http.post(
                    "/v1/wallet/deposit",
                    json={
                        "user_id": user_id,
                        "amount": amount,
                        "currency": currency,
                        "reference": "seed",
                    },
                    headers={**admin_headers, "Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == 201, response.text
                deposited[currency] += Money.parse(amount, currency).minor

        rng = random.Random(7)
        holds: list[uuid.UUID] = []
        outcomes = Counter[str]()

        async def exchange(headers: dict[str, str], source: str, target: str) -> None:
            quote = await api.http.post(
                "/v1/remit/quote",
                json={
                    "source_currency": source,
                    "target_currency": target,
                    "source_amount": f"{rng.randint(2, 40)}.{rng.randint(0, 99):02d}",
                },
                headers=headers,
            )
            assert quote.status_code == 201, quote.text
            done = await api.http.post(
                "/v1/wallet/exchange",
                json={"quote_id": quote.json()["quote_id"]},
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert done.status_code in (201, 400), done.text
            outcomes["exchange" if done.status_code == 201 else "exchange_short_1001"] += 1
            if done.status_code == 400:
                assert done.json()["code"] == 1001

        async def hold(user_id: str) -> None:
            try:
                placed = await api.container.wallet_client.hold(
                    uuid.UUID(user_id), Money(rng.randint(100, 3000), "USD"), "concurrency"
                )
            except InsufficientFunds:
                outcomes["hold_short_1001"] += 1
                return
            holds.append(placed.id)
            outcomes["hold"] += 1

        async def settle() -> None:
            if not holds:
                return
            hold_id = rng.choice(holds)
            if rng.random() < 0.5:
                await api.container.wallet_client.capture(hold_id)
            else:
                await api.container.wallet_client.release(hold_id)
            outcomes["settle"] += 1

        async def one() -> None:
            user_id, headers = rng.choice(customers)
            kind = rng.random()
            if kind < 0.45:
                await exchange(headers, "USD", "EUR")
            elif kind < 0.65:
                await exchange(headers, "EUR", "USD")
            elif kind < 0.85:
                await hold(user_id)
            else:
                await settle()

        await asyncio.gather(*(one() for _ in range(OPERATIONS)))
        # Settle twice more what may still be open: capture/release must act once only.
        await asyncio.gather(*(api.container.wallet_client.release(h) for h in holds))
        await asyncio.gather(*(api.container.wallet_client.capture(h) for h in holds))

        # Enough money that most movements go through: the race is between successes.
        assert outcomes["exchange"] >= 100, outcomes
        assert await api.container.wallet.verify() == []
        negative = await api.value(
            "SELECT count(*) FROM wallet_accounts"
            " WHERE kind = 'WALLET' AND balance - locked_balance < 0"
        )
        assert negative == 0
        totals = (
            "SELECT e.currency, sum(e.amount) FROM wallet_entries AS e"
            " JOIN wallet_accounts AS a ON a.id = e.account_id"
            " WHERE (a.kind = 'CASH_IN') = $1 GROUP BY e.currency"
        )
        # Customers' wallets plus every house account except cash-in hold exactly what was
        # deposited: exchanges, fees and captures only move money between them.
        assert dict(await api.rows(totals, False)) == dict(deposited)
        assert {c: -t for c, t in await api.rows(totals, True)} == dict(deposited)
        wallet_rows = await api.rows(
            "SELECT currency, sum(balance) FROM wallet_accounts WHERE kind = 'WALLET'"
            " GROUP BY currency"
        )
        assert all(total >= 0 for _, total in wallet_rows)
