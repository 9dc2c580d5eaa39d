"""The pool of bare asyncpg connections (platform/driver_pool.py), on real PostgreSQL.

What the money path relies on: a connection is lent again once given back, never more than
`size` are open, callers wait in turn, a connection that could be mid-exchange with the server
is closed instead of lent again, its place is offered to the next caller, and closing the pool
closes every connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from currencyex.platform.db.driver_pool import DriverPool, PoolClosed, PoolTimeout
from currencyex.platform.db.engine import Database
from currencyex.platform.db.pg import PgUnitOfWork

pytestmark = pytest.mark.integration


class Counted:
    """`asyncpg.connect` to the test database, counting the connections it opened."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")
        self.opened: list[asyncpg.Connection] = []
        self.fail_next = False

    async def __call__(self) -> asyncpg.Connection:
        if self.fail_next:
            self.fail_next = False
            raise OSError("cannot connect")
        conn = await asyncpg.connect(self.url)
        self.opened.append(conn)
        return conn


@pytest_asyncio.fixture
async def connect(pg_url: str) -> AsyncIterator[Counted]:
    counted = Counted(pg_url)
    yield counted
    for conn in counted.opened:
        conn.terminate()


def pool_of(
    connect: Counted, size: int = 2, idle_lifetime: float = 60.0, wait_timeout: float = 10.0
) -> DriverPool:
    return DriverPool(connect, size=size, idle_lifetime=idle_lifetime, wait_timeout=wait_timeout)


async def test_a_connection_given_back_is_lent_again(connect: Counted) -> None:
    pool = pool_of(connect)
    first = await pool.acquire()
    pool.release(first)
    again = await pool.acquire()
    assert again is first
    assert await again.fetchval("SELECT 1") == 1
    pool.release(again)
    assert len(connect.opened) == 1
    await pool.close()


async def test_no_more_than_size_are_open_and_callers_wait_in_turn(connect: Counted) -> None:
    pool = pool_of(connect, size=2)
    lent = [await pool.acquire(), await pool.acquire()]
    waiting = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)
    pool.release(lent[0])
    assert await asyncio.wait_for(waiting[0], 5) is lent[0]  # the first to wait, first served
    pool.release(lent[1])
    assert await asyncio.wait_for(waiting[1], 5) is lent[1]
    assert not waiting[2].done()
    pool.release(await waiting[0])
    assert await asyncio.wait_for(waiting[2], 5) is lent[0]
    assert len(connect.opened) == 2
    pool.release(lent[0])
    pool.release(lent[1])
    await pool.close()


async def test_a_caller_waits_no_longer_than_the_wait_timeout(connect: Counted) -> None:
    pool = pool_of(connect, size=1, wait_timeout=0.1)
    lent = await pool.acquire()
    waited = asyncio.get_running_loop().time()
    with pytest.raises(PoolTimeout, match=r"within 0\.1 s"):
        await asyncio.wait_for(pool.acquire(), 5)
    assert asyncio.get_running_loop().time() - waited >= 0.1
    # The caller that gave up is not handed the connection given back next.
    after = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    pool.release(lent)
    assert await asyncio.wait_for(after, 5) is lent
    assert len(connect.opened) == 1
    pool.release(lent)
    await pool.close()


@pytest.mark.parametrize("how", ["not reusable", "in a transaction", "closed"])
async def test_a_connection_that_may_be_mid_exchange_is_closed_and_its_place_offered(
    connect: Counted, how: str
) -> None:
    pool = pool_of(connect, size=1)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    if how == "in a transaction":
        await conn.execute("BEGIN")
    elif how == "closed":
        conn.terminate()
    pool.release(conn, reusable=how != "not reusable")
    fresh = await asyncio.wait_for(waiting, 5)
    assert conn.is_closed()
    assert fresh is not conn
    assert await fresh.fetchval("SELECT 1") == 1
    pool.release(fresh)
    await pool.close()


async def test_a_connection_idle_too_long_is_replaced(connect: Counted) -> None:
    pool = pool_of(connect, idle_lifetime=0.05)
    old = await pool.acquire()
    pool.release(old)
    await asyncio.sleep(0.1)
    fresh = await pool.acquire()
    assert fresh is not old
    assert old.is_closed()
    pool.release(fresh)
    await pool.close()


async def test_a_failed_connect_frees_its_place(connect: Counted) -> None:
    pool = pool_of(connect, size=1)
    connect.fail_next = True
    with pytest.raises(OSError, match="cannot connect"):
        await pool.acquire()
    conn = await pool.acquire()
    assert await conn.fetchval("SELECT 1") == 1
    pool.release(conn)
    await pool.close()


async def test_a_wait_cancelled_as_a_connection_is_handed_over_passes_it_on(
    connect: Counted,
) -> None:
    pool = pool_of(connect, size=1)
    conn = await pool.acquire()
    cancelled = asyncio.create_task(pool.acquire())
    after = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    pool.release(conn)  # handed to `cancelled`, which is cancelled before it runs again
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await asyncio.wait_for(after, 5) is conn
    pool.release(conn)
    await pool.close()


async def test_a_wait_cancelled_as_it_fails_ends_cancelled(connect: Counted) -> None:
    pool = pool_of(connect, size=1)
    lent = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    await pool.close()  # fails the wait (PoolClosed, as a PoolTimeout would)...
    waiting.cancel()  # ...and its caller is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    pool.release(lent)


async def test_closing_closes_idle_and_lent_connections(connect: Counted) -> None:
    pool = pool_of(connect)
    idle, lent = await pool.acquire(), await pool.acquire()
    pool.release(idle)
    await pool.close()
    assert idle.is_closed()
    assert not lent.is_closed()
    pool.release(lent)
    assert lent.is_closed()
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_a_unit_of_work_cut_off_mid_statement_does_not_lend_its_connection_again(
    pg_url: str,
) -> None:
    db = Database(pg_url)
    try:
        used: list[Any] = []

        async def sleeps() -> None:
            async with PgUnitOfWork(db) as uow:
                conn = await uow.transaction()
                used.append(conn)
                await conn.execute("SELECT pg_sleep(10)")

        task = asyncio.create_task(sleeps())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with PgUnitOfWork(db) as uow:
            assert await uow.reading() is not used[0]
            assert await uow.autocommit("SELECT 1") == [(1,)]
        assert used[0].is_closed()
        async with PgUnitOfWork(db) as first, PgUnitOfWork(db) as second:
            assert await first.reading() is not await second.reading()
    finally:
        await db.close()
