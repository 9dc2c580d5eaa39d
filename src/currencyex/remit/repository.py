"""The remittances' SQL: transactions (with the beneficiary snapshot), their status history,
and the mismatches the reconciliation records.

A new transaction and each status move are one call of a SQL function (remit/migrations) that
writes the history row and the event with it. A move is conditional on the status read (`WHERE
status = <the one read>`): of two workers or requests moving one transaction, one wins and the
other sees it already moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from currencyex.kernel.money import Money
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.db.calls import REFERENCE_TAKEN, call, call_one_row, sqlstate
from currencyex.platform.db.database import Database
from currencyex.platform.db.idempotency import check_in_flight, first_response, response_text
from currencyex.platform.db.outbox import event_arguments
from currencyex.platform.db.uow import UnitOfWork
from currencyex.remit.domain import (
    Beneficiary,
    Mismatch,
    MismatchQuery,
    MismatchState,
    Outcome,
    Reply,
    StatusChange,
    Transaction,
    TxnQuery,
    TxnStatus,
    new_reference_id,
)
from currencyex.remit.tables import mismatches, transactions

_COLUMNS = tuple(column.name for column in transactions.columns)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM remit_transactions"  # noqa: S608 (column names)
_BY_ID = f"{_SELECT} WHERE id = $1"
_BY_IDS = f"{_SELECT} WHERE id = ANY($1::uuid[])"
_BY_REFERENCE = f"{_SELECT} WHERE reference_id = $1"
_PAGE = f"""
{_SELECT}
WHERE user_id = $1 AND ($2::varchar IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4
"""
_HISTORY = """
SELECT status, reason, created_at FROM remit_status_history WHERE txn_id = $1 ORDER BY id
"""
# Several workers split the due transactions instead of waiting on one another.
_LEASE_DUE = f"""
UPDATE remit_transactions SET lease_until = $2, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM remit_transactions
    WHERE status IN ('CREATED', 'PROCESSING') AND next_attempt_at <= $1
        AND (lease_until IS NULL OR lease_until <= $1)
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(_COLUMNS)}
"""  # noqa: S608 (column names)
_RETRY_LATER = """
UPDATE remit_transactions SET next_attempt_at = $2, lease_until = NULL WHERE id = $1
"""
# Moves to final statuses, one `remit_move` per row of the arrays: one statement, so all of
# them are kept or none. The ids of those that moved.
_MOVE_ALL = """
SELECT m.id FROM unnest(
    $1::uuid[], $2::varchar[], $3::varchar[], $4::int[], $5::varchar[], $6::varchar[],
    $7::varchar[], $8::varchar[], $9::varchar[], $10::text[], $11::timestamptz[]
) AS m(id, from_status, to_status, failure_code, failure_reason, partner_reference, reason,
    event_id, event_subject, event_payload, event_at)
WHERE remit_move(
    p_txn_id => m.id,
    p_from => m.from_status,
    p_to => m.to_status,
    p_at => $12,
    p_failure_code => m.failure_code,
    p_failure_reason => m.failure_reason,
    p_partner_reference => m.partner_reference,
    p_next_attempt_at => NULL,
    p_lease_until => NULL,
    p_reason => m.reason,
    p_event_id => m.event_id,
    p_event_subject => m.event_subject,
    p_event_payload => m.event_payload,
    p_event_at => m.event_at
)
"""
_FINAL_BETWEEN = f"""
{_SELECT}
WHERE id >= $1 AND id < $2 AND ($3::uuid IS NULL OR id > $3)
    AND status IN ('COMPLETED', 'FAILED')
ORDER BY id
LIMIT $4
"""
_REFERENCE_DRAWS = 5

_MISMATCH_COLUMNS = tuple(column.name for column in mismatches.columns)
# A mismatch with what its transaction tells: reference, sender and amounts.
_MISMATCH_JOINED = f"""
SELECT {", ".join(f"m.{name}" for name in _MISMATCH_COLUMNS)},
    t.reference_id, t.user_id, t.total_debit, t.fee, t.source_currency
FROM {{source}} AS m JOIN remit_transactions AS t ON t.id = m.txn_id
"""  # noqa: S608 (column names)
_MISMATCH_BY_ID = _MISMATCH_JOINED.format(source="remit_mismatches") + "WHERE m.id = $1"
_MISMATCH_PAGE = (
    _MISMATCH_JOINED.format(source="remit_mismatches")
    + """WHERE ($1::varchar IS NULL OR m.state = $1) AND ($2::uuid IS NULL OR m.id < $2)
ORDER BY m.id DESC
LIMIT $3
"""
)
# A disagreement recorded already (the same transaction, our status and the partner's) is
# left as it stands: a pass run twice records it once.
_RECORD_MISMATCHES = """
INSERT INTO remit_mismatches (id, txn_id, our_status, partner_status, partner_reason,
    partner_reference, found_at, state)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::varchar[], $5::varchar[],
    $6::varchar[], $7::timestamptz[], $8::varchar[])
