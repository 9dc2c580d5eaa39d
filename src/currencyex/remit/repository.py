"""SQL for remittances: remit_transactions (with the beneficiary snapshot) and their status history.

A status change is a conditional UPDATE (`WHERE status = <the one read>`): of two workers or
requests moving one transaction, one wins and the other sees it already moved.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.money import Money
from currencyex.platform.db import Database, UtcDateTime, insert_or_ignore_for, metadata
from currencyex.platform.uow import SqlUnitOfWork
from currencyex.remit.domain import (
    Beneficiary,
    Outcome,
    StatusChange,
    Transaction,
    TxnQuery,
    TxnStatus,
    new_reference_id,
)

transactions = sa.Table(
    "remit_transactions",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("reference_id", sa.String(20), nullable=False, unique=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("quote_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("source_amount", sa.BigInteger, nullable=False),
    sa.Column("source_currency", sa.String(3), nullable=False),
    sa.Column("target_amount", sa.BigInteger, nullable=False),
    sa.Column("target_currency", sa.String(3), nullable=False),
    sa.Column("rate", sa.String(40), nullable=False),  # an exact decimal, as text
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("total_debit", sa.BigInteger, nullable=False),
    # The beneficiary snapshot and the purpose, as sent (the seed's JSONB metadata).
    sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column("failure_code", sa.Integer),
    sa.Column("failure_reason", sa.String(500)),
    sa.Column("partner_reference", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("deadline_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_remit_transactions_user_key"),
)

status_history = sa.Table(
    "remit_status_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("txn_id", sa.Uuid, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(500)),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

_T = transactions.c


@functools.cache
def _insert_txn(dialect: str) -> Any:
    """The transaction's INSERT, which writes nothing when its reference is taken already."""
    return (
        insert_or_ignore_for(dialect, transactions)
        .on_conflict_do_nothing(index_elements=["reference_id"])
        .returning(_T.id)
    )


_INSERT_HISTORY = status_history.insert()
_BY_ID = sa.select(transactions).where(_T.id == sa.bindparam("txn_id"))
_BY_REFERENCE = sa.select(transactions).where(_T.reference_id == sa.bindparam("reference_id"))
_HISTORY = (
    sa.select(status_history.c.status, status_history.c.reason, status_history.c.created_at)
    .where(status_history.c.txn_id == sa.bindparam("txn_id"))
    .order_by(status_history.c.id)
)
_MOVE = (
    transactions.update()
    .where(_T.id == sa.bindparam("txn_id"), _T.status == sa.bindparam("from_status"))
    .values(
        status=sa.bindparam("to_status"),
        updated_at=sa.bindparam("at"),
        failure_code=sa.func.coalesce(
            sa.bindparam("failure_code", type_=sa.Integer), _T.failure_code
        ),
        failure_reason=sa.func.coalesce(
            sa.bindparam("failure_reason", type_=sa.String), _T.failure_reason
        ),
        partner_reference=sa.func.coalesce(
            sa.bindparam("partner_reference", type_=sa.String), _T.partner_reference
        ),
        next_attempt_at=sa.bindparam("next_attempt_at"),
        lease_until=sa.bindparam("lease_until"),
    )
    .returning(*transactions.c)
)
_RETRY_LATER = (
    transactions.update()
    .where(_T.id == sa.bindparam("txn_id"))
    .values(next_attempt_at=sa.bindparam("next_at"), lease_until=None)
)
_UNFINISHED = (TxnStatus.CREATED.value, TxnStatus.PROCESSING.value)
_REFERENCE_DRAWS = 5


def _transaction(row: Any) -> Transaction:
    details = row.metadata
    return Transaction(
        id=row.id,
        reference_id=row.reference_id,
        user_id=row.user_id,
        status=TxnStatus(row.status),
        quote_id=row.quote_id,
        source_amount=Money(row.source_amount, row.source_currency),
        target_amount=Money(row.target_amount, row.target_currency),
        fee=Money(row.fee, row.source_currency),
        total_debit=Money(row.total_debit, row.source_currency),
        rate=Decimal(row.rate),
        beneficiary=Beneficiary.from_json(details["beneficiary"]),
        purpose=details.get("purpose"),
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deadline_at=row.deadline_at,
        attempts=row.attempts,
        failure_code=row.failure_code,
        failure_reason=row.failure_reason,
        partner_reference=row.partner_reference,
    )


