"""A pool of bare asyncpg connections for the money path (platform/pg.py).

It does what that path needs and no more. A connection is taken from the idle ones without a
round trip, a task or a timer, and given back as it is: its holder has ended its transaction.
asyncpg's own pool does more on every use (a proxy object, a task that shields the release, a
timer per idle connection, a reset), which cost about as much CPU as a short statement itself
(a throwaway loop of `SELECT $1` from 32 tasks: 28 us per statement through asyncpg's pool,
13 us on a held connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# Errors after which a connection may be mid-exchange with the server (a statement cut off by
# a cancellation or a timeout, a broken socket): it is closed, not lent again.
INTERRUPTED: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
)


class PoolClosed(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the connection pool is closed")


class PoolTimeout(TimeoutError):
    """No connection came free in time: the database is overloaded or stuck (a 503/5001)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no database connection came free within {seconds:g} s")


class DriverPool:
    """Up to `size` connections made by `connect`, lent one holder at a time.

    Idle connections are lent most recently used first; one idle for more than `idle_lifetime`
    seconds is closed when its turn comes instead (younger than typical idle cut-offs of
    PgBouncer, load balancers and firewalls). When all are lent, callers wait in turn, each
    for up to `wait_timeout` seconds (then PoolTimeout).
    """

    def __init__(
        self, connect: Connect, *, size: int, idle_lifetime: float, wait_timeout: float
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._connect = connect
        self._size = size
        self._idle_lifetime = idle_lifetime
        self._wait_timeout = wait_timeout
        self._idle: deque[tuple[asyncpg.Connection, float]] = deque()  # (connection, idle since)
        # A waiter gets a connection, or None: a place came free, so it may open one.
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._opened = 0  # open connections, idle or lent, and ones being opened
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise PoolClosed()
            now = time.monotonic()
            while self._idle:
                conn, since = self._idle.pop()
                if not conn.is_closed() and now - since <= self._idle_lifetime:
                    return conn
                self._drop(conn)
            if self._opened < self._size:
                self._opened += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._opened -= 1
                    self._offer_place()
                    raise
            conn = await self._wait()
            if conn is not None:
                return conn

    async def _wait(self) -> asyncpg.Connection | None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self._wait_timeout, self._give_up, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                given = waiter.result()  # handed over as the wait was cancelled: pass it on
                if given is None:
                    self._offer_place()
                else:
                    self.release(given)
            else:
                with contextlib.suppress(ValueError):  # passed over already
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def _give_up(self, waiter: asyncio.Future[asyncpg.Connection | None]) -> None:
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_exception(PoolTimeout(self._wait_timeout))

    def release(self, conn: asyncpg.Connection, *, reusable: bool = True) -> None:
        """Take `conn` back: lent to the next waiter, or kept idle. Not `reusable` (its holder
        was interrupted mid-statement), closed in a transaction or closed already, it is
        closed and its place offered."""
        if not reusable or self._closed or conn.is_closed() or conn.is_in_transaction():
            self._drop(conn)
            self._offer_place()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        """Close the idle connections now and each lent one when it comes back."""
        self._closed = True
        idle = [conn for conn, _ in self._idle]
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed())
        self._waiters.clear()
        results = await asyncio.gather(*(conn.close() for conn in idle), return_exceptions=True)
        for conn, result in zip(idle, results, strict=True):
            self._opened -= 1
            if isinstance(result, BaseException):
                conn.terminate()

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Close a connection that is not lent again (a session still open on the server
        rolls back)."""
        self._opened -= 1
        if not conn.is_closed():
            conn.terminate()

    def _offer_place(self) -> None:
        """A place came free: the first waiter may open a connection in it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


Lend = Callable[[], Awaitable[asyncpg.Connection]]
GiveBack = Callable[..., None]  # (connection, *, reusable) as DriverPool.release
# A caller's arguments, its place in the batch's lock order, and the future of its row.
_Waiting = tuple[tuple[Any, ...], Any, "asyncio.Future[asyncpg.Record]"]


