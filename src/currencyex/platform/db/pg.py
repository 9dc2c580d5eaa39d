"""PostgreSQL through asyncpg alone, for the statements on the money path.

Through SQLAlchemy's asyncio engine a statement costs this process more than twice the CPU it
costs through asyncpg directly, and a transaction of three statements close to twice as much
(`bench/statements.py` prints both). So on PostgreSQL the units of work that move money run
here: deposits, exchanges, holds and their settlement, remittance status changes, and the
consumers' marks and audit rows. Reads, and every statement on SQLite, stay on SQLAlchemy.
Both kinds write the same tables with the same statements and are held to the same contract
tests (tests/contract).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Self

import asyncpg

from currencyex.kernel.events import Event
from currencyex.kernel.ports import AuditEntry, SavedResponse
from currencyex.platform.db.audit import audit_row
from currencyex.platform.db.driver_pool import INTERRUPTED, one_row
from currencyex.platform.db.engine import Database
from currencyex.platform.db.idempotency import PENDING, first_response, response_text
from currencyex.platform.messaging.outbox import outbox_row

_CLAIM = """
INSERT INTO idempotency_keys (scope, owner, key, request_hash, status_code, response, created_at)
VALUES ($1, $2, $3, $4, $5, '', $6)
ON CONFLICT DO NOTHING
RETURNING key
"""
_FIND = """
SELECT request_hash, status_code, response FROM idempotency_keys
WHERE scope = $1 AND owner = $2 AND key = $3
"""
_SAVE = """
UPDATE idempotency_keys SET status_code = $4, response = $5
WHERE scope = $1 AND owner = $2 AND key = $3
"""
_ADD_EVENT = "INSERT INTO outbox (id, subject, payload, created_at) VALUES ($1, $2, $3, $4)"
# Both writes in one round trip: the money-moving requests end this way.
_SAVE_AND_ANNOUNCE = """
WITH saved AS (
    UPDATE idempotency_keys SET status_code = $4, response = $5
    WHERE scope = $1 AND owner = $2 AND key = $3
)
INSERT INTO outbox (id, subject, payload, created_at) VALUES ($6, $7, $8, $9)
"""


def event_args(event: Event) -> tuple[Any, ...]:
    """The outbox row of `event` as statement arguments: id, subject, payload, created_at."""
    row = outbox_row(event)
    return row["id"], row["subject"], row["payload"], row["created_at"]


class PgOutbox:
    def __init__(self, uow: PgUnitOfWork) -> None:
        self._uow = uow

    async def add(self, event: Event) -> None:
        self._uow.write(_ADD_EVENT, *event_args(event))
        self._uow.announced()


class PgIdempotency:
    """The idempotency records of platform/idempotency.py, written by asyncpg."""

    def __init__(self, uow: PgUnitOfWork) -> None:
        self._uow = uow

    async def claim(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        conn = await self._uow.transaction()
        claimed = await conn.fetchval(
            _CLAIM, scope, owner, key, request_hash, PENDING, datetime.now(UTC)
        )
        if claimed is not None:
            return None
        saved = await self.find(scope, owner, key, request_hash)
        assert saved is not None, "a key that could not be claimed is taken"
        return saved

    async def find(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """The response saved under the key, claiming nothing; 1007 for another request."""
        row = await (await self._uow.reading()).fetchrow(_FIND, scope, owner, key)
        return None if row is None else first_response(row, request_hash)

    async def save(
        self,
        scope: str,
        owner: str,
        key: str,
        status_code: int,
        body: dict[str, Any],
        *,
        announce: Event | None = None,
    ) -> None:
        saved = (scope, owner, key, status_code, response_text(body))
        if announce is None:
            self._uow.write(_SAVE, *saved)
            return
        self._uow.write(_SAVE_AND_ANNOUNCE, *saved, *event_args(announce))
        self._uow.announced()


_RECORD = """
INSERT INTO audit_log (id, actor_id, action, subject_type, subject_id, detail, at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO NOTHING
"""
_MARK = """
INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING event_id
"""


class PgAuditLog:
    def __init__(self, uow: PgUnitOfWork) -> None:
        self._uow = uow

    async def record(self, entry: AuditEntry) -> None:
        row = audit_row(entry)
        self._uow.write(
            _RECORD,
            row["id"],
            row["actor_id"],
            row["action"],
            row["subject_type"],
            row["subject_id"],
            row["detail"],
            row["at"],
        )


class PgUnitOfWork:
    """One PostgreSQL transaction on a bare asyncpg connection; leaving the block without
    `commit()` rolls back. Subclasses bind their repositories to the unit in `bind`.

    The connection is lent at the first statement that needs one, and the transaction begins
    with the first statement that asks for it (`transaction()`), so a unit whose only work is
    one self-contained statement can run it without BEGIN and COMMIT (`autocommit`), and reads
    before it need neither (`reading()`). Writes whose result nobody
    waits for (outbox events, saved responses, audit entries) are held (`write`) until the next
    statement or the commit, and sent in order then, a run of the same statement in one round
    trip; a unit whose only work is such a run commits it without BEGIN and COMMIT too. An
    error in such a write surfaces from the statement or the commit that sent it. A unit's first
    statement, when it is self-contained and returns one row (`alone_row`), may go to the
    server together with other units' (`Database.batched_row`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: asyncpg.Connection | None = None  # lent at the first use
        self._transaction: Any = None  # an asyncpg Transaction, once begun
        self._done = False
        self._announces = False  # this transaction adds events to the outbox
        self._held: list[tuple[str, tuple[Any, ...]]] = []  # writes not sent yet
        self.idempotency = PgIdempotency(self)
        self.outbox = PgOutbox(self)
        self.audit = PgAuditLog(self)

    def bind(self) -> None:
        """Create this service's repositories on the unit."""

    async def __aenter__(self) -> Self:
        self.bind()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A unit cut off mid-statement leaves its connection mid-exchange: closed, not reused
        # (the server rolls back what it was doing). `exc` is (type, error, traceback).
        if self._connection is None:
            return
        reusable = not isinstance(exc[1], INTERRUPTED)
        try:
            if reusable and self._transaction is not None and not self._done:
                await self._transaction.rollback()
        except BaseException:
            reusable = False
            raise
        finally:
            self._db.give_back(self._connection, reusable=reusable)

    async def _lent(self) -> asyncpg.Connection:
        if self._done:
            raise RuntimeError("this unit of work has ended")
        if self._connection is None:
            self._connection = await self._db.lend()
        return self._connection

    async def transaction(self) -> asyncpg.Connection:
        """The connection, inside this unit's transaction (begun now if it has not been)."""
        conn = await self._lent()
        if self._transaction is None:
            self._transaction = conn.transaction()
            await self._transaction.start()
        await self._send_held()
        return conn

    async def reading(self) -> asyncpg.Connection:
        """The connection for a read. Inside this unit's transaction when one has begun or
        writes are held (the read sees them); else on its own, without BEGIN and ROLLBACK:
        under READ COMMITTED each statement takes its own snapshot either way. A read that
        locks rows (FOR UPDATE) takes `transaction()` instead."""
        if self._transaction is None and not self._held:
            return await self._lent()
        return await self.transaction()

    def write(self, query: str, *args: Any) -> None:
        """Hold a write whose result nobody waits for; it goes out before the next statement,
        or with the commit."""
        if self._done:
            raise RuntimeError("this unit of work has ended")
        self._held.append((query, args))

    async def _send_held(self) -> None:
        held, self._held = self._held, []
        for query, many in _runs(held):
            await self._send(query, many)

    async def _send(self, query: str, many: list[tuple[Any, ...]]) -> None:
        """One statement, or a run of the same statement in one round trip (atomic on its own:
        asyncpg's executemany sends a single Sync)."""
        conn = await self._lent()
        if len(many) == 1:
            await conn.execute(query, *many[0])
        else:
            await conn.executemany(query, many)

    async def alone(self, query: str, *args: Any, announces: bool = False) -> list[Any]:
        """Run one self-contained statement now: in its own implicit transaction when this unit
        has begun none and holds no writes, else inside the unit's transaction. Two such
        statements in a unit that begins none are kept or lost each on its own."""
        conn = await self.reading()  # the same rule as a read's
        if announces:
            self.announced()
        rows: list[Any] = await conn.fetch(query, *args)
        return rows

    async def alone_row(
        self, query: str, *args: Any, announces: bool = False, lock_order: Any = None
    ) -> asyncpg.Record:
        """`alone` for a statement that returns exactly one row: that row. As the unit's first
        statement it goes to the server with the same statement of other units made in this
        turn of the event loop, in one implicit transaction, ordered by `lock_order` (the key
        of the row it locks, if it locks one that others lock too; `Database.batched_row`); it
        is committed even if this unit's caller stops waiting for it."""
        if self._done:
            raise RuntimeError("this unit of work has ended")
        if announces:
            self.announced()
        if self._connection is None and not self._held:  # no connection: no transaction yet
            return await self._db.batched_row(query, args, lock_order=lock_order)
        return await one_row(await self.reading(), query, args)

    async def autocommit(self, query: str, *args: Any, announces: bool = False) -> list[Any]:
        """Run one statement as the whole of this unit, which it ends: in its own implicit
        transaction, or as the last statement of the one begun already, then committed."""
        rows = await self.alone(query, *args, announces=announces)
        await self.commit()
        return rows

    async def commit(self) -> None:
        runs = _runs(self._held) if self._transaction is None else []
        if len(runs) == 1:  # one statement, or a run of one: a transaction of its own
            self._held.clear()
            await self._send(*runs[0])
        elif self._held:
            await self.transaction()
        if self._transaction is not None:
            await self._transaction.commit()
        self._done = True
        if self._announces:
            self._db.outbox_committed()

    async def rollback(self) -> None:
        self._held.clear()
        if self._transaction is not None:
            await self._transaction.rollback()
        self._done = True

    def announced(self) -> None:
        self._announces = True

    async def mark_processed(self, consumer: str, event_id: str) -> bool:
        conn = await self.transaction()
        return await conn.fetchval(_MARK, consumer, event_id, datetime.now(UTC)) is not None


def _runs(held: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Held writes in order, each run of one statement together with its arguments."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for query, args in held:
        if runs and runs[-1][0] == query:
            runs[-1][1].append(args)
        else:
            runs.append((query, [args]))
    return runs
