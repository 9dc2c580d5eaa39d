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

from currencyex.kernel.turns import TurnBatches, Waiting

Acquire = Callable[[], Awaitable[asyncpg.Connection]]
Release = Callable[[asyncpg.Connection], Awaitable[None]]
# A caller's arguments and its place in the batch's lock order.
_Call = tuple[tuple[Any, ...], Any]

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
    After an interruption (INTERRUPTED) every caller still waiting gets the error, as it would
    have on a connection of its own. A caller that stops waiting does not stop its statement.

    A statement that locks rows gives the key of what it locks (`lock_order`): a batch runs its
    statements in that order, so that two batches, or a batch and another statement taking
    such rows in the same order, never wait on each other in a circle.
    """

    def __init__(self, acquire: Acquire, release: Release) -> None:
        self._acquire = acquire
        self._release = release
        self._turns: TurnBatches[str, _Call, asyncpg.Record] = TurnBatches(self._send)

    async def row(
        self, query: str, args: tuple[Any, ...], *, lock_order: Any = None
    ) -> asyncpg.Record:
        return await self._turns.call(query, (args, lock_order))

    async def _send(self, query: str, batch: list[Waiting[_Call, asyncpg.Record]]) -> None:
        conn = await self._acquire()
        try:
            await _run(conn, query, batch)
        finally:
            await self._release(conn)

    async def close(self) -> None:
        """Wait for the batches on their way to the server."""
        await self._turns.close()


async def _run(
    conn: asyncpg.Connection, query: str, batch: list[Waiting[_Call, asyncpg.Record]]
) -> None:
    """Give each caller of `batch` its row or its error: all in one round trip, or, alone or
    after the batch failed (and nothing of it was kept), each on its own."""
    if len(batch) > 1:
        if all(lock_order is not None for (_, lock_order), _ in batch):
            batch.sort(key=lambda waiting: waiting[0][1])
        try:
            rows = await conn.fetchmany(query, [args for (args, _), _ in batch])
        except INTERRUPTED:
            raise
        except Exception:  # noqa: S110 (each is run on its own below, to get its own error)
            pass
        else:
            if len(rows) != len(batch):
                raise RuntimeError(f"a batched statement gave {len(rows)} rows for {len(batch)}")
            for (_, waiting), row in zip(batch, rows, strict=True):
                if not waiting.done():
                    waiting.set_result(row)
            return
    for (args, _), waiting in batch:
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
