"""Payout reconciliation: a pass finds the payouts whose final status the partner contradicts,
records each once, and staff resolve them at /v1/admin/reconciliation, a correction being one
new journal.

The partner is a SimulatedPartner handed to the container, told afterwards to change its mind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from currencyex.remit.partner import SimulatedPartner

from conftest import Api, running_app
from remit_support import FAST_PAYOUTS, funded_customer, key, quote, send, settled, usd


@asynccontextmanager
async def app_with(
    backend: str, make_settings: Callable[..., Any], partner: SimulatedPartner
) -> AsyncIterator[Api]:
    settings = await make_settings(backend, **FAST_PAYOUTS)
    async with running_app(settings, partner=partner) as api:
        yield api


async def settled_send(
    api: Api, headers: dict[str, str], amount: str = "100.00"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A send of `amount` USD, once final: (its quote, the transaction)."""
    q = await quote(api, headers, amount)
    sent = await send(api, headers, q["quote_id"])
    assert sent.status_code == 201, sent.text
    return q, await settled(api, headers, sent.json()["reference_id"])


async def resolve(
    api: Api, token: str, mismatch_id: str, action: str, note: str = "checked"
) -> Any:
    return await api.http.post(
        f"/v1/admin/reconciliation/{mismatch_id}/resolve",
        json={"action": action, "note": note},
        headers=api.bearer(token),
    )


async def listed(api: Api, token: str, **params: Any) -> Any:
    return await api.http.get("/v1/admin/reconciliation", params=params, headers=api.bearer(token))


async def count(api: Api, sql: str, *args: Any) -> int:
    return int(await api.value(sql, *args))


