"""SQL for remittances: remit_transactions (with the beneficiary snapshot) and their status history.

A status change is a conditional UPDATE (`WHERE status = <the one read>`): of two workers or
requests moving one transaction, one wins and the other sees it already moved.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.money import Money
from currencyex.kernel.ports import IdempotentRequest, SavedResponse
from currencyex.platform.db.engine import Database, UtcDateTime, insert_or_ignore_for, metadata
from currencyex.platform.db.idempotency import response_text
from currencyex.platform.db.pg import PgUnitOfWork, event_args
from currencyex.platform.db.uow import SqlUnitOfWork
from currencyex.remit.domain import (
    Beneficiary,
    Outcome,
    Reply,
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
        failure_code=sa.bindparam("failure_code", type_=sa.Integer),
        failure_reason=sa.bindparam("failure_reason", type_=sa.String),
        partner_reference=sa.bindparam("partner_reference", type_=sa.String),
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
    """A transaction from its row: a SQLAlchemy row, or anything that maps column names (an
    asyncpg record)."""
    m = row._mapping if isinstance(row, sa.Row) else row
    details = m["metadata"]
    return Transaction(
        id=m["id"],
        reference_id=m["reference_id"],
        user_id=m["user_id"],
        status=TxnStatus(m["status"]),
        quote_id=m["quote_id"],
        source_amount=Money(m["source_amount"], m["source_currency"]),
        target_amount=Money(m["target_amount"], m["target_currency"]),
        fee=Money(m["fee"], m["source_currency"]),
        total_debit=Money(m["total_debit"], m["source_currency"]),
        rate=Decimal(m["rate"]),
        beneficiary=Beneficiary.from_json(details["beneficiary"]),
        purpose=details.get("purpose"),
        idempotency_key=m["idempotency_key"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deadline_at=m["deadline_at"],
        attempts=m["attempts"],
        failure_code=m["failure_code"],
        failure_reason=m["failure_reason"],
        partner_reference=m["partner_reference"],
    )


def _txn_row(txn: Transaction, request_hash: str, resume_after: float) -> dict[str, Any]:
    """The row of a new transaction."""
    return {
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


def _move_params(
    txn: Transaction,
    outcome: Outcome,
    at: datetime,
    next_attempt_at: datetime,
    lease_until: datetime | None,
) -> dict[str, Any]:
    moved = txn.after(outcome, at)
    return {
        "txn_id": txn.id,
        "from_status": txn.status.value,
        "to_status": moved.status.value,
        "at": at,
        "failure_code": moved.failure_code,
        "failure_reason": moved.failure_reason,
        "partner_reference": moved.partner_reference,
        "next_attempt_at": None if outcome.status.final else next_attempt_at,
        "lease_until": None if outcome.status.final else lease_until,
    }


class SqlRemitRepository:
    def __init__(self, conn: AsyncConnection, *, resume_after_seconds: float) -> None:
        self._conn = conn
        self._resume_after = resume_after_seconds

    async def add(self, txn: Transaction, request_hash: str) -> Transaction:
        insert = _insert_txn(self._conn.dialect.name)

        async def store(candidate: Transaction) -> Transaction | None:
            row = _txn_row(candidate, request_hash, self._resume_after)
            added = await self._conn.execute(insert, row)
            return candidate if added.first() is not None else None

        added = await _with_free_reference(txn, store)
        await self._conn.execute(
            _INSERT_HISTORY,
            {
                "txn_id": added.id,
                "status": added.status.value,
                "reason": None,
                "created_at": added.created_at,
            },
        )
        return added

    async def find(self, txn_id: uuid.UUID) -> Transaction | None:
        row = (await self._conn.execute(_BY_ID, {"txn_id": txn_id})).first()
        return None if row is None else _transaction(row)

    async def find_many(self, txn_ids: Sequence[uuid.UUID]) -> list[Transaction]:
        rows = await self._conn.execute(sa.select(transactions).where(_T.id.in_(txn_ids)))
        return [_transaction(row) for row in rows]

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
        params = _move_params(txn, outcome, at, next_attempt_at, lease_until)
        row = (await self._conn.execute(_MOVE, params)).first()
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


_Stored = TypeVar("_Stored")


async def _with_free_reference(
    txn: Transaction, store: Callable[[Transaction], Awaitable[_Stored | None]]
) -> _Stored:
    """Store a new transaction as it is, or, while `store` finds its reference taken (None),
    under a freshly drawn one; what `store` gave back."""
    candidate = txn
    for _ in range(_REFERENCE_DRAWS):
        stored = await store(candidate)
        if stored is not None:
            return stored
        candidate = replace(txn, reference_id=new_reference_id())
    raise RuntimeError(f"no free reference after {_REFERENCE_DRAWS} draws")


class SqlRemitUnitOfWork(SqlUnitOfWork):
    transactions: SqlRemitRepository

    def __init__(self, db: Database, *, resume_after_seconds: float) -> None:
        super().__init__(db)
        self._resume_after = resume_after_seconds

    def bind(self, conn: AsyncConnection) -> None:
        self.transactions = SqlRemitRepository(conn, resume_after_seconds=self._resume_after)

    async def add_once(
        self, txn: Transaction, request: IdempotentRequest, reply: Reply
    ) -> Transaction | SavedResponse:
        owner = str(txn.user_id)
        saved = await self.idempotency.claim(reply.scope, owner, request.key, request.fingerprint)
        if saved is not None:
            return saved
        added = await self.transactions.add(txn, request.fingerprint)
        await self.idempotency.save(
            reply.scope,
            owner,
            request.key,
            reply.status,
            reply.body_for(added),
            announce=added.status_changed(added.status, added.created_at),
        )
        await self.commit()
        return added

    async def record_move(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
        reply: Reply | None = None,
    ) -> Transaction | None:
        moved = await self._record(
            txn, outcome, at, next_attempt_at=next_attempt_at, lease_until=lease_until, reply=reply
        )
        if moved is not None:
            await self.commit()
        return moved

    async def record_moves(
        self, moves: Sequence[tuple[Transaction, Outcome]], at: datetime
    ) -> list[Transaction]:
        _check_final(moves)
        done = []
        for txn, outcome in moves:
            moved = await self._record(txn, outcome, at, next_attempt_at=at)
            if moved is not None:
                done.append(moved)
        await self.commit()
        return done

    async def _record(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
        reply: Reply | None = None,
    ) -> Transaction | None:
        """A move with its event and, with `reply`, the send's saved response; not committed."""
        moved = await self.transactions.move(
            txn, outcome, at, next_attempt_at=next_attempt_at, lease_until=lease_until
        )
        if moved is None:
            return None
        announce = moved.status_changed(outcome.status, at)
        if reply is None:
            await self.outbox.add(announce)
        else:
            await self.idempotency.save(
                reply.scope,
                str(moved.user_id),
                moved.idempotency_key,
                reply.status,
                reply.body_for(moved),
                announce=announce,
            )
        return moved


