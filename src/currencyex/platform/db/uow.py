"""The SQL unit of work: one connection, one transaction, an outbox, repositories bound to it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.events import Event
from currencyex.platform.db.audit import SqlAuditLog
from currencyex.platform.db.engine import Database, insert_or_ignore_for
from currencyex.platform.db.idempotency import SqlIdempotency
from currencyex.platform.messaging.outbox import outbox_row, outbox_table, processed_events_table

_ADD_EVENT = outbox_table.insert()


@functools.cache
def _mark(dialect: str) -> Any:
    return (
        insert_or_ignore_for(dialect, processed_events_table)
        .on_conflict_do_nothing()
        .returning(processed_events_table.c.event_id)
    )


class SqlOutbox:
    def __init__(self, conn: AsyncConnection, on_add: Callable[[], None]) -> None:
        self._conn = conn
        self._on_add = on_add

    async def add(self, event: Event) -> None:
        await self._conn.execute(_ADD_EVENT, outbox_row(event))
        self._on_add()


class SqlUnitOfWork:
    """Subclasses bind their service's repositories to `self.connection` in `bind`."""

    connection: AsyncConnection
    outbox: SqlOutbox
    audit: SqlAuditLog
    idempotency: SqlIdempotency

    def __init__(self, db: Database) -> None:
        self._db = db
        self._done = False
        self._announces = False  # this transaction adds events to the outbox

    def bind(self, conn: AsyncConnection) -> None:
        """Create this service's repositories on the transaction's connection."""

    async def __aenter__(self) -> Self:
        self.connection = await self._db.engine.connect()
        await self.connection.begin()
        self.outbox = SqlOutbox(self.connection, self._announcing)
        self.audit = SqlAuditLog(self.connection)
        self.idempotency = SqlIdempotency(self.connection, self._announcing)
        self.bind(self.connection)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if not self._done:
                await self.connection.rollback()
        finally:
            await self.connection.close()

    async def commit(self) -> None:
        await self.connection.commit()
        self._done = True
        if self._announces:
            self._db.outbox_committed()

    def _announcing(self) -> None:
        self._announces = True

    async def rollback(self) -> None:
        await self.connection.rollback()
        self._done = True

    async def mark_processed(self, consumer: str, event_id: str) -> bool:
        # A mark made already writes nothing (and keeps the transaction usable); a concurrent
        # one waits for the other transaction and then writes nothing if it committed.
        marked = await self.connection.execute(
            _mark(self.connection.dialect.name),
            {"consumer": consumer, "event_id": event_id, "processed_at": datetime.now(UTC)},
        )
        return marked.first() is not None
