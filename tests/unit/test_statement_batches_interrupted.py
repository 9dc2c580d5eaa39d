"""A batch the server ends with an error of its own (platform/db/batches.py), on an in-memory
connection that answers as PostgreSQL's did in a chaos run (bench/chaos.py): a fast shutdown's
FATAL 57P01 reached the batch as AdminShutdownError while the connection was still open, and the
statements run again on it failed with asyncpg's InternalClientError, a 500. (The same on a real
server, tests/contract/test_statement_batches.py, depends on when the socket closes.)"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from currencyex.platform.db.batches import StatementBatches
from currencyex.platform.resilience.outages import dependency_down


class EndedByTheServer:
    """A connection whose batch the server ends; anything sent after it is a protocol error."""

    def __init__(self) -> None:
        self.rows_asked = 0

    async def fetchmany(self, query: str, args: list[tuple[Any, ...]]) -> list[Any]:
        raise asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        )

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.rows_asked += 1
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )


async def test_a_batch_the_server_ends_fails_every_caller_with_the_servers_error() -> None:
    conn = EndedByTheServer()

    async def acquire() -> Any:
        return conn

    async def release(_conn: Any) -> None:
        return None

    batches = StatementBatches(acquire, release)
    results = await asyncio.gather(
        *(batches.row("SELECT $1::int", (n,)) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, asyncpg.exceptions.AdminShutdownError) for r in results), results
    assert all(dependency_down(r) for r in results)  # a 503/5001, not a 500/9000
    assert conn.rows_asked == 0  # nothing more was sent on that connection