def _check_final(moves: Sequence[tuple[Transaction, Outcome]]) -> None:
    for txn, outcome in moves:
        if not outcome.status.final:
            raise ValueError(f"{txn.reference_id}: {outcome.status} is not a final status")


# The same repository on a bare asyncpg connection (platform/pg.py), for PostgreSQL. A new
# transaction and a status move each write their history row in the same statement.
_PG_COLUMNS = ", ".join(column.name for column in transactions.columns)
_N = len(transactions.columns)
_PG_ADD = f"""
WITH added AS (
    INSERT INTO remit_transactions ({_PG_COLUMNS})
    VALUES ({", ".join(f"${n}" for n in range(1, _N + 1))})
    ON CONFLICT (reference_id) DO NOTHING
    RETURNING id, status, created_at
), history AS (
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    SELECT id, status, NULL, created_at FROM added
)
SELECT id FROM added
"""  # noqa: S608 (column names and placeholders only)
# A move, its history row and, when given, its event ($16-$19) and the send's saved response
# ($11-$15): written only if the transaction moved. One row: the id, null if it did not move.
_PG_MOVE = """
WITH moved AS (
    UPDATE remit_transactions SET
        status = $3,
        updated_at = $4,
        failure_code = $5,
        failure_reason = $6,
        partner_reference = $7,
        next_attempt_at = $8,
        lease_until = $9
    WHERE id = $1 AND status = $2
    RETURNING id, status, updated_at
), history AS (
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    SELECT id, status, $10, updated_at FROM moved
), saved AS (
    UPDATE idempotency_keys SET status_code = $11, response = $12
    WHERE scope = $13 AND owner = $14 AND key = $15 AND EXISTS (SELECT FROM moved)
), announced AS (
    INSERT INTO outbox (id, subject, payload, created_at)
    SELECT $16::varchar, $17::varchar, $18::text, $19::timestamptz FROM moved
    WHERE $16::varchar IS NOT NULL
)
SELECT (SELECT id FROM moved) AS id
"""
# Moves to final statuses, one per row of the arrays, each with its history row and event:
# one statement, so all of them are kept or none.
_PG_MOVE_ALL = """
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::varchar[], $3::varchar[], $4::int[], $5::varchar[], $6::varchar[],
        $7::varchar[], $8::varchar[], $9::varchar[], $10::text[], $11::timestamptz[]
    ) AS i(id, from_status, to_status, failure_code, failure_reason, partner_reference,
        reason, event_id, subject, payload, event_at)
), moved AS (
    UPDATE remit_transactions AS t SET
        status = i.to_status,
        updated_at = $12,
        failure_code = i.failure_code,
        failure_reason = i.failure_reason,
        partner_reference = i.partner_reference,
        next_attempt_at = NULL,
        lease_until = NULL
    FROM input AS i
    WHERE t.id = i.id AND t.status = i.from_status
    RETURNING t.id
), history AS (
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    SELECT i.id, i.to_status, i.reason, $12 FROM input AS i JOIN moved USING (id)
), announced AS (
    INSERT INTO outbox (id, subject, payload, created_at)
    SELECT i.event_id, i.subject, i.payload, i.event_at FROM input AS i JOIN moved USING (id)
)
SELECT id FROM moved
"""
_NOTHING_SAVED: tuple[Any, ...] = (None,) * 5
_NOTHING_ANNOUNCED: tuple[Any, ...] = (None,) * 4
# A new transaction with its history row, its key claimed with the reply saved ($N+1-$N+6),
# and its event ($N+7-$N+10), N being the number of columns. Nothing is written when the
# user's key or the reference is taken already (the unique indexes); a concurrent send with
# the same key waits here for the first one to end. One row: the id, null if nothing was added.
_PG_ADD_ONCE = f"""
WITH added AS (
    INSERT INTO remit_transactions ({_PG_COLUMNS})
    VALUES ({", ".join(f"${n}" for n in range(1, _N + 1))})
    ON CONFLICT DO NOTHING
    RETURNING id, status, created_at
), history AS (
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    SELECT id, status, NULL, created_at FROM added
), claimed AS (
    INSERT INTO idempotency_keys
        (scope, owner, key, request_hash, status_code, response, created_at)
    SELECT ${_N + 1}, ${_N + 2}, ${_N + 3}, ${_N + 4}, ${_N + 5}, ${_N + 6}, created_at FROM added
), announced AS (
    INSERT INTO outbox (id, subject, payload, created_at)
    SELECT ${_N + 7}, ${_N + 8}, ${_N + 9}, ${_N + 10} FROM added
)
SELECT (SELECT id FROM added) AS id
"""  # noqa: S608 (column names and placeholders only)
_PG_BY_ID = f"SELECT {_PG_COLUMNS} FROM remit_transactions WHERE id = $1"  # noqa: S608
_PG_BY_IDS = f"SELECT {_PG_COLUMNS} FROM remit_transactions WHERE id = ANY($1::uuid[])"  # noqa: S608
_PG_BY_REFERENCE = f"SELECT {_PG_COLUMNS} FROM remit_transactions WHERE reference_id = $1"  # noqa: S608
_PG_HISTORY = """
SELECT status, reason, created_at FROM remit_status_history WHERE txn_id = $1 ORDER BY id
"""
_PG_LEASE_DUE = f"""
UPDATE remit_transactions SET lease_until = $2, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM remit_transactions
    WHERE status IN ('CREATED', 'PROCESSING') AND next_attempt_at <= $1
        AND (lease_until IS NULL OR lease_until <= $1)
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING {_PG_COLUMNS}
"""  # noqa: S608
_PG_RETRY_LATER = """
UPDATE remit_transactions SET next_attempt_at = $2, lease_until = NULL WHERE id = $1
"""


