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


class DriverPool:
    """Up to `size` connections made by `connect`, lent one holder at a time.

    Idle connections are lent most recently used first; one idle for more than `idle_lifetime`
    seconds is closed when its turn comes instead (younger than typical idle cut-offs of
    PgBouncer, load balancers and firewalls). When all are lent, callers wait in turn.
    """

    def __init__(self, connect: Connect, *, size: int, idle_lifetime: float) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._connect = connect
        self._size = size
        self._idle_lifetime = idle_lifetime
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
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                given = waiter.result()  # handed over as the wait was cancelled: pass it on
                if given is None:
                    self._offer_place()
                else:
                    self.release(given)
            else:
                with contextlib.suppress(ValueError):  # passed over already
                    self._waiters.remove(waiter)
            raise

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