class StatementBatches:
    """Self-contained statements of concurrent callers sent to the server together.

    Calls of one statement (the same text) made in one turn of the event loop go out at its
    end in one round trip (asyncpg's `fetchmany`), as one implicit transaction: one commit for
    all of them. Each statement must return exactly one row, its caller's result. (In a
    throwaway loop of 32 tasks sending one-row UPDATEs, a statement cost this process 12.6 to
    20.3 us batched and 31.2 to 44.9 us one by one. In the send benchmark PostgreSQL got a
    third of the round trips and commits; see bench/README.md.)

    A batch is kept or lost as a whole. So that one caller's error stays its own, a batch that
    fails on an error of its statements (a constraint, a deadlock) is run again statement by
    statement, each caller getting its own row or error. After an interruption (INTERRUPTED)
    nobody knows what the server kept, and every caller gets the error, as it would have on a
    connection of its own. A caller that stops waiting does not stop its statement.

    A statement that locks rows gives the key of what it locks (`lock_order`): a batch runs its
    statements in that order, so that two batches, or a batch and another statement taking
    such rows in the same order, never wait on each other in a circle.
    """

    def __init__(self, lend: Lend, give_back: GiveBack) -> None:
        self._lend = lend
        self._give_back = give_back
        self._pending: dict[str, list[_Waiting]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def row(
        self, query: str, args: tuple[Any, ...], *, lock_order: Any = None
    ) -> asyncpg.Record:
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[asyncpg.Record] = loop.create_future()
        batch = self._pending.get(query)
        if batch is None:
            batch = self._pending[query] = []
            loop.call_soon(self._send_pending, query)
        batch.append((args, lock_order, waiting))
        return await waiting

    def _send_pending(self, query: str) -> None:
        batch = self._pending.pop(query)
        task = asyncio.ensure_future(self._send(query, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, query: str, batch: list[_Waiting]) -> None:
        try:
            conn = await self._lend()
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        reusable = True
        try:
            await _run(conn, query, batch)
        except BaseException as exc:
            reusable = not isinstance(exc, INTERRUPTED)
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._give_back(conn, reusable=reusable)

    async def close(self) -> None:
        """Wait for the batches on their way to the server."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _run(conn: asyncpg.Connection, query: str, batch: list[_Waiting]) -> None:
    """Give each caller of `batch` its row or its error: all in one round trip, or, alone or
    after the batch failed (and nothing of it was kept), each on its own."""
    if len(batch) > 1:
        if batch[0][1] is not None:
            batch.sort(key=lambda waiting: waiting[1])
        try:
            rows = await conn.fetchmany(query, [args for args, _, _ in batch])
        except INTERRUPTED:
            raise
        except Exception:  # noqa: S110 (each is run on its own below, to get its own error)
            pass
        else:
            if len(rows) != len(batch):
                raise RuntimeError(f"a batched statement gave {len(rows)} rows for {len(batch)}")
            for (_, _, waiting), row in zip(batch, rows, strict=True):
                if not waiting.done():
                    waiting.set_result(row)
            return
    for args, _, waiting in batch:
        try:
            row = await one_row(conn, query, args)
        except INTERRUPTED:
            raise
        except Exception as exc:
            if not waiting.done():
                waiting.set_exception(exc)
        else:
            if not waiting.done():
                waiting.set_result(row)


async def one_row(conn: asyncpg.Connection, query: str, args: tuple[Any, ...]) -> asyncpg.Record:
    """The row of a statement that must return exactly one."""
    row: asyncpg.Record | None = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError("a one-row statement returned no row")
    return row


def _fail(batch: list[_Waiting], error: BaseException) -> None:
    """Tell the callers still waiting that their statement failed with `error`."""
    for _, _, waiting in batch:
        if waiting.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            waiting.cancel()
        else:
            waiting.set_exception(error)