class PgRemitRepository:
    """SqlRemitRepository on a bare asyncpg connection."""

    def __init__(self, uow: PgUnitOfWork, *, resume_after_seconds: float) -> None:
        self._uow = uow
        self._resume_after = resume_after_seconds

    async def add(self, txn: Transaction, request_hash: str) -> Transaction:
        conn = await self._uow.transaction()

        async def store(candidate: Transaction) -> Transaction | None:
            args = _pg_txn_args(candidate, request_hash, self._resume_after)
            return candidate if await conn.fetchval(_PG_ADD, *args) is not None else None

        return await _with_free_reference(txn, store)

    async def find(self, txn_id: uuid.UUID) -> Transaction | None:
        row = await (await self._uow.reading()).fetchrow(_PG_BY_ID, txn_id)
        return None if row is None else _transaction(row)

    async def find_many(self, txn_ids: Sequence[uuid.UUID]) -> list[Transaction]:
        rows = await (await self._uow.reading()).fetch(_PG_BY_IDS, list(txn_ids))
        return [_transaction(row) for row in rows]

    async def find_by_reference(self, reference_id: str) -> Transaction | None:
        row = await (await self._uow.reading()).fetchrow(_PG_BY_REFERENCE, reference_id)
        return None if row is None else _transaction(row)

    async def history(self, txn_id: uuid.UUID) -> list[StatusChange]:
        rows = await (await self._uow.reading()).fetch(_PG_HISTORY, txn_id)
        return [StatusChange(TxnStatus(r["status"]), r["created_at"], r["reason"]) for r in rows]

    async def page(self, query: TxnQuery) -> list[Transaction]:
        conditions: list[str] = ["user_id = $1"]
        args: list[Any] = [query.user_id]
        if query.status is not None:
            args.append(query.status.value)
            conditions.append(f"status = ${len(args)}")
        if query.before is not None:
            args.append(query.before)
            conditions.append(f"id < ${len(args)}")
        args.append(query.limit)
        sql = (
            f"SELECT {_PG_COLUMNS} FROM remit_transactions WHERE {' AND '.join(conditions)}"  # noqa: S608
            f" ORDER BY id DESC LIMIT ${len(args)}"
        )
        return [_transaction(row) for row in await (await self._uow.reading()).fetch(sql, *args)]

    async def move(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
    ) -> Transaction | None:
        conn = await self._uow.transaction()
        args = _pg_move_args(txn, outcome, at, next_attempt_at, lease_until)
        moved = await conn.fetchval(_PG_MOVE, *args, *_NOTHING_SAVED, *_NOTHING_ANNOUNCED)
        return None if moved is None else txn.after(outcome, at)

    async def lease_due(self, now: datetime, until: datetime, limit: int) -> list[Transaction]:
        rows = await (await self._uow.transaction()).fetch(_PG_LEASE_DUE, now, until, limit)
        return sorted((_transaction(row) for row in rows), key=lambda t: t.id)

    async def retry_later(self, txn_id: uuid.UUID, at: datetime) -> None:
        await (await self._uow.transaction()).execute(_PG_RETRY_LATER, txn_id, at)