class SqlRemitRepository:
    def __init__(self, conn: AsyncConnection, *, resume_after_seconds: float) -> None:
        self._conn = conn
        self._resume_after = resume_after_seconds

    async def add(self, txn: Transaction, request_hash: str) -> Transaction:
        row = {
            "id": txn.id,
            "user_id": txn.user_id,
            "idempotency_key": txn.idempotency_key,
            "request_hash": request_hash,
            "quote_id": txn.quote_id,
            "status": txn.status.value,
            "source_amount": txn.source_amount.minor,
            "source_currency": txn.source_amount.currency,
            "target_amount": txn.target_amount.minor,
            "target_currency": txn.target_amount.currency,
            "rate": format(txn.rate, "f"),
            "fee": txn.fee.minor,
            "total_debit": txn.total_debit.minor,
            "metadata": {"beneficiary": txn.beneficiary.to_json(), "purpose": txn.purpose},
            "attempts": txn.attempts,
            # A send that dies between its steps is picked up by a payout worker after this.
            "next_attempt_at": txn.created_at + timedelta(seconds=self._resume_after),
            "deadline_at": txn.deadline_at,
            "created_at": txn.created_at,
            "updated_at": txn.updated_at,
        }
        reference = txn.reference_id
        insert = _insert_txn(self._conn.dialect.name)
        for draw in range(_REFERENCE_DRAWS):
            added = await self._conn.execute(insert, {**row, "reference_id": reference})
            if added.first() is not None:
                break
            if draw + 1 == _REFERENCE_DRAWS:
                raise RuntimeError(f"no free reference after {_REFERENCE_DRAWS} draws")
            reference = new_reference_id()
        await self._conn.execute(
            _INSERT_HISTORY,
            {
                "txn_id": txn.id,
                "status": txn.status.value,
                "reason": None,
                "created_at": txn.created_at,
            },
        )
        return _replace_reference(txn, reference)

    async def find(self, txn_id: uuid.UUID) -> Transaction | None:
        row = (await self._conn.execute(_BY_ID, {"txn_id": txn_id})).first()
        return None if row is None else _transaction(row)

    async def find_by_reference(self, reference_id: str) -> Transaction | None:
        row = (await self._conn.execute(_BY_REFERENCE, {"reference_id": reference_id})).first()
        return None if row is None else _transaction(row)

    async def history(self, txn_id: uuid.UUID) -> list[StatusChange]:
        rows = await self._conn.execute(_HISTORY, {"txn_id": txn_id})
        return [StatusChange(TxnStatus(r.status), r.created_at, r.reason) for r in rows]

    async def page(self, query: TxnQuery) -> list[Transaction]:
        stmt = (
            sa.select(transactions)
            .where(_T.user_id == query.user_id)
            .order_by(_T.id.desc())
            .limit(query.limit)
        )
        if query.status is not None:
            stmt = stmt.where(_T.status == query.status.value)
        if query.before is not None:
            stmt = stmt.where(_T.id < query.before)
        return [_transaction(row) for row in await self._conn.execute(stmt)]

    async def move(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
    ) -> Transaction | None:
        row = (
            await self._conn.execute(
                _MOVE,
                {
                    "txn_id": txn.id,
                    "from_status": txn.status.value,
                    "to_status": outcome.status.value,
                    "at": at,
                    "failure_code": outcome.failure_code,
                    "failure_reason": outcome.reason
                    if outcome.status is TxnStatus.FAILED
                    else None,
                    "partner_reference": outcome.partner_reference,
                    "next_attempt_at": None if outcome.status.final else next_attempt_at,
                    "lease_until": None if outcome.status.final else lease_until,
                },
            )
        ).first()
        if row is None:
            return None
        await self._conn.execute(
            _INSERT_HISTORY,
            {
                "txn_id": txn.id,
                "status": outcome.status.value,
                "reason": outcome.reason,
                "created_at": at,
            },
        )
        return _transaction(row)

    async def lease_due(self, now: datetime, until: datetime, limit: int) -> list[Transaction]:
        due = (
            sa.select(_T.id)
            .where(
                _T.status.in_(_UNFINISHED),
                _T.next_attempt_at <= now,
                sa.or_(_T.lease_until.is_(None), _T.lease_until <= now),
            )
            .order_by(_T.next_attempt_at)
            .limit(limit)
        )
        if self._conn.dialect.name == "postgresql":
            # Several workers split the due transactions instead of waiting on one another.
            due = due.with_for_update(skip_locked=True)
        rows = await self._conn.execute(
            transactions.update()
            .where(_T.id.in_(due.scalar_subquery()))
            .values(lease_until=until, attempts=_T.attempts + 1)
            .returning(*transactions.c)
        )
        return sorted((_transaction(row) for row in rows), key=lambda t: t.id)

    async def retry_later(self, txn_id: uuid.UUID, at: datetime) -> None:
        await self._conn.execute(_RETRY_LATER, {"txn_id": txn_id, "next_at": at})


def _replace_reference(txn: Transaction, reference: str) -> Transaction:
    return txn if reference == txn.reference_id else replace(txn, reference_id=reference)


class SqlRemitUnitOfWork(SqlUnitOfWork):
    transactions: SqlRemitRepository

    def __init__(self, db: Database, *, resume_after_seconds: float) -> None:
        super().__init__(db)
        self._resume_after = resume_after_seconds

    def bind(self, conn: AsyncConnection) -> None:
        self.transactions = SqlRemitRepository(conn, resume_after_seconds=self._resume_after)
