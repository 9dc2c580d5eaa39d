"""500 sends from 50 customers at once on PostgreSQL: the books stay right under contention.

Each customer can afford only some of their sends, so holds race for the same wallets; every
transaction must end COMPLETED or FAILED, no wallet may go negative and `ledger verify` is clean.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from currencyex.kernel.errors import InsufficientFunds
from currencyex.kernel.ports import IdempotentRequest
from currencyex.remit.domain import Beneficiary, TxnQuery

from conftest import running_app
from remit_support import FAST_PAYOUTS, funded_customer, quote

ADA = Beneficiary("Ada Lovelace", "GB29NWBK60161331926819", "NWBKGB2L", "GB")


@pytest.mark.integration
async def test_500_concurrent_sends_from_50_users_keep_the_ledger_whole(
    make_settings: Callable[..., Any],
) -> None:
    settings = await make_settings("real", **FAST_PAYOUTS, payout_batch=50)
    async with running_app(settings) as api:
        customers = [await funded_customer(api, "50.00") for _ in range(50)]
        work = []
        for user_id, headers in customers:
            principal = await api.container.auth_client.principal(uuid.UUID(user_id))
            assert principal is not None
            work.extend(
                [(principal, (await quote(api, headers, "10.00"))["quote_id"]) for _ in range(10)]
            )
        gate = asyncio.Semaphore(50)
        outcomes: list[str] = []

        async def one(principal: Any, quote_id: str) -> None:
            async with gate:
                request = IdempotentRequest(uuid.uuid4().hex, uuid.uuid4().hex)
                try:
                    await api.container.remit.send(principal, quote_id, ADA, None, request)
                except InsufficientFunds:
                    outcomes.append("short")
                else:
                    outcomes.append("sent")

        await asyncio.gather(*(one(p, q) for p, q in work))
        assert len(outcomes) == 500
        assert 0 < outcomes.count("sent") < 500

        async def unfinished() -> int:
            count = 0
            for user_id, _ in customers:
                page = await api.container.remit.transactions(
                    TxnQuery(user_id=uuid.UUID(user_id), limit=200)
                )
                assert len(page) == 10
                count += sum(not txn.status.final for txn in page)
            return count

        for _ in range(600):
            if await unfinished() == 0:
                break
            await asyncio.sleep(0.1)
        assert await unfinished() == 0
        for user_id, _ in customers:
            for wallet in await api.container.wallet.balances(uuid.UUID(user_id)):
                assert wallet.available.minor >= 0
                assert wallet.locked.minor == 0
        assert await api.container.wallet.verify() == []