def _pg_txn_args(txn: Transaction, request_hash: str, resume_after: float) -> list[Any]:
    """The row of a new transaction as statement arguments, in column order."""
    row = _txn_row(txn, request_hash, resume_after)
    return [row.get(column.name) for column in transactions.columns]


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of statement arguments as columns: the arrays of an unnest."""
    return [list(column) for column in zip(*rows, strict=True)]


def _pg_move_args(
    txn: Transaction,
    outcome: Outcome,
    at: datetime,
    next_attempt_at: datetime,
    lease_until: datetime | None,
) -> tuple[Any, ...]:
    """The arguments of _PG_MOVE up to the history row's reason ($1-$10)."""
    p = _move_params(txn, outcome, at, next_attempt_at, lease_until)
    return (
        p["txn_id"],
        p["from_status"],
        p["to_status"],
        p["at"],
        p["failure_code"],
        p["failure_reason"],
        p["partner_reference"],
        p["next_attempt_at"],
        p["lease_until"],
        outcome.reason,
    )


class PgRemitUnitOfWork(PgUnitOfWork):
    transactions: PgRemitRepository

    def __init__(self, db: Database, *, resume_after_seconds: float) -> None:
        super().__init__(db)
        self._resume_after = resume_after_seconds

    def bind(self) -> None:
        self.transactions = PgRemitRepository(self, resume_after_seconds=self._resume_after)

    async def record_move(
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
        saved = _NOTHING_SAVED
        if reply is not None:
            body = reply.body_for(moved)
            key = (reply.scope, str(txn.user_id), txn.idempotency_key)
            saved = (reply.status, response_text(body), *key)
        row = await self.alone_row(
            _PG_MOVE,
            *_pg_move_args(txn, outcome, at, next_attempt_at, lease_until),
            *saved,
            *event_args(moved.status_changed(outcome.status, at)),
            announces=True,
        )
        await self.commit()
        return None if row["id"] is None else moved

    async def record_moves(
        self, moves: Sequence[tuple[Transaction, Outcome]], at: datetime
    ) -> list[Transaction]:
        _check_final(moves)
        if not moves:
            await self.commit()
            return []
        after = [txn.after(outcome, at) for txn, outcome in moves]
        # Column by column: of each move (id, from, to, at, code, reason, partner, next, lease,
        # history reason), of each event (id, subject, payload, created_at).
        ids, from_, to, _, codes, reasons, partners, _, _, notes = _columns(
            _pg_move_args(txn, outcome, at, at, None) for txn, outcome in moves
        )
        events = _columns(event_args(txn.status_changed(txn.status, at)) for txn in after)
        rows = await self.autocommit(
            _PG_MOVE_ALL,
            ids,
            from_,
            to,
            codes,
            reasons,
            partners,
            notes,
            *events,
            at,
            announces=True,
        )
        stored = {row["id"] for row in rows}
        return [txn for txn in after if txn.id in stored]

    async def add_once(
        self, txn: Transaction, request: IdempotentRequest, reply: Reply
    ) -> Transaction | SavedResponse:
        owner = str(txn.user_id)
        claim = (reply.scope, owner, request.key, request.fingerprint, reply.status)

        async def store(candidate: Transaction) -> Transaction | SavedResponse | None:
            body = reply.body_for(candidate)
            added = await self.alone_row(
                _PG_ADD_ONCE,
                *_pg_txn_args(candidate, request.fingerprint, self._resume_after),
                *claim,
                response_text(body),
                *event_args(candidate.status_changed(candidate.status, candidate.created_at)),
                announces=True,
            )
            if added["id"] is not None:
                return candidate
            # The key went through before, or else the reference is taken: drawn again.
            return await self.idempotency.find(reply.scope, owner, request.key, request.fingerprint)

        stored: Transaction | SavedResponse = await _with_free_reference(txn, store)
        await self.commit()
        return stored
