"""One-row statements of concurrent units sent together (`UnitOfWork.alone_row`,
platform/db/batches.py's StatementBatches), on real PostgreSQL.

What the money path relies on: each caller gets its own row; the statements made in one turn of
the event loop share one round trip and one transaction; one statement's error is its caller's
alone and the others are kept; after an interruption every caller of the batch hears of it and
the pool lends live connections only; a batch runs its statements in their lock order; a
statement that is not the unit's first runs in the unit. (That holds and captures sent in
batches never deadlock is tested with the ledger, tests/contract/test_ledger_contract.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from currencyex.platform.db.database import Database
from currencyex.platform.db.uow import UnitOfWork

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url)
    try:
        yield database
    finally:
        await database.close()


@pytest_asyncio.fixture
async def table(db: Database) -> AsyncIterator[str]:
    """A table of this test: numbers, none of them negative."""
    name = f"cx_batch_{uuid.uuid4().hex[:12]}"
    async with db.connection() as conn:
        await conn.execute(f"CREATE TABLE {name} (n int PRIMARY KEY CHECK (n >= 0))")
    try:
        yield name
    finally:
        async with db.connection() as conn:
            await conn.execute(f"DROP TABLE {name}")


def _insert(table: str) -> str:
    # One row whatever happens: the number, null when it was there already.
    return f"""
    WITH added AS (INSERT INTO {table} (n) VALUES ($1) ON CONFLICT DO NOTHING RETURNING n)
    SELECT (SELECT n FROM added) AS n, txid_current() AS txid
    """  # noqa: S608 (a table name of the test's own)


async def _alone(db: Database, query: str, *args: Any, lock_order: Any = None) -> asyncpg.Record:
    async with UnitOfWork(db) as uow:
        row = await uow.alone_row(query, *args, lock_order=lock_order)
        await uow.commit()
        return row


async def _kept(db: Database, table: str) -> list[int]:
    async with db.connection() as conn:
        return [r["n"] for r in await conn.fetch(f"SELECT n FROM {table} ORDER BY n")]  # noqa: S608


async def test_statements_of_one_turn_share_a_round_trip_and_each_caller_gets_its_row(
    db: Database, table: str
) -> None:
    rows = await asyncio.gather(*(_alone(db, _insert(table), n) for n in range(8)))
    assert [row["n"] for row in rows] == list(range(8))
    assert len({row["txid"] for row in rows}) == 1  # one implicit transaction
    assert await _kept(db, table) == list(range(8))
    # Statements of later turns go in transactions of their own.
    first = await _alone(db, _insert(table), 8)
    again = await _alone(db, _insert(table), 8)
    assert (first["n"], again["n"]) == (8, None)
    assert first["txid"] != again["txid"]


async def test_one_statements_error_is_its_callers_alone_and_the_others_are_kept(
    db: Database, table: str
) -> None:
    rows = await asyncio.gather(
        *(_alone(db, _insert(table), n) for n in (1, 2, -3, 4)), return_exceptions=True
    )
    assert isinstance(rows[2], asyncpg.CheckViolationError)
    kept = [row for row in rows if not isinstance(row, BaseException)]
    assert [row["n"] for row in kept] == [1, 2, 4]
    assert len({row["txid"] for row in kept}) == 3  # run again each on its own
    assert await _kept(db, table) == [1, 2, 4]


async def test_a_statement_that_returns_no_row_is_an_error_for_its_callers(
    db: Database, table: str
) -> None:
    missing = f"SELECT n FROM {table} WHERE n = $1"  # noqa: S608
    with pytest.raises(RuntimeError, match="no row"):
        await _alone(db, missing, 5)
    with pytest.raises(RuntimeError, match="0 rows for 2"):
        await asyncio.gather(_alone(db, missing, 5), _alone(db, missing, 6))


async def test_an_interrupted_batch_fails_every_caller_and_its_connection_is_not_lent_again(
    db: Database, table: str
) -> None:
    sleeps = f"SELECT pg_sleep(10), $1::int AS n FROM {table} LIMIT 1"  # noqa: S608
    async with db.connection() as conn:
        await conn.execute(f"INSERT INTO {table} (n) VALUES (0)")  # noqa: S608
    callers = [asyncio.create_task(_alone(db, sleeps, n)) for n in range(3)]
    killed = 0
    async with db.connection() as conn:
        # Until the batch has reached the server (on a busy machine that can take a while).
        for _ in range(100):
            await asyncio.sleep(0.05)
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(10)%'"
            )
            if killed:
                break
    assert killed == 1  # the three statements went on one connection
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, asyncpg.PostgresError | asyncpg.InterfaceError) for r in results)
    # The pool lends live connections only.
    rows = await asyncio.gather(*(_alone(db, _insert(table), n) for n in (7, 8)))
    assert [row["n"] for row in rows] == [7, 8]


async def test_a_caller_that_stops_waiting_leaves_its_statement_to_be_kept(
    db: Database, table: str
) -> None:
    slow = f"""
    WITH added AS (INSERT INTO {table} (n) SELECT $1 FROM pg_sleep(0.3) RETURNING n)
    SELECT (SELECT n FROM added) AS n
    """  # noqa: S608
    caller = asyncio.create_task(_alone(db, slow, 9))
    await asyncio.sleep(0.1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.5)
    assert await _kept(db, table) == [9]


async def test_a_statement_after_the_units_first_runs_inside_the_unit(
    db: Database, table: str
) -> None:
    async with UnitOfWork(db) as uow:
        conn = await uow.transaction()
        row = await uow.alone_row(_insert(table), 1)
        assert row["txid"] == await conn.fetchval("SELECT txid_current()")
        # not committed: nothing is kept
    assert await _kept(db, table) == []


async def test_a_batch_runs_its_statements_in_their_lock_order(db: Database, table: str) -> None:
    ran = f"{table}_ran"
    async with db.connection() as conn:
        await conn.execute(f"CREATE SEQUENCE {ran}")
    try:
        query = f"SELECT nextval('{ran}') AS at, $1::int AS n"
        rows = await asyncio.gather(
            *(_alone(db, query, n, lock_order=-n) for n in range(6)),
        )
        assert [row["n"] for row in rows] == list(range(6))
        assert [row["at"] for row in rows] == [6, 5, 4, 3, 2, 1]
    finally:
        async with db.connection() as conn:
            await conn.execute(f"DROP SEQUENCE {ran}")
