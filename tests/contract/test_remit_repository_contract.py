"""The remittance repository on PostgreSQL (its statements call `remit_add_once` and
`remit_move`, migration 0008).

Covers what the send saga and the payout workers rely on: a new transaction stored whole with
its first history row, its Idempotency-Key claimed with its reply and its event (a taken
reference drawn again, a taken key answered with the first reply), conditional status moves
with their history and event (and the send's saved response, kept only if it moved), leases
of due work, retries later, and the transaction list's filters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from currencyex.kernel.errors import IdempotencyKeyReused, RequestInProgress
from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.kernel.ports import PENDING, SavedResponse
from currencyex.platform.db.database import Database
from currencyex.remit import repository
from currencyex.remit.domain import (
    Beneficiary,
    Outcome,
    Reply,
    Transaction,
    TxnQuery,
    TxnStatus,
)
from currencyex.remit.repository import RemitUnitOfWork

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SCOPE = "contract.send"


@dataclass(frozen=True)
class Remits:
    db: Database

    def uow(self) -> RemitUnitOfWork:
        return RemitUnitOfWork(self.db, resume_after_seconds=30.0)

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        async with self.db.connection() as conn:
            return list(await conn.fetch(sql, *args))


@pytest_asyncio.fixture
async def remits(make_settings: Callable[..., Any]) -> AsyncIterator[Remits]:
    db = Database((await make_settings("real")).database_url)
    yield Remits(db)
    await db.close()


def a_transaction(user: uuid.UUID, reference: str, *, at: datetime = NOW) -> Transaction:
    return Transaction(
        id=new_id(),
        reference_id=reference,
        user_id=user,
        status=TxnStatus.CREATED,
        quote_id=f"q-{uuid.uuid4().hex[:8]}",
        source_amount=Money(10_000, "USD"),
        target_amount=Money(9_100, "EUR"),
        fee=Money(150, "USD"),
        total_debit=Money(10_150, "USD"),
        rate=Decimal("0.91"),
        beneficiary=Beneficiary("Ana", "DE89370400440532013000", "COBADEFFXXX", "DE"),
        purpose="family",
        idempotency_key=f"k-{uuid.uuid4().hex}",
        created_at=at,
        updated_at=at,
        deadline_at=at + timedelta(hours=1),
    )


async def add_once(
    remits: Remits, txn: Transaction, request_hash: str = "h", status: int = 202
) -> Transaction | SavedResponse:
    """`txn` stored with its key claimed under SCOPE, its reply `status` with the
    transaction's id (a send's own is PENDING until it answers)."""
    async with remits.uow() as uow:
        added = await uow.transactions.add_once(
            txn, request_hash, Reply(SCOPE, status, {"txn_id": str(txn.id)})
        )
        await uow.commit()
    return added


async def add(remits: Remits, txn: Transaction) -> Transaction:
    added = await add_once(remits, txn)
    assert isinstance(added, Transaction)
    return added


async def test_a_new_transaction_is_stored_whole_with_its_first_history_row(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-AAAAAAAAA1"))
    async with remits.uow() as uow:
        found = await uow.transactions.find(txn.id)
        by_reference = await uow.transactions.find_by_reference("TXN-AAAAAAAAA1")
        history = await uow.transactions.history(txn.id)
    assert found == txn == by_reference
    assert [(c.status, c.at, c.reason) for c in history] == [(TxnStatus.CREATED, NOW, None)]
    assert await saved_response(remits, txn) == SavedResponse(202, {"txn_id": str(txn.id)})
    assert await events_of(remits, txn) == ["CREATED"]


async def test_a_key_claimed_before_gives_its_first_reply_and_stores_nothing(remits) -> None:
    user = uuid.uuid4()
    first = await add(remits, a_transaction(user, "TXN-KEY000001"))
    again = replace(a_transaction(user, "TXN-KEY000002"), idempotency_key=first.idempotency_key)
    assert await add_once(remits, again) == SavedResponse(202, {"txn_id": str(first.id)})
    with pytest.raises(IdempotencyKeyReused):
        await add_once(remits, again, request_hash="another request")
    async with remits.uow() as uow:
        assert await uow.transactions.find(again.id) is None
    assert await events_of(remits, again) == []


async def test_a_key_whose_send_has_not_answered_is_1009_and_stores_nothing(remits) -> None:
    user = uuid.uuid4()
    first = await add_once(remits, a_transaction(user, "TXN-KEY000003"), status=PENDING)
    assert isinstance(first, Transaction)
    again = replace(a_transaction(user, "TXN-KEY000004"), idempotency_key=first.idempotency_key)
    with pytest.raises(RequestInProgress):
        await add_once(remits, again)
    with pytest.raises(IdempotencyKeyReused):  # another request under the key: 1007 first
        await add_once(remits, again, request_hash="another request")
    async with remits.uow() as uow:
        assert await uow.transactions.find(again.id) is None


async def test_a_key_being_claimed_by_an_open_transaction_is_1009_at_once(remits) -> None:
    txn = a_transaction(uuid.uuid4(), "TXN-KEY000005")
    async with remits.uow() as holder:
        claimed = await holder.idempotency.claim(SCOPE, str(txn.user_id), txn.idempotency_key, "h")
        assert claimed is None
        with pytest.raises(RequestInProgress):
            await asyncio.wait_for(add_once(remits, txn), 5)
    async with remits.uow() as uow:
        assert await uow.transactions.find(txn.id) is None
    assert await events_of(remits, txn) == []


async def test_many_transactions_are_found_at_once(remits) -> None:
    user = uuid.uuid4()
    first = await add(remits, a_transaction(user, "TXN-MANY00001"))
    second = await add(remits, a_transaction(user, "TXN-MANY00002"))
    async with remits.uow() as uow:
        found = await uow.transactions.find_many([second.id, uuid.uuid4(), first.id])
        none = await uow.transactions.find_many([])
    assert sorted(found, key=lambda t: t.reference_id) == [first, second]
    assert none == []


async def test_a_taken_reference_is_drawn_again(remits, monkeypatch) -> None:
    first = await add(remits, a_transaction(uuid.uuid4(), "TXN-TAKEN0001"))
    monkeypatch.setattr(repository, "new_reference_id", lambda: "TXN-FRESH0001")
    second = await add(remits, a_transaction(uuid.uuid4(), "TXN-TAKEN0001"))
    assert (first.reference_id, second.reference_id) == ("TXN-TAKEN0001", "TXN-FRESH0001")
    async with remits.uow() as uow:
        stored = await uow.transactions.find(second.id)
        assert len(await uow.transactions.history(second.id)) == 1
    assert stored is not None
    assert stored.reference_id == "TXN-FRESH0001"


async def test_a_move_is_conditional_on_the_status_read_and_keeps_its_history(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-MOVE00001"))
    later = NOW + timedelta(seconds=5)
    async with remits.uow() as uow:
        moved = await uow.transactions.move(
            txn, Outcome(TxnStatus.PROCESSING), later, next_attempt_at=later
        )
        await uow.commit()
    async with remits.uow() as uow:
        stale = await uow.transactions.move(
            txn, Outcome(TxnStatus.FAILED, "late"), later, next_attempt_at=later
        )
        await uow.commit()
    assert moved is not None
    assert (moved.status, moved.updated_at, moved.reference_id) == (
        TxnStatus.PROCESSING,
        later,
        "TXN-MOVE00001",
    )
    assert stale is None  # the stored status is no longer CREATED
    done_at = later + timedelta(seconds=1)
    async with remits.uow() as uow:
        completed = await uow.transactions.move(
            moved,
            Outcome(TxnStatus.COMPLETED, "paid", partner_reference="P-1"),
            done_at,
            next_attempt_at=done_at,
        )
        await uow.commit()
    assert completed is not None
    assert (completed.status, completed.partner_reference) == (TxnStatus.COMPLETED, "P-1")
    async with remits.uow() as uow:
        history = await uow.transactions.history(txn.id)
    assert [(c.status, c.reason) for c in history] == [
        (TxnStatus.CREATED, None),
        (TxnStatus.PROCESSING, None),
        (TxnStatus.COMPLETED, "paid"),
    ]


async def saved_response(remits: Remits, txn: Transaction) -> SavedResponse:
    """The response saved under the send's key."""
    [row] = await remits.rows(
        "SELECT status_code, response FROM idempotency_keys WHERE key = $1", txn.idempotency_key
    )
    return SavedResponse(row["status_code"], json.loads(row["response"]))