async def test_a_failed_payout_the_partner_paid_later_is_found_once_and_charged_by_one_journal(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    partner = SimulatedPartner(reject_rate=1.0)
    async with app_with(backend, make_settings, partner) as api:
        _, headers = await funded_customer(api, "1000.00")
        q, txn = await settled_send(api, headers)
        assert txn["status"] == "FAILED"
        assert (await usd(api, headers))["available"] == "1000.00"
        partner.report_paid(uuid.UUID(txn["txn_id"]))

        first = await api.container.reconciliation.reconcile_recent()
        second = await api.container.reconciliation.reconcile_recent()

        assert (first.checked, first.recorded) == (1, 1)
        assert (second.checked, second.recorded) == (1, 0)
        assert await count(api, "SELECT count(*) FROM remit_mismatches") == 1
        subject = "full.remit.mismatch"
        assert await count(api, "SELECT count(*) FROM outbox WHERE subject = $1", subject) == 1
        found = "reconciliation.mismatch_found"
        assert await count(api, "SELECT count(*) FROM audit_log WHERE action = $1", found) == 1

        _, admin = await api.user_token("ADMIN")
        page = await listed(api, admin)
        assert page.status_code == 200, page.text
        (item,) = page.json()["items"]
        assert page.json()["next_cursor"] is None
        assert item["txn_id"] == txn["txn_id"]
        assert item["reference_id"] == txn["reference_id"]
        assert (item["our_status"], item["partner_status"], item["state"]) == (
            "FAILED",
            "PAID",
            "OPEN",
        )
        assert item["amount"] == {"amount": q["total_debit"], "currency": "USD"}

        corrected = await resolve(api, admin, item["id"], "post_correction", "partner paid late")

        assert corrected.status_code == 200, corrected.text
        body = corrected.json()
        assert body["state"] == "CORRECTED"
        assert body["note"] == "partner paid late"
        assert body["journal_id"] == item["id"]
        assert body["resolved_at"] is not None
        wallet = await usd(api, headers)
        assert Decimal(wallet["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
        assert wallet["locked_balance"] == "0.00"

        again = await resolve(api, admin, item["id"], "post_correction")
        dismissed = await resolve(api, admin, item["id"], "dismiss")

        assert again.status_code == 422
        assert again.json()["code"] == 1000
        assert dismissed.status_code == 422
        assert (
            await count(api, "SELECT count(*) FROM wallet_journals WHERE kind = 'CORRECTION'") == 1
        )
        assert await usd(api, headers) == wallet
        corrected_action = "reconciliation.corrected"
        assert (
            await count(api, "SELECT count(*) FROM audit_log WHERE action = $1", corrected_action)
            == 1
        )
        assert await api.container.wallet.verify() == []


async def test_a_completed_payout_the_partner_returned_is_found_and_refunded_once(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    partner = SimulatedPartner()
    async with app_with(backend, make_settings, partner) as api:
        _, headers = await funded_customer(api, "1000.00")
        q, txn = await settled_send(api, headers)
        assert txn["status"] == "COMPLETED"
        paid = Decimal("1000.00") - Decimal(q["total_debit"])
        assert Decimal((await usd(api, headers))["balance"]) == paid
        partner.report_returned(uuid.UUID(txn["txn_id"]), "account closed")

        report = await api.container.reconciliation.reconcile_recent()
        await api.container.reconciliation.reconcile_recent()

        assert (report.checked, report.recorded) == (1, 1)
        _, admin = await api.user_token("ADMIN")
        (item,) = (await listed(api, admin, state="OPEN")).json()["items"]
        assert (item["our_status"], item["partner_status"], item["partner_reason"]) == (
            "COMPLETED",
            "RETURNED",
            "account closed",
        )

        corrected = await resolve(api, admin, item["id"], "post_correction", "refund the sender")
        refused = await resolve(api, admin, item["id"], "post_correction")

        assert corrected.status_code == 200, corrected.text
        assert corrected.json()["state"] == "CORRECTED"
        assert refused.status_code == 422
        assert (await usd(api, headers))["balance"] == "1000.00"
        assert (
            await count(api, "SELECT count(*) FROM wallet_journals WHERE kind = 'CORRECTION'") == 1
        )
        assert await api.container.wallet.verify() == []
        # A transaction the partner agrees with is no mismatch.
        assert (await listed(api, admin, state="OPEN")).json()["items"] == []


async def test_only_compliance_and_admin_see_mismatches_and_only_admin_corrects(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    partner = SimulatedPartner(reject_rate=1.0)
    async with app_with(backend, make_settings, partner) as api:
        _, headers = await funded_customer(api, "1000.00")
        for _ in range(2):
            _, txn = await settled_send(api, headers)
            partner.report_paid(uuid.UUID(txn["txn_id"]))
        await api.container.reconciliation.reconcile_recent()
        _, customer = await api.user_token("CUSTOMER")
        _, teller = await api.user_token("TELLER")
        _, compliance = await api.user_token("COMPLIANCE")

        for token in (customer, teller):
            denied = await listed(api, token)
            assert denied.status_code == 403
            assert denied.json()["code"] == 2003
        first = await listed(api, compliance, limit=1)
        assert first.status_code == 200, first.text
        rest = await listed(api, compliance, limit=1, cursor=first.json()["next_cursor"])
        (newest,) = first.json()["items"]
        (older,) = rest.json()["items"]
        assert newest["id"] > older["id"]
        for token in (customer, teller):
            assert (await resolve(api, token, newest["id"], "dismiss")).status_code == 403

        by_compliance = await resolve(api, compliance, newest["id"], "post_correction")
        assert by_compliance.status_code == 403
        assert by_compliance.json()["code"] == 2003
        dismissed = await resolve(api, compliance, newest["id"], "dismiss", "duplicate report")
        assert dismissed.status_code == 200, dismissed.text
        assert dismissed.json()["state"] == "DISMISSED"
        assert (await listed(api, compliance, state="OPEN")).json()["items"] == [older]

        unknown = await resolve(api, compliance, str(uuid.uuid4()), "dismiss")
        assert unknown.status_code == 404
        assert unknown.json()["code"] == 4004
        invalid = await resolve(api, compliance, older["id"], "refund")
        assert invalid.status_code == 422
        assert invalid.json()["code"] == 1000
        assert (
            await count(api, "SELECT count(*) FROM wallet_journals WHERE kind = 'CORRECTION'") == 0
        )


async def test_a_correction_the_wallet_cannot_pay_is_refused_with_1001_and_stays_open(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    partner = SimulatedPartner(reject_rate=1.0)
    async with app_with(backend, make_settings, partner) as api:
        _, headers = await funded_customer(api, "150.00")
        _, txn = await settled_send(api, headers, "100.00")
        partner.report_paid(uuid.UUID(txn["txn_id"]))
        # The sender spends the released money before anyone notices.
        spent = await api.http.post(
            "/v1/wallet/exchange",
            json={"quote_id": (await quote(api, headers, "100.00"))["quote_id"]},
            headers={**headers, "Idempotency-Key": key()},
        )
        assert spent.status_code == 201, spent.text
        await api.container.reconciliation.reconcile_recent()
        _, admin = await api.user_token("ADMIN")
        (item,) = (await listed(api, admin)).json()["items"]

        short = await resolve(api, admin, item["id"], "post_correction")

        assert short.status_code == 400
        assert short.json()["code"] == 1001
        (still,) = (await listed(api, admin)).json()["items"]
        assert (still["state"], still["resolved_by"], still["journal_id"]) == ("OPEN", None, None)
        assert (
            await count(api, "SELECT count(*) FROM wallet_journals WHERE kind = 'CORRECTION'") == 0
        )
        assert await api.container.wallet.verify() == []
