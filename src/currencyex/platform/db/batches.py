"""Self-contained one-row statements of concurrent units of work, sent to the server together.

A send's three statements (the transaction with its key, the hold, the move to PROCESSING)
would each be a round trip and a commit of their own; batched, the same statement of every
unit made in one turn of the event loop goes out in one round trip and one commit. In the send
benchmark the base commit made 541 sends/s with its batches and 337 without them
(bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

Acquire = Callable[[], Awaitable[asyncpg.Connection]]
Release = Callable[[asyncpg.Connection], Awaitable[None]]
# A caller's arguments, its place in the batch's lock order, and the future of its row.
_Waiting = tuple[tuple[Any, ...], Any, "asyncio.Future[asyncpg.Record]"]

# Errors after which nobody knows what the server kept of a batch: every caller hears of it.
INTERRUPTED: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # The server ending the session (shutdown, pg_terminate_backend) or cancelling the batch:
    # the statements must not be run again on that connection. A chaos run (bench/chaos.py)
    # saw them then fail with asyncpg's InternalClientError, a 500 instead of a 503.
    asyncpg.exceptions.OperatorInterventionError,
)


class StatementBatches:
    """Calls of one statement (the same text) made in one turn of the event loop go out at its
    end in one round trip (asyncpg's `fetchmany`), as one implicit transaction. Each statement
    must return exactly one row, its caller's result.

    A batch is kept or lost as a whole. So that one caller's error stays its own, a batch that
    fails on an error of its statements (a constraint, a refusal of a money function, a
    deadlock) is run again statement by statement, each caller getting its own row or error.
    After an interruption (INTERRUPTED) every caller gets the error, as it would have on a
    connection of its own. A caller that stops waiting does not stop its statement.

    A statement that locks rows gives the key of what it locks (`lock_order`): a batch runs its
    statements in that order, so that two batches, or a batch and another statement taking
    such rows in the same order, never wait on each other in a circle.
    """

    def __init__(self, acquire: Acquire, release: Release) -> None:
        self._acquire = acquire
        self._release = release
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
            conn = await self._acquire()
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        try:
            await _run(conn, query, batch)
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            await self._release(conn)

    async def close(self) -> None:
        """Wait for the batches on their way to the server."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _run(conn: asyncpg.Connection, query: str, batch: list[_Waiting]) -> None:
    """Give each caller of `batch` its row or its error: all in one round trip, or, alone or
    after the batch failed (and nothing of it was kept), each on its own."""
    if len(batch) > 1:
        if all(lock_order is not None for _, lock_order, _ in batch):
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