async def events_of(remits: Remits, txn: Transaction) -> list[str]:
    """The statuses announced in the outbox for `txn`."""
    payloads = [row["payload"] for row in await remits.rows("SELECT payload FROM outbox")]
    data = [json.loads(payload)["data"] for payload in payloads]
    return sorted(d["status"] for d in data if d.get("txn_id") == str(txn.id))


async def test_a_recorded_move_keeps_its_event_and_the_sends_reply(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-REC000001"))
    later = NOW + timedelta(seconds=5)
    async with remits.uow() as uow:
        moved = await uow.transactions.move(
            txn,
            Outcome(TxnStatus.PROCESSING),
            later,
            next_attempt_at=later,
            reply=Reply(SCOPE, 201),
        )
    assert moved is not None
    assert (moved.status, moved.updated_at) == (TxnStatus.PROCESSING, later)
    async with remits.uow() as uow:
        stored = await uow.transactions.find(txn.id)
        history = await uow.transactions.history(txn.id)
    assert stored == moved
    assert [(c.status, c.at) for c in history] == [
        (TxnStatus.CREATED, NOW),
        (TxnStatus.PROCESSING, later),
    ]
    assert await saved_response(remits, txn) == SavedResponse(201, moved.to_json())
    assert await events_of(remits, txn) == ["CREATED", "PROCESSING"]
    async with remits.uow() as uow:  # no reply: the event alone
        failed = await uow.transactions.move(
            moved,
            Outcome(TxnStatus.FAILED, "rejected", failure_code=4000),
            later,
            next_attempt_at=later,
        )
    assert failed is not None
    assert (failed.failure_code, failed.failure_reason) == (4000, "rejected")
    async with remits.uow() as uow:
        assert await uow.transactions.find(txn.id) == failed
    assert await saved_response(remits, txn) == SavedResponse(201, moved.to_json())
    assert await events_of(remits, txn) == ["CREATED", "FAILED", "PROCESSING"]


async def test_a_recorded_move_from_a_status_no_longer_stored_keeps_nothing(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-REC000002"))
    async with remits.uow() as uow:
        assert await uow.transactions.move(
            txn, Outcome(TxnStatus.PROCESSING), NOW, next_attempt_at=NOW
        )
    async with remits.uow() as uow:
        stale = await uow.transactions.move(
            txn,
            Outcome(TxnStatus.FAILED, "insufficient funds", failure_code=1001),
            NOW,
            next_attempt_at=NOW,
            reply=Reply(SCOPE, 402, {"code": 1001}),
        )
    assert stale is None
    async with remits.uow() as uow:
        stored = await uow.transactions.find(txn.id)
        history = await uow.transactions.history(txn.id)
    assert stored is not None
    assert (stored.status, stored.failure_code) == (TxnStatus.PROCESSING, None)
    assert len(history) == 2
    assert await events_of(remits, txn) == ["CREATED", "PROCESSING"]
    assert await saved_response(remits, txn) == SavedResponse(202, {"txn_id": str(txn.id)})


async def processing(remits: Remits, reference: str) -> Transaction:
    txn = await add(remits, a_transaction(uuid.uuid4(), reference))
    async with remits.uow() as uow:
        moved = await uow.transactions.move(
            txn, Outcome(TxnStatus.PROCESSING), NOW, next_attempt_at=NOW
        )
    assert moved is not None
    return moved


async def test_moves_recorded_together_keep_each_move_with_its_history_and_event(remits) -> None:
    paid, rejected, stale = [await processing(remits, f"TXN-MANYMOVE{n}") for n in range(3)]
    async with remits.uow() as uow:  # `stale` moved on meanwhile
        await uow.transactions.move(stale, Outcome(TxnStatus.COMPLETED), NOW, next_attempt_at=NOW)
    later = NOW + timedelta(seconds=5)
    outcomes = [
        (paid, Outcome(TxnStatus.COMPLETED, partner_reference="P-1")),
        (rejected, Outcome(TxnStatus.FAILED, "rejected", failure_code=4000)),
        (stale, Outcome(TxnStatus.FAILED, "late", failure_code=4000)),
    ]
    async with remits.uow() as uow:
        moved = await uow.transactions.move_all(outcomes, later)
    assert sorted(moved, key=lambda t: t.reference_id) == [
        paid.after(outcomes[0][1], later),
        rejected.after(outcomes[1][1], later),
    ]
    async with remits.uow() as uow:
        for txn in moved:
            assert await uow.transactions.find(txn.id) == txn
            history = await uow.transactions.history(txn.id)
            assert [(c.status, c.at) for c in history][-1] == (txn.status, later)
        stored = await uow.transactions.find(stale.id)
        assert stored is not None
        assert (stored.status, stored.updated_at) == (TxnStatus.COMPLETED, NOW)
        assert len(await uow.transactions.history(stale.id)) == 3
    assert (moved[0].partner_reference, moved[1].failure_reason) == ("P-1", "rejected")
    assert await events_of(remits, paid) == ["COMPLETED", "CREATED", "PROCESSING"]
    assert await events_of(remits, rejected) == ["CREATED", "FAILED", "PROCESSING"]
    assert await events_of(remits, stale) == ["COMPLETED", "CREATED", "PROCESSING"]
    async with remits.uow() as uow:
        assert await uow.transactions.move_all([], later) == []


async def test_moves_recorded_together_go_only_to_final_statuses(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-MANYMOVE9"))
    async with remits.uow() as uow:
        with pytest.raises(ValueError, match="not a final status"):
            await uow.transactions.move_all([(txn, Outcome(TxnStatus.PROCESSING))], NOW)
    assert await events_of(remits, txn) == ["CREATED"]


async def test_due_work_is_leased_once_and_retried_later(remits) -> None:
    user = uuid.uuid4()
    txn = await add(remits, a_transaction(user, "TXN-LEASE0001", at=NOW - timedelta(minutes=5)))
    async with remits.uow() as uow:
        leased = await uow.transactions.lease_due(NOW, NOW + timedelta(seconds=60), 10)
        await uow.commit()
    async with remits.uow() as uow:
        again = await uow.transactions.lease_due(NOW, NOW + timedelta(seconds=60), 10)
        await uow.commit()
    mine = [t for t in leased if t.id == txn.id]
    assert [t.attempts for t in mine] == [1]
    assert txn.id not in {t.id for t in again}  # leased until NOW + 60 s
    async with remits.uow() as uow:
        await uow.transactions.retry_later(txn.id, NOW + timedelta(seconds=10))
        await uow.commit()
    async with remits.uow() as uow:
        early = await uow.transactions.lease_due(NOW, NOW + timedelta(seconds=60), 10)
        await uow.commit()
    async with remits.uow() as uow:
        due = await uow.transactions.lease_due(
            NOW + timedelta(seconds=10), NOW + timedelta(seconds=70), 10
        )
        await uow.commit()
    assert txn.id not in {t.id for t in early}
    assert [t.attempts for t in due if t.id == txn.id] == [2]


async def test_the_list_is_newest_first_with_its_filters(remits) -> None:
    user = uuid.uuid4()
    txns = [await add(remits, a_transaction(user, f"TXN-LIST0000{n}")) for n in range(3)]
    await add(remits, a_transaction(uuid.uuid4(), "TXN-OTHER0001"))
    async with remits.uow() as uow:
        await uow.transactions.move(
            txns[1], Outcome(TxnStatus.PROCESSING), NOW, next_attempt_at=NOW
        )
        await uow.commit()
    async with remits.uow() as uow:
        everything = await uow.transactions.page(TxnQuery(user_id=user))
        processing = await uow.transactions.page(
            TxnQuery(user_id=user, status=TxnStatus.PROCESSING)
        )
    # Newest first by id (time-ordered, though not within one millisecond).
    newest_first = sorted((t.id for t in txns), reverse=True)
    assert [t.id for t in everything] == newest_first
    assert [t.id for t in processing] == [txns[1].id]
    async with remits.uow() as uow:
        older = await uow.transactions.page(TxnQuery(user_id=user, before=newest_first[0], limit=1))
    assert [t.id for t in older] == newest_first[1:2]
