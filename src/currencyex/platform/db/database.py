"""PostgreSQL through asyncpg: the URL forms, and the one pool every unit of work borrows from."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from currencyex.platform.db.batches import StatementBatches
from currencyex.platform.db.schemas import SCHEMAS, search_path

POOL_SIZE = 20
# How long a caller waits for a pooled connection before its request fails with 5001.
POOL_WAIT_SECONDS = 10.0
# No statement waits forever (a lost connection, a lock never released).
STATEMENT_TIMEOUT_SECONDS = 30.0
_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


def _checked(url: str) -> tuple[str, ...]:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"database URL {parts.scheme}://... is not PostgreSQL: give a postgresql:// URL, or"
            " leave CURRENCYEX_DATABASE_URL empty for the embedded server"
        )
    return tuple(parts)


def driver_url(url: str) -> str:
    """`url` as asyncpg takes it (`postgresql://...`); the `postgresql+asyncpg://` form of
    SQLAlchemy is accepted too."""
    parts = _checked(url)
    return urlunsplit(("postgresql", *parts[1:]))


def migrations_url(url: str) -> str:
    """`url` as Alembic's engine takes it (`postgresql+asyncpg://...`)."""
    parts = _checked(url)
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def _jsonb_out(value: Any) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # jsonb's binary form: version 1, then text


def _jsonb_in(data: bytes) -> Any:
    return json.loads(data[1:])


async def _prepare(conn: asyncpg.Connection) -> None:
    """json and jsonb columns as Python values. In binary form: a table's row type with a jsonb
    column (a new remittance, passed whole to `remit_add_once`) can only travel that way."""
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_out, decoder=_jsonb_in, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda value: json.dumps(value).encode(),
        decoder=json.loads,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes through on its way back to the pool, beyond asyncpg's rollback of
    an open transaction: nothing. asyncpg's default reset (RESET ALL, UNLISTEN, advisory locks)
    is a round trip on every release, and no code here changes session state."""


class Database:
    """Owns the pool of connections to one PostgreSQL database, opened at first use.

    Connections are opened as they are needed, up to `pool_size`, and closed after five
    minutes idle; a caller waits for one at most POOL_WAIT_SECONDS (then TimeoutError, which
    the edge answers 503/5001).
    """

    def __init__(
        self, url: str, *, pool_size: int = POOL_SIZE, schemas: tuple[str, ...] = SCHEMAS
    ) -> None:
        self.url = url  # checked when the pool opens: a container may never use its database
        self._search_path = search_path(schemas)  # what its SQL sees, by plain table names
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False
        # The pool each lent connection came from: it goes back there, even once this
        # database has closed its pool (a late holder at shutdown).
        self._lent: dict[asyncpg.Connection, asyncpg.Pool] = {}
        self._batches = StatementBatches(self.acquire, self.release)
        # Told when a transaction that added outbox events commits (the relay, to look now).
        self.outbox_listeners: list[Callable[[], None]] = []

    def outbox_committed(self) -> None:
        for listener in self.outbox_listeners:
            listener()

    async def acquire(self) -> asyncpg.Connection:
        """A connection of the pool, for `release` once its holder has ended its transaction."""
        pool = self._pool or await self._open()
        conn = await pool.acquire(timeout=POOL_WAIT_SECONDS)
        self._lent[conn] = pool
        return conn

    async def release(self, conn: asyncpg.Connection) -> None:
        """Give back a connection `acquire` lent; one cut off mid-statement is closed."""
        await self._lent.pop(conn).release(conn)

    async def batched_row(
        self, query: str, args: tuple[Any, ...], *, lock_order: Any = None
    ) -> asyncpg.Record:
        """The one row of a self-contained statement, sent to the server with the same
        statement of other callers in this turn of the event loop, in `lock_order`
        (`StatementBatches`)."""
        return await self._batches.row(query, args, lock_order=lock_order)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    async def _open(self) -> asyncpg.Pool:
        if self._closed:
            raise RuntimeError("the database has been closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    driver_url(self.url),
                    min_size=0,
                    max_size=self._pool_size,
                    init=_prepare,
                    reset=_keep_session,
                    command_timeout=STATEMENT_TIMEOUT_SECONDS,
                    server_settings={"search_path": self._search_path},
                )
            return self._pool

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        """Close the pool, waiting up to 5 s for lent connections to come back; for good."""
        self._closed = True
        await self._batches.close()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=5.0)
        except TimeoutError:
            pool.terminate()