ON CONFLICT (txn_id, our_status, partner_status) DO NOTHING
RETURNING id
"""
_MOVE_MISMATCH = """
WITH moved AS (
    UPDATE remit_mismatches SET state = $3, resolved_by = $4, resolved_at = $5, note = $6,
        journal_id = $7
    WHERE id = $1 AND state = ANY($2::varchar[])
    RETURNING *
)
""" + _MISMATCH_JOINED.format(source="moved")  # noqa: S608 (column names)


def _transaction(row: asyncpg.Record) -> Transaction:
    details = row["metadata"]
    return Transaction(
        id=row["id"],
        reference_id=row["reference_id"],
        user_id=row["user_id"],
        status=TxnStatus(row["status"]),
        quote_id=row["quote_id"],
        source_amount=Money(row["source_amount"], row["source_currency"]),
        target_amount=Money(row["target_amount"], row["target_currency"]),
        fee=Money(row["fee"], row["source_currency"]),
        total_debit=Money(row["total_debit"], row["source_currency"]),
        rate=Decimal(row["rate"]),
        beneficiary=Beneficiary.from_json(details["beneficiary"]),
        purpose=details.get("purpose"),
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deadline_at=row["deadline_at"],
        attempts=row["attempts"],
        failure_code=row["failure_code"],
        failure_reason=row["failure_reason"],
        partner_reference=row["partner_reference"],
    )


def _row(txn: Transaction, request_hash: str, resume_after: float) -> tuple[Any, ...]:
    """A new transaction as a row of the table, its columns in their order."""
    row = {
        "id": txn.id,
        "reference_id": txn.reference_id,
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
        "next_attempt_at": txn.created_at + timedelta(seconds=resume_after),
        "deadline_at": txn.deadline_at,
        "created_at": txn.created_at,
        "updated_at": txn.updated_at,
    }
    return tuple(row.get(column) for column in _COLUMNS)


def _move_arguments(
    txn: Transaction, outcome: Outcome, at: datetime, moved: Transaction
) -> dict[str, Any]:
    """The arguments of `remit_move` for the move of `txn` to `moved`, but where it is due
    next and who leases it."""
    return {
        "txn_id": txn.id,
        "from": txn.status.value,
        "to": moved.status.value,
        "at": at,
        "failure_code": moved.failure_code,
        "failure_reason": moved.failure_reason,
        "partner_reference": moved.partner_reference,
        "reason": outcome.reason,
        **event_arguments(moved.status_changed(outcome.status, at)),
    }


class RemitRepository:
    def __init__(self, uow: UnitOfWork, *, resume_after_seconds: float) -> None:
        self._uow = uow
        self._resume_after = resume_after_seconds

    async def add_once(
        self, txn: Transaction, request_hash: str, reply: Reply
    ) -> Transaction | SavedResponse:
        candidate = txn
        for _ in range(_REFERENCE_DRAWS):
            statement = call_one_row(
                "remit_add_once",
                txn=_row(candidate, request_hash, self._resume_after),
                scope=reply.scope,
                status=reply.status,
                response=response_text(reply.body_for(candidate)),
                **event_arguments(candidate.status_changed(candidate.status, candidate.created_at)),
            )
            try:
                row = await self._uow.alone_row(*statement)
            except asyncpg.PostgresError as error:
                check_in_flight(error)
                if sqlstate(error) != REFERENCE_TAKEN:
                    raise
                candidate = replace(txn, reference_id=new_reference_id())
                continue
            if row["request_hash"] is not None:  # the key was taken before
                return first_response(row, request_hash)
            self._uow.announced()
            return candidate
        raise RuntimeError(f"no free reference after {_REFERENCE_DRAWS} draws")

    async def find(self, txn_id: uuid.UUID) -> Transaction | None:
        row = await (await self._uow.connection()).fetchrow(_BY_ID, txn_id)
        return None if row is None else _transaction(row)

    async def find_many(self, txn_ids: Sequence[uuid.UUID]) -> list[Transaction]:
        rows = await (await self._uow.connection()).fetch(_BY_IDS, list(txn_ids))
        return [_transaction(row) for row in rows]

    async def find_by_reference(self, reference_id: str) -> Transaction | None:
        row = await (await self._uow.connection()).fetchrow(_BY_REFERENCE, reference_id)
        return None if row is None else _transaction(row)

    async def history(self, txn_id: uuid.UUID) -> list[StatusChange]:
        rows = await (await self._uow.connection()).fetch(_HISTORY, txn_id)
        return [StatusChange(TxnStatus(r["status"]), r["created_at"], r["reason"]) for r in rows]

    async def page(self, query: TxnQuery) -> list[Transaction]:
        status = None if query.status is None else query.status.value
        rows = await (await self._uow.connection()).fetch(
            _PAGE, query.user_id, status, query.before, query.limit
        )
        return [_transaction(row) for row in rows]

    async def move(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
        reply: Reply | None = None,
    ) -> Transaction | None:
        moved = txn.after(outcome, at)
        saved: dict[str, Any] = {}
        if reply is not None:
            saved = {
                "scope": reply.scope,
                "owner": str(txn.user_id),
                "key": txn.idempotency_key,
                "status": reply.status,
                "response": response_text(reply.body_for(moved)),
            }
        final = outcome.status.final
        row = await self._uow.alone_row(
            *call(
                "remit_move",
                **_move_arguments(txn, outcome, at, moved),
                next_attempt_at=None if final else next_attempt_at,
                lease_until=None if final else lease_until,
                **saved,
            ),
            lock_order=txn.id,
        )
        if not row[0]:
            return None
        self._uow.announced()
        return moved

    async def move_all(
        self, moves: Sequence[tuple[Transaction, Outcome]], at: datetime
    ) -> list[Transaction]:
        for txn, outcome in moves:
            if not outcome.status.final:
                raise ValueError(f"{txn.reference_id}: {outcome.status} is not a final status")
        if not moves:
            return []
        ordered = sorted(moves, key=lambda move: move[0].id)  # rows locked in one order
        arguments = [
            _move_arguments(txn, outcome, at, txn.after(outcome, at)) for txn, outcome in ordered
        ]
        columns = (
            "txn_id",
            "from",
            "to",
            "failure_code",
            "failure_reason",
            "partner_reference",
            "reason",
            "event_id",
            "event_subject",
            "event_payload",
            "event_at",
        )
        rows = await self._uow.alone(
            _MOVE_ALL, *([move[name] for move in arguments] for name in columns), at
        )
        self._uow.announced()
        stored = {row["id"] for row in rows}
        return [txn.after(outcome, at) for txn, outcome in ordered if txn.id in stored]

    async def lease_due(self, now: datetime, until: datetime, limit: int) -> list[Transaction]:
        rows = await self._uow.alone(_LEASE_DUE, now, until, limit)
        return sorted((_transaction(row) for row in rows), key=lambda t: t.id)

    async def retry_later(self, txn_id: uuid.UUID, at: datetime) -> None:
        await self._uow.alone(_RETRY_LATER, txn_id, at)

    async def final_between(
        self, low: uuid.UUID, high: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[Transaction]:
        rows = await (await self._uow.connection()).fetch(_FINAL_BETWEEN, low, high, after, limit)
        return [_transaction(row) for row in rows]


def _mismatch(row: asyncpg.Record) -> Mismatch:
    currency = row["source_currency"]
    return Mismatch(
        id=row["id"],
        txn_id=row["txn_id"],
        reference_id=row["reference_id"],
        user_id=row["user_id"],
        total_debit=Money(row["total_debit"], currency),
        fee=Money(row["fee"], currency),
        our_status=TxnStatus(row["our_status"]),
        partner_status=row["partner_status"],
        partner_reason=row["partner_reason"],
        partner_reference=row["partner_reference"],
        found_at=row["found_at"],
        state=MismatchState(row["state"]),
        resolved_by=row["resolved_by"],
        resolved_at=row["resolved_at"],
        note=row["note"],
        journal_id=row["journal_id"],
    )


class MismatchRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def record(self, found: Sequence[Mismatch]) -> list[Mismatch]:
        if not found:
            return []
        conn = await self._uow.transaction()  # with the events and audit entries it announces
        rows = await conn.fetch(
            _RECORD_MISMATCHES,
            [m.id for m in found],
            [m.txn_id for m in found],
            [m.our_status.value for m in found],
            [m.partner_status for m in found],
            [m.partner_reason for m in found],
            [m.partner_reference for m in found],
            [m.found_at for m in found],
            [m.state.value for m in found],
        )
        added = {row["id"] for row in rows}
        return [m for m in found if m.id in added]

    async def find(self, mismatch_id: uuid.UUID) -> Mismatch | None:
        row = await (await self._uow.connection()).fetchrow(_MISMATCH_BY_ID, mismatch_id)
        return None if row is None else _mismatch(row)

    async def page(self, query: MismatchQuery) -> list[Mismatch]:
        state = None if query.state is None else query.state.value
        rows = await (await self._uow.connection()).fetch(
            _MISMATCH_PAGE, state, query.before, query.limit
        )
        return [_mismatch(row) for row in rows]

    async def move(
        self,
        mismatch_id: uuid.UUID,
        states: Sequence[MismatchState],
        to: MismatchState,
        *,
        resolved_by: uuid.UUID | None,
        resolved_at: datetime | None,
        note: str | None,
        journal_id: uuid.UUID | None = None,
    ) -> Mismatch | None:
        conn = await self._uow.transaction()  # with the audit entry it is recorded with
        row = await conn.fetchrow(
            _MOVE_MISMATCH,
            mismatch_id,
            [state.value for state in states],
            to.value,
            resolved_by,
            resolved_at,
            note,
            journal_id,
        )
        return None if row is None else _mismatch(row)


class RemitUnitOfWork(UnitOfWork):
    transactions: RemitRepository
    mismatches: MismatchRepository

    def __init__(self, db: Database, *, resume_after_seconds: float) -> None:
        super().__init__(db)
        self._resume_after = resume_after_seconds

    def bind(self) -> None:
        self.transactions = RemitRepository(self, resume_after_seconds=self._resume_after)
        self.mismatches = MismatchRepository(self)
