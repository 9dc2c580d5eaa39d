"""Payouts against a partner that fails, and a worker that dies mid-payout.

The partner is a SimulatedPartner handed to the container, so the tests can count what reached
it; the breaker in front of it is the one bootstrap builds with the seed's settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from currencyex.remit.partner import SimulatedPartner

from conftest import Api, running_app
from remit_support import funded_customer, quote, send, settled, usd


async def three_sends(api: Api, deposit: str) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """Three customers with `deposit` USD each, and the reference of one send by each."""
    customers = [await funded_customer(api, deposit) for _ in range(3)]
    references = []
    for _, headers in customers:
        sent = await send(api, headers, (await quote(api, headers))["quote_id"])
        assert sent.status_code == 201, sent.text
        references.append(sent.json()["reference_id"])
    return customers, references


async def test_failing_partner_opens_the_breaker_and_every_send_fails_released_at_deadline(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    partner = SimulatedPartner(failure_rate=1.0)
    settings = await make_settings(
        backend,
        payout_deadline_seconds=2.0,
        payout_retry_base_seconds=0.02,
        payout_retry_max_seconds=0.1,
        payout_poll_seconds=0.02,
    )
    async with running_app(settings, partner=partner) as api:
        customers, references = await three_sends(api, "500.00")
        # The breaker trips on the 10th failed call (>= 10 requests, >= 60 % failures) ...
        for _ in range(200):
            if partner.calls >= 10:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        # ... and while it is open (30 s) no call reaches the partner, retries or not.
        assert partner.calls == 10
        metrics = api.container.metrics.render().decode()
        assert 'currencyex_circuit_breaker_state{name="payout-partner"} 2.0' in metrics
        for (_, headers), reference in zip(customers, references, strict=True):
            done = await settled(api, headers, reference, within_seconds=10.0)
            assert done["status"] == "FAILED"
            assert done["failure_code"] == 5001
            assert "deadline" in done["failure_reason"]
            assert await usd(api, headers) == {
                "currency": "USD",
                "balance": "500.00",
                "locked_balance": "0.00",
                "available": "500.00",
            }
        assert partner.calls == 10
        assert partner.payouts_made == {}
        assert await api.container.wallet.verify() == []


async def test_worker_killed_mid_payout_is_replaced_and_each_send_pays_out_once(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    # Slow, and one reply in three lost after the money went out: the worst case for a crash.
    partner = SimulatedPartner(latency_seconds=0.3, lost_reply_rate=0.3, seed=7)
    settings = await make_settings(
        backend,
        payout_lease_seconds=1.0,
        payout_retry_base_seconds=0.05,
        payout_retry_max_seconds=0.2,
        payout_poll_seconds=0.05,
    )
    async with running_app(settings, partner=partner) as first:
        customers = [await funded_customer(first, "300.00") for _ in range(4)]
        sends = []
        for _, headers in customers:
            q = await quote(first, headers)
            sent = await send(first, headers, q["quote_id"])
            assert sent.status_code == 201, sent.text
            sends.append((headers, sent.json()["reference_id"], q["total_debit"]))
        for _ in range(100):
            if partner.pay_calls:
                break
            await asyncio.sleep(0.01)
        # The worker dies with payouts in flight: no grace, nothing finishes.
        await first.container.payout_worker.stop(grace=0)
        assert partner.pay_calls > 0
    async with running_app(settings, partner=partner) as second:
        for headers, reference, total_debit in sends:
            done = await settled(second, headers, reference, within_seconds=15.0)
            assert done["status"] == "COMPLETED", done
            assert [h["status"] for h in done["history"]] == [
                "CREATED",
                "PROCESSING",
                "COMPLETED",
            ]
            wallet = await usd(second, headers)
            assert wallet["locked_balance"] == "0.00"
            assert Decimal(wallet["balance"]) + Decimal(total_debit) == Decimal("300.00")
        assert sorted(partner.payouts_made.values()) == [1] * len(sends)
        assert await second.container.wallet.verify() == []


async def test_a_payout_batch_completes_the_others_when_one_capture_cannot_go_through(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend, payout_simulated_latency_seconds=0.0)
    async with running_app(settings) as api:
        await api.container.payout_worker.stop()  # the batch is run by hand below
        customers, references = await three_sends(api, "300.00")
        # The last one's fee now fills its whole hold: its capture is refused (a fee must be
        # less than the hold), which fails the batch's capture as a whole.
        await api.rows(
            "UPDATE remit_transactions SET fee = total_debit WHERE reference_id = $1",
            references[-1],
        )
        assert await api.container.payouts.run_payouts_once() == 3
        for (_, headers), reference in zip(customers[:-1], references[:-1], strict=True):
            done = await settled(api, headers, reference, within_seconds=1.0)
            assert done["status"] == "COMPLETED"
            assert (await usd(api, headers))["locked_balance"] == "0.00"
        _, headers = customers[-1]
        stuck = await api.http.get(f"/v1/remit/transactions/{references[-1]}", headers=headers)
        assert stuck.json()["status"] == "PROCESSING"  # leased; tried again when that runs out
        assert (await usd(api, headers))["locked_balance"] != "0.00"
        assert await api.container.wallet.verify() == []
