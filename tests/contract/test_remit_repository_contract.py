"""The remittance repository on each unit of work there is: SQLAlchemy's on SQLite and on
PostgreSQL, and the bare driver's on PostgreSQL (platform/pg.py), held to the same tests.

Covers what the send saga and the payout workers rely on: a new transaction with its first
history row (a taken reference drawn again), conditional status moves with their history,
leases of due work, retries later, and the transaction list's filters.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.platform.db import Database
from currencyex.remit import repository
from currencyex.remit.domain import Beneficiary, Outcome, Transaction, TxnQuery, TxnStatus
from currencyex.remit.repository import PgRemitUnitOfWork, SqlRemitUnitOfWork

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Remits:
    db: Database
    unit: Callable[..., Any]

    def uow(self) -> Any:
        return self.unit(self.db, resume_after_seconds=30.0)


@pytest_asyncio.fixture(
    params=[
        ("embedded", SqlRemitUnitOfWork),
        pytest.param(("real", SqlRemitUnitOfWork), marks=pytest.mark.integration),
        pytest.param(("real", PgRemitUnitOfWork), marks=pytest.mark.integration),
    ],
    ids=["embedded", "real", "real-driver"],
)
async def remits(request: pytest.FixtureRequest, make_settings: Any) -> AsyncIterator[Remits]:
    backend, unit = request.param
    db = Database((await make_settings(backend)).database_url)
    yield Remits(db, unit)
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


async def add(remits: Remits, txn: Transaction) -> Transaction:
    async with remits.uow() as uow:
        added: Transaction = await uow.transactions.add(txn, "hash")
        await uow.commit()
    return added


async def test_a_new_transaction_is_stored_whole_with_its_first_history_row(remits) -> None:
    txn = await add(remits, a_transaction(uuid.uuid4(), "TXN-AAAAAAAAA1"))
    async with remits.uow() as uow:
        found = await uow.transactions.find(txn.id)
        by_reference = await uow.transactions.find_by_reference("TXN-AAAAAAAAA1")
        history = await uow.transactions.history(txn.id)
    assert found == txn == by_reference
    assert [(c.status, c.at, c.reason) for c in history] == [(TxnStatus.CREATED, NOW, None)]


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


async def test_due_work_is_leased_once_and_retried_later(remits) -> None:
    user = uuid.uuid4()
    txn = await add(remits, a_transaction(user, "TXN-LEASE0001", at=NOW - timedelta(minutes=5)))
    async with remits.uow() as uow:
        leased = await uow.transactions.lease_due(NOW, NOW + timedelta(seconds=60), 10)
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
