"""The remittance routes on both backends: sending at a locked quote, the payout's outcome on the
wallet, idempotency, and reading transactions back."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from pypdf import PdfReader

from currencyex.kernel.events import TXN_STATUS_CHANGED, Event
from currencyex.workers.txn_audit import audit_writer
from storage_support import fetch, stored_objects

from conftest import Api, running_app
from remit_support import (
    ADA,
    FAST_PAYOUTS,
    approved_customer,
    funded_customer,
    key,
    quote,
    send,
    settled,
    usd,
    waiting_on_a_lock,
    wallet_held,
)


@pytest_asyncio.fixture
async def api(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Api]:
    async with running_app(await make_settings(backend, **FAST_PAYOUTS)) as started:
        yield started


async def test_send_holds_the_debit_then_completes_and_captures_it(api):
    _, headers = await funded_customer(api)
    q = await quote(api, headers)
    response = await send(api, headers, q["quote_id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "PROCESSING"
    assert re.fullmatch(r"TXN-[A-Z2-9]{10}", body["reference_id"])
    assert body["total_debit"] == {"amount": q["total_debit"], "currency": "USD"}
    assert (body["target_amount"], body["target_currency"]) == (q["target_amount"], "EUR")
    assert body["beneficiary"] == ADA
    done = await settled(api, headers, body["reference_id"])
    assert done["status"] == "COMPLETED"
    assert [h["status"] for h in done["history"]] == ["CREATED", "PROCESSING", "COMPLETED"]
    wallet = await usd(api, headers)
    assert Decimal(wallet["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
    assert wallet["locked_balance"] == "0.00"
    assert await api.container.wallet.verify() == []


async def test_send_needs_approved_kyc_with_1005(api):
    _, token = await api.user_token()
    headers = api.bearer(token)
    response = await send(api, headers, (await quote(api, headers))["quote_id"])
    assert response.status_code == 403
    assert response.json()["code"] == 1005


async def test_send_with_a_used_or_foreign_quote_is_1003(api):
    _, headers = await funded_customer(api)
    q = await quote(api, headers, "10")
    assert (await send(api, headers, q["quote_id"])).status_code == 201
    reused = await send(api, headers, q["quote_id"])
    assert reused.status_code == 409
    assert reused.json()["code"] == 1003
    _, other = await funded_customer(api)
    foreign = await send(api, other, (await quote(api, headers, "10"))["quote_id"])
    assert foreign.status_code == 409
    assert foreign.json()["code"] == 1003


async def test_send_with_an_expired_quote_is_1002(backend, make_settings):
    settings = await make_settings(backend, quote_ttl_seconds=0.3, **FAST_PAYOUTS)
    async with running_app(settings) as api:
        _, headers = await funded_customer(api)
        q = await quote(api, headers)
        await asyncio.sleep(0.4)
        response = await send(api, headers, q["quote_id"])
        assert response.status_code == 409
        assert response.json()["code"] == 1002
        assert (await usd(api, headers))["locked_balance"] == "0.00"


async def test_send_short_of_funds_is_1001_holds_nothing_and_replays_1001(api):
    _, headers = await funded_customer(api, "5.00")
    q = await quote(api, headers)
    idem = key()
    short = await send(api, headers, q["quote_id"], idem)
    assert short.status_code == 400
    assert short.json()["code"] == 1001
    assert await usd(api, headers) == {
        "currency": "USD",
        "balance": "5.00",
        "locked_balance": "0.00",
        "available": "5.00",
    }
    again = await send(api, headers, q["quote_id"], idem)
    assert again.status_code == 400
    assert again.json()["code"] == 1001
    listed = (await api.http.get("/v1/remit/transactions", headers=headers)).json()["items"]
    assert [(t["status"], t["failure_code"]) for t in listed] == [("FAILED", 1001)]
    assert await api.container.wallet.verify() == []


async def test_same_key_replays_the_first_response_and_another_body_is_1007(api):
    _, headers = await funded_customer(api)
    q = await quote(api, headers)
    idem = key()
    # Beyond ASCII, so the saved response's JSON text must keep every character.
    beneficiary = {**ADA, "name": "Zoë Ångström-Núñez 李"}
    first = await send(api, headers, q["quote_id"], idem, beneficiary)
    assert first.status_code == 201
    assert first.json()["beneficiary"] == beneficiary
    await settled(api, headers, first.json()["reference_id"])
    again = await send(api, headers, q["quote_id"], idem, beneficiary)
    assert again.status_code == 201
    assert again.json() == first.json()
    other = await send(api, headers, q["quote_id"], idem, {**ADA, "name": "Someone Else"})
    assert other.status_code == 422
    assert other.json()["code"] == 1007
    listed = (await api.http.get("/v1/remit/transactions", headers=headers)).json()["items"]
    assert len(listed) == 1


async def test_one_key_sent_concurrently_makes_one_transaction(api):
    _, headers = await funded_customer(api)
    q = await quote(api, headers)
    idem = key()
    responses = await asyncio.gather(*(send(api, headers, q["quote_id"], idem) for _ in range(8)))
    answered = [r for r in responses if r.status_code == 201]
    assert answered, [r.text for r in responses]
    assert len({r.json()["txn_id"] for r in answered}) == 1
    refused = [r for r in responses if r.status_code != 201]
    assert all((r.status_code, r.json()["code"]) == (409, 1009) for r in refused), refused
    again = await send(api, headers, q["quote_id"], idem)
    assert (again.status_code, again.json()["txn_id"]) == (201, answered[0].json()["txn_id"])
    await settled(api, headers, answered[0].json()["reference_id"])
    wallet = await usd(api, headers)
    assert Decimal(wallet["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])


async def test_a_send_repeated_while_the_first_runs_is_1009_at_once_then_replays_it(api):
    user_id, headers = await funded_customer(api)
    q = await quote(api, headers)
    idem = key()
    async with wallet_held(api, user_id):  # the first send waits to place its hold
        first = asyncio.ensure_future(send(api, headers, q["quote_id"], idem))
        await waiting_on_a_lock(api)
        repeat = await asyncio.wait_for(send(api, headers, q["quote_id"], idem), 5)
        assert (repeat.status_code, repeat.json()["code"]) == (409, 1009)
        assert not first.done()
        assert (await usd(api, headers))["locked_balance"] == "0.00"
    assert (await first).status_code == 201, first.result().text
    again = await send(api, headers, q["quote_id"], idem)
    assert (again.status_code, again.json()) == (201, first.result().json())
    transactions = "SELECT count(*) FROM remit_transactions WHERE user_id = $1"
    assert await api.value(transactions, uuid.UUID(user_id)) == 1
    await settled(api, headers, first.result().json()["reference_id"])
    wallet = await usd(api, headers)
    assert Decimal(wallet["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
    assert await api.container.wallet.verify() == []


async def test_a_send_refused_for_kyc_or_a_bad_body_keeps_no_key(api):
    user_id, token = await api.user_token()
    headers = api.bearer(token)
    q = await quote(api, headers)
    idem = key()
    unapproved = await send(api, headers, q["quote_id"], idem)
    assert (unapproved.status_code, unapproved.json()["code"]) == (403, 1005)
    await api.submit_kyc(token)
    await api.approve_kyc(user_id)
    _, teller = await api.user_token("TELLER")
    funded = await api.http.post(
        "/v1/wallet/deposit",
        json={"user_id": user_id, "amount": "1000.00", "currency": "USD", "reference": "B-1"},
        headers={**api.bearer(teller), "Idempotency-Key": key()},
    )
    assert funded.status_code == 201
    invalid = await send(api, headers, q["quote_id"], idem, {**ADA, "country": "gb"})
    assert (invalid.status_code, invalid.json()["code"]) == (422, 1000)
    sent = await send(api, headers, q["quote_id"], idem)
    assert sent.status_code == 201, sent.text
    assert sent.json()["status"] == "PROCESSING"


async def test_a_send_key_pruned_after_its_time_makes_a_new_transaction(api):
    _, headers = await funded_customer(api)
    idem = key()
    first = await send(api, headers, (await quote(api, headers, "10"))["quote_id"], idem)
    assert first.status_code == 201
    await api.rows(
        "UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => $1)"
        " WHERE key = $2",
        api.container.settings.idempotency_key_ttl_seconds + 1,
        idem,
    )
    assert await api.container.housekeeper.prune_once() == 1
    again = await send(api, headers, (await quote(api, headers, "10"))["quote_id"], idem)
    assert again.status_code == 201, again.text
    assert again.json()["txn_id"] != first.json()["txn_id"]


@pytest.mark.parametrize(
    "beneficiary",
    [
        {**ADA, "country": "gb"},
        {**ADA, "account_number": "1"},
        {**ADA, "bank_code": "NW BK"},
        {**ADA, "name": ""},
        {k: v for k, v in ADA.items() if k != "account_number"},
        {**ADA, "extra": "field"},
    ],
)
async def test_send_with_a_bad_beneficiary_is_1000_and_spends_no_quote(api, beneficiary):
    _, headers = await funded_customer(api)
    q = await quote(api, headers)
    response = await send(api, headers, q["quote_id"], beneficiary=beneficiary)
    assert response.status_code == 422
    assert response.json()["code"] == 1000
    assert (await send(api, headers, q["quote_id"])).status_code == 201


async def test_rejected_payout_fails_and_gives_the_money_back(backend, make_settings):
    settings = await make_settings(backend, payout_simulated_reject_rate=1.0, **FAST_PAYOUTS)
    async with running_app(settings) as api:
        _, headers = await funded_customer(api)
        sent = await send(api, headers, (await quote(api, headers))["quote_id"])
        assert sent.status_code == 201
        done = await settled(api, headers, sent.json()["reference_id"])
        assert done["status"] == "FAILED"
        assert done["failure_reason"] == "simulated rejection"
        assert await usd(api, headers) == {
            "currency": "USD",
            "balance": "1000.00",
            "locked_balance": "0.00",
            "available": "1000.00",
        }
        assert await api.container.wallet.verify() == []


async def test_transactions_list_newest_first_filter_by_status_and_page(api):
    _, headers = await funded_customer(api)
    references = []
    for _ in range(3):
        sent = await send(api, headers, (await quote(api, headers, "10"))["quote_id"])
        references.append(sent.json()["reference_id"])
        await settled(api, headers, references[-1])
    short = await send(api, headers, (await quote(api, headers, "5000"))["quote_id"])
    assert short.status_code == 400
    first = (
        await api.http.get("/v1/remit/transactions", params={"limit": 2}, headers=headers)
    ).json()
    second = (
        await api.http.get(
            "/v1/remit/transactions",
            params={"limit": 2, "cursor": first["next_cursor"]},
            headers=headers,
        )
    ).json()
    listed = [t["reference_id"] for t in first["items"] + second["items"]]
    assert listed[1:] == references[::-1]
    last = (
        await api.http.get(
            "/v1/remit/transactions",
            params={"limit": 2, "cursor": second["next_cursor"]},
            headers=headers,
        )
    ).json()
    assert last == {"items": [], "next_cursor": None}
    completed = (
        await api.http.get(
            "/v1/remit/transactions", params={"status": "COMPLETED"}, headers=headers
        )
    ).json()["items"]
    assert [t["reference_id"] for t in completed] == references[::-1]
    for bad in ({"status": "DONE"}, {"limit": 0}, {"cursor": "!!"}):
        response = await api.http.get("/v1/remit/transactions", params=bad, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == 1000


async def test_a_transaction_is_seen_by_its_owner_and_staff_only(api):
    _, headers = await funded_customer(api)
    reference = (await send(api, headers, (await quote(api, headers))["quote_id"])).json()[
        "reference_id"
    ]
    _, stranger = await approved_customer(api)
    hidden = await api.http.get(f"/v1/remit/transactions/{reference}", headers=stranger)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == 4004
    assert (await api.http.get("/v1/remit/transactions", headers=stranger)).json()["items"] == []
    for role in ("COMPLIANCE", "ADMIN", "TELLER"):
        _, token = await api.user_token(role)
        seen = await api.http.get(f"/v1/remit/transactions/{reference}", headers=api.bearer(token))
        assert seen.status_code == 200, role
        assert seen.json()["reference_id"] == reference
    missing = await api.http.get("/v1/remit/transactions/TXN-NOSUCHONE", headers=headers)
    assert missing.status_code == 404


# Receipts and the audit trail


async def test_a_completed_send_has_its_pdf_receipt_behind_a_signed_url(api):
    _, headers = await funded_customer(api)
    sent = await send(api, headers, (await quote(api, headers))["quote_id"])
    reference, txn_id = sent.json()["reference_id"], sent.json()["txn_id"]
    done = await settled(api, headers, reference)
    assert done["status"] == "COMPLETED"
    completed_on = done["history"][-1]["at"][:10]
    path = f"receipts/{completed_on}/{txn_id}.pdf"
    assert not await api.container.storage.exists(path)  # rendered when first asked for
    response = await api.http.get(f"/v1/remit/transactions/{reference}/receipt", headers=headers)
    assert response.status_code == 200, response.text
    link = response.json()
    assert path in link["url"]
    assert await api.container.storage.exists(path)
    pdf = await fetch(api, link["url"])
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF-")
    assert pdf.content.rstrip().endswith(b"%%EOF")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert reference in text
    assert "Ada Lovelace" in text
    again = await api.http.get(f"/v1/remit/transactions/{reference}/receipt", headers=headers)
    assert (await fetch(api, again.json()["url"])).content == pdf.content  # stored once


async def test_no_receipt_for_another_customer_or_before_completion(api):
    _, headers = await funded_customer(api, "50.00")
    refused = await send(api, headers, (await quote(api, headers))["quote_id"])  # 100 > 50
    assert refused.json()["code"] == 1001
    listed = await api.http.get("/v1/remit/transactions", headers=headers)
    failed = listed.json()["items"][0]
    assert failed["status"] == "FAILED"
    no_receipt = await api.http.get(
        f"/v1/remit/transactions/{failed['reference_id']}/receipt", headers=headers
    )
    assert (no_receipt.status_code, no_receipt.json()["code"]) == (404, 4004)

    sent = await send(api, headers, (await quote(api, headers, "10.00"))["quote_id"])
    reference = sent.json()["reference_id"]
    assert (await settled(api, headers, reference))["status"] == "COMPLETED"
    _, stranger = await approved_customer(api)
    foreign = await api.http.get(f"/v1/remit/transactions/{reference}/receipt", headers=stranger)
    assert (foreign.status_code, foreign.json()["code"]) == (404, 4004)
    receipts = list(await stored_objects(api, "receipts/"))
    for txn_id in (failed["txn_id"], sent.json()["txn_id"]):  # none rendered for either
        assert not any(txn_id in path for path in receipts)


async def test_every_status_change_is_in_the_audit_log(api):
    user_id, headers = await funded_customer(api)
    sent = await send(api, headers, (await quote(api, headers))["quote_id"])
    txn_id = sent.json()["txn_id"]
    await settled(api, headers, sent.json()["reference_id"])
    rows: list[Any] = []
    for _ in range(200):  # the audit consumer runs on the bus, after each commit
        rows = await api.rows(
            "SELECT actor_id, detail FROM audit_log WHERE subject_id = $1 ORDER BY at", txn_id
        )
        if len(rows) == 3:
            break
        await asyncio.sleep(0.05)
    assert [json.loads(r["detail"])["status"] for r in rows] == [
        "CREATED",
        "PROCESSING",
        "COMPLETED",
    ]
    assert [str(r["actor_id"]) for r in rows] == [user_id, user_id, str(uuid.UUID(int=0))]


async def test_a_status_change_delivered_twice_is_audited_once(api):
    txn_id = str(uuid.uuid4())

    def change(status: str) -> Event:
        return Event(
            TXN_STATUS_CHANGED,
            {
                "txn_id": txn_id,
                "reference_id": "TXN-TWICE0001",
                "user_id": str(uuid.uuid4()),
                "status": status,
                "timestamp": "2026-11-26T02:00:00Z",
            },
        )

    processing, completed = change("PROCESSING"), change("COMPLETED")
    handle = audit_writer(api.container.uow)
    await handle([processing])
    await handle([processing, completed, processing])  # redeliveries, in a batch and across
    rows = await api.rows("SELECT detail FROM audit_log WHERE subject_id = $1", txn_id)
    assert sorted(json.loads(r["detail"])["status"] for r in rows) == ["COMPLETED", "PROCESSING"]
