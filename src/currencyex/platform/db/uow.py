"""The unit of work: one PostgreSQL transaction on a pooled connection, begun only when needed.

It commits, rolls back and collects what the transaction announces (outbox events) and
records (audit entries); the use cases live in the services, the SQL in the repositories.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Self

import asyncpg

from currencyex.kernel.events import Event
from currencyex.kernel.ports import AuditEntry, SavedResponse
from currencyex.platform.db.audit import write_audit_entries
from currencyex.platform.db.calls import call
from currencyex.platform.db.database import Database
from currencyex.platform.db.idempotency import FIND, PRUNE, check_in_flight, first_response
from currencyex.platform.db.outbox import write_events

_MARK = """
INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING event_id
"""


class UnitOfWork:
    """One transaction; leaving the block without `commit()` rolls back. Subclasses bind
    their service's repositories to the unit in `bind`.

    The connection is borrowed at the first statement, and the transaction begins when a
    statement asks for it (`transaction()`): reads before it go out without BEGIN, and a unit
    whose one write is a self-contained statement (`alone`) runs it without BEGIN and COMMIT.
    Events (`outbox.add`) and audit entries (`audit.record`) are collected and written at the
    commit, one statement each, inside the transaction; a unit that began none and has only
    one of the two to write writes it on its own.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: asyncpg.Connection | None = None  # borrowed at the first statement
        self._transaction: Any = None  # an asyncpg Transaction, once begun
        self._ended = False
        self._autocommitted = False  # a statement of this unit was kept on its own
        self._announced = False  # a statement of this unit added outbox events itself
        self._events: list[Event] = []
        self._audit_entries: list[AuditEntry] = []
        self.outbox = _Outbox(self)
        self.audit = _AuditLog(self)
        self.idempotency = _Idempotency(self)

    def bind(self) -> None:
        """Create this service's repositories on the unit."""

    async def __aenter__(self) -> Self:
        self.bind()
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._connection = self._connection, None
        if conn is None:
            return
        try:
            if self._transaction is not None and not self._ended:
                await self._transaction.rollback()
        except Exception:
            conn.terminate()  # cut off mid-statement, say: the server rolls back on its own
        finally:
            await self._db.release(conn)

    async def connection(self) -> asyncpg.Connection:
        """The connection, for reads: inside the transaction when one has begun, else on its
        own (under READ COMMITTED each statement takes its own snapshot either way). A read
        that locks rows (FOR UPDATE) takes `transaction()` instead."""
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        if self._connection is None:
            self._connection = await self._db.acquire()
        return self._connection

    async def transaction(self) -> asyncpg.Connection:
        """The connection, inside this unit's transaction (begun now if it has not been)."""
        conn = await self.connection()
        if self._transaction is None:
            self._transaction = conn.transaction()
            await self._transaction.start()
        return conn

    async def alone(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run a self-contained statement (one that is whole on its own, like a call of a
        money function): without BEGIN and COMMIT when this unit has begun no transaction and
        collected nothing, kept then whatever the unit does next; else inside the transaction."""
        if self._transaction is None and not self._events and not self._audit_entries:
            conn = await self.connection()
            self._autocommitted = True
        else:
            conn = await self.transaction()
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows

    def announced(self) -> None:
        """A statement of this unit added outbox events itself (a money function's call): the
        relay is told at the commit."""
        self._announced = True

    async def alone_row(self, query: str, *args: Any, lock_order: Any = None) -> asyncpg.Record:
        """`alone` for a statement that returns exactly one row: that row. As the unit's first
        statement it goes to the server with the same statement of other units made in this
        turn of the event loop, in one implicit transaction, ordered by `lock_order` (the key
        of the row it locks, if it locks one that others lock too; `Database.batched_row`); it
        is kept even if this unit's caller stops waiting for it."""
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        if self._connection is None and not self._events and not self._audit_entries:
            self._autocommitted = True
            return await self._db.batched_row(query, args, lock_order=lock_order)
        rows = await self.alone(query, *args)
        if len(rows) != 1:
            raise RuntimeError(f"a one-row statement returned {len(rows)} rows")
        return rows[0]

    def _collect(self) -> None:
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        if self._autocommitted and self._transaction is None:
            # What it announces or records would be written apart from what it did.
            raise RuntimeError("a unit whose statement was kept on its own collects nothing")

    async def commit(self) -> None:
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        writes: list[tuple[Any, ...]] = []
        if self._events:
            writes.append(write_events(self._events))
        if self._audit_entries:
            writes.append(write_audit_entries(self._audit_entries))
        if len(writes) == 1 and self._transaction is None:
            await (await self.connection()).execute(*writes[0])
        elif writes:
            conn = await self.transaction()
            for statement in writes:
                await conn.execute(*statement)
        if self._transaction is not None:
            await self._transaction.commit()
        self._ended = True
        if self._events or self._announced:
            self._db.outbox_committed()

    async def rollback(self) -> None:
        self._events.clear()
        self._audit_entries.clear()
        if self._transaction is not None and not self._ended:
            await self._transaction.rollback()
        self._ended = True

    async def mark_processed(self, consumer: str, event_id: str) -> bool:
        # A mark made already writes nothing (and keeps the transaction usable); a concurrent
        # one waits for the other transaction and then writes nothing if it committed.
        conn = await self.transaction()
        return await conn.fetchval(_MARK, consumer, event_id, datetime.now(UTC)) is not None


class _Outbox:
    """The unit's events, written to the outbox at its commit."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, event: Event) -> None:
        self._uow._collect()
        self._uow._events.append(event)


class _AuditLog:
    """The unit's audit entries, written at its commit."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def record(self, entry: AuditEntry) -> None:
        self._uow._collect()
        self._uow._audit_entries.append(entry)


class _Idempotency:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def claim(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """Claim `key` for this request in the unit's transaction: None when it is new (go
        ahead), else the first response; 1007 for another request, 1009 (at once) while a
        request holding the key is still running."""
        conn = await self._uow.transaction()
        try:
            row = await conn.fetchrow(
                *call(
                    "idempotency_claim",
                    scope=scope,
                    owner=owner,
                    key=key,
                    request_hash=request_hash,
                    created_at=datetime.now(UTC),
                )
            )
        except asyncpg.PostgresError as error:
            check_in_flight(error)
            raise
        return None if row is None else first_response(row, request_hash)

    async def find(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """The first response to `key` without claiming it: None when no request has claimed
        it (or its claim is not committed yet); 1007 for another request, 1009 while the
        request holding it has not answered."""
        row = await (await self._uow.connection()).fetchrow(FIND, scope, owner, key)
        return None if row is None else first_response(row, request_hash)

    async def prune(self, before: datetime) -> int:
        """Forget the keys claimed before `before`: each is then free for a new request. How
        many were forgotten."""
        rows = await self._uow.alone(PRUNE, before)
        return int(rows[0][0])
